#include "app/run.h"

#include <sched.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include "common/log.h"
#include "common/torch_compat.h"
#include "app/fault_injection.h"
#include "app/watchdog.h"
#include "checkpoint/checkpoint.h"
#include "comm/cuda_devices.h"
#include "comm/device_binding.h"
#include "comm/launch_check.h"
#include "comm/nccl_communicator.h"
#include "config/config_loader.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/sharding.h"
#include "io/files.h"
#include "io/sha256.h"
#include "io/stats_file.h"
#include "model/adaptable_model.h"
#include "report/progress.h"
#include "report/report.h"

namespace bnadapt::app {
namespace {

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs `body` on this rank, then agrees with every rank on the outcome. Returns 0 when all
// succeeded, else the worst exit code; the failing rank (and rank 0) log the reason.
int agreedPhase(comm::Communicator& comm, Watchdog* watchdog, const char* phase,
                const std::function<void()>& body) {
  if (watchdog) watchdog->enter(phase);
  int code = 0;
  std::string message;
  try {
    body();
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.what();
  } catch (const std::exception& e) {
    code = static_cast<int>(ExitCode::kInternal);
    message = std::string("unexpected error: ") + e.what();
  } catch (...) {
    code = static_cast<int>(ExitCode::kInternal);
    message = "unexpected error of unknown type";
  }
  if (watchdog) watchdog->enter(std::string(phase) + ", waiting for the other ranks");
  const comm::AgreedStatus status = comm::agree(comm, code, message);
  if (status.code == 0) return 0;
  // One error line per job, from rank 0; other ranks' different failures as warnings.
  if (comm.rank() == 0) {
    if (status.failed_rank == 0) {
      log::error(status.message);
    } else {
      log::error("rank ", status.failed_rank, " failed during ", phase, ": ", status.message);
    }
  }
  if (code != 0 && comm.rank() != status.failed_rank && message != status.message) {
    log::warn("also failed: ", message);
  }
  return status.code;
}

std::string joinLines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// Compares this rank's lines with rank 0's (`theirs`, joined); throws naming the first
// differing item. Not a collective.
void checkSameAsRankZero(const comm::Communicator& comm, const std::vector<std::string>& lines,
                         const std::string& theirs) {
  if (theirs == joinLines(lines)) return;
  std::vector<std::string> zero;
  size_t start = 0;
  for (size_t nl; (nl = theirs.find('\n', start)) != std::string::npos; start = nl + 1) {
    zero.push_back(theirs.substr(start, nl - start));
  }
  size_t i = 0;
  while (i < lines.size() && i < zero.size() && lines[i] == zero[i]) ++i;
  fail(ExitCode::kCommunication, "rank ", comm.rank(), " differs from rank 0 before any data ",
       "moved: rank 0 has ", i < zero.size() ? "'" + zero[i] + "'" : "nothing more", ", rank ",
       comm.rank(), " has ", i < lines.size() ? "'" + lines[i] + "'" : "nothing more",
       " (same model, data and config on every rank?)");
}

std::string describeForCheck(const char* what, const data::Dataset& data) {
  return std::string(what) + " samples=" + std::to_string(data.size()) +
         " shape=" + data::shapeString(data.sampleShape()) +
         " dtype=" + c10::toString(data.dtype()) + " labels=" + (data.hasLabels() ? "yes" : "no") +
         " hash=" + std::to_string(data.contentHash());
}

std::string floats(const std::vector<float>& v) {
  std::string s;
  for (float x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s.empty() ? "default" : s;
}

// What every rank must agree on before data moves; one item per line.
std::vector<std::string> fingerprint(const config::Settings& st, const data::Dataset& data,
                                     const data::BatchPlan& plan, const data::Dataset* eval,
                                     const data::BatchPlan& eval_plan,
                                     const model::AdaptableModel& model) {
  std::vector<std::string> lines = {
      std::string("weighting=") + config::weightingName(st.weighting) +
          " seed=" + std::to_string(st.seed) + " shuffle=" + (st.shuffle ? "yes" : "no"),
      "samples requested=" + std::to_string(plan.requested) + " used=" +
          std::to_string(plan.used) + " batch_size=" + std::to_string(plan.batch_size),
      "preprocessing mean=" + floats(st.mean) + " std=" + floats(st.std) +
          " resize=" + std::to_string(st.resize_shorter),
      "skip_corrupt=" + std::string(st.skip_corrupt ? "yes" : "no") +
          " max_skip_fraction=" + std::to_string(st.max_skip_fraction),
      describeForCheck("data", data)};
  if (eval) {
    lines.push_back(describeForCheck("eval data", *eval) +
                    " evaluated=" + std::to_string(eval_plan.used));
  }
  for (auto& l : model.describeLayers()) lines.push_back(std::move(l));
  return lines;
}

data::DataOptions dataOptions(const config::Settings& st, const std::string& format,
                              int64_t synthetic_size) {
  data::DataOptions o;
  o.format = data::parseDataFormat(format).value_or(data::DataFormat::kAuto);
  o.sample_shape = st.sample_shape;
  o.synthetic_size = synthetic_size;
  o.seed = st.seed;
  o.mean = st.mean;
  o.std = st.std;
  o.resize_shorter = st.resize_shorter;
  return o;
}

double peakRssMiB() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

// Top-1 accuracy of the model as it is now (eval mode) over `plan`'s batches, spread over
// the ranks like the calibration batches. `samples` and `correct` are totals over all ranks.
int evaluate(comm::Communicator& comm, Watchdog& watchdog, model::AdaptableModel& model,
             const data::Dataset& data, const data::BatchPlan& plan,
             const data::LoaderOptions& loading, const char* when, int64_t& samples,
             int64_t& correct) {
  const std::vector<int64_t> mine = plan.batchesOfRank(comm.rank(), comm.size());
  std::vector<double> counts(2, 0.0);  // correct, evaluated: exact in a double below 2^53
  const std::string phase = std::string("evaluating the model ") + when + " adaptation";
  if (int code = agreedPhase(comm, &watchdog, phase.c_str(), [&] {
        data::Loader loader(data, data::batchSamples(plan, data::sampleOrder(plan.used, false, 0),
                                                     mine),
                            mine, loading);
        data::Batch batch;
        for (int64_t b : mine) {
          try {
            loader.next(batch);
            for (const auto& why : batch.skipped) log::warn("skipped (evaluation): ", why);
            if (batch.inputs.size(0) == 0) continue;
            const at::Tensor logits =
                model.predict(batch.inputs.to(model.device(), model.inputDtype()));
            const int64_t top = batch.labels.max().item<int64_t>();
            BNA_CHECK(top < logits.size(1), ExitCode::kData, "label ", top,
                      " but the model outputs ", logits.size(1), " classes");
            const at::Tensor predicted = logits.argmax(1).cpu();
            counts[0] += static_cast<double>(predicted.eq(batch.labels).sum().item<int64_t>());
            counts[1] += static_cast<double>(batch.inputs.size(0));
          } catch (const Error& e) {
            fail(e.code(), "rank ", comm.rank(), ", evaluation batch ", b, ": ", e.what());
          }
          watchdog.kick();
        }
      })) {
    return code;
  }
  watchdog.enter(phase + ": the all-reduce of the counts");
  comm.allreduceSum(counts);
  correct = static_cast<int64_t>(counts[0]);
  samples = static_cast<int64_t>(counts[1]);
  log::info0("top-1 ", when, " adaptation: ", 100.0 * counts[0] / std::max(1.0, counts[1]),
             "% of ", samples, " samples");
  return 0;
}

// Outputs must be writable and differ from each other and from the inputs (also via links).
void checkOutputPaths(const config::Settings& st) {
  const std::vector<std::pair<const char*, std::string>> outputs = {
      {"--output", st.output_path},
      {"--stats-output", st.stats_output_path},
      {"--report", st.report_path},
      {"--checkpoint-output", st.checkpoint_output_path},
      {"--checkpoint-output's .sha256",
       st.checkpoint_output_path.empty() ? "" : st.checkpoint_output_path + ".sha256"}};
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& [flag, path] = outputs[i];
    if (path.empty()) continue;
    for (const auto& [what, input] : {std::pair<const char*, std::string>{"--model", st.model_path},
                                      {"--data", st.data_path},
                                      {"--config", st.config_path},
                                      {"--checkpoint", st.checkpoint_path}}) {
      if (input.empty()) continue;
      // --in-place: the checkpoint output may replace its input (still via temp + rename).
      if (st.in_place && outputs[i].first == std::string("--checkpoint-output") &&
          what == std::string("--checkpoint")) {
        continue;
      }
      BNA_CHECK(path != input && !io::sameFile(path, input), ExitCode::kOutput, flag, " '", path,
                "' is the same file as the input ", what, " '", input,
                "'; inputs are never overwritten: choose another output path",
                what == std::string("--checkpoint") ? " (or pass --in-place)" : "");
    }
    for (size_t j = i + 1; j < outputs.size(); ++j) {
      BNA_CHECK(outputs[j].second.empty() || (path != outputs[j].second &&
                                              !io::sameFile(path, outputs[j].second)),
                ExitCode::kUsage, flag, " and ", outputs[j].first, " name the same file '", path,
                "'");
    }
    io::checkWritable(path);
    // In place, the checkpoint and its sidecar replace the input's by design.
    const bool replaces_input =
        st.in_place && std::string(flag).rfind("--checkpoint-output", 0) == 0;
    const bool exists = std::filesystem::exists(std::filesystem::symlink_status(path));
    BNA_CHECK(st.overwrite || replaces_input || !exists, ExitCode::kOutput, flag,
              " '", path, "' exists; pass --overwrite to replace it (the new file is written "
              "beside it and renamed over it only when every rank succeeded)");
  }
}

// The BN buffers a checkpoint of this model must hold: every path of every adapted layer.
std::vector<checkpoint::ExpectedBuffer> expectedBuffers(const model::AdaptableModel& model) {
  std::vector<checkpoint::ExpectedBuffer> out;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    for (const auto& [name, tensor] : model.buffers(i)) {
      const bool counter = name.size() >= 19 && name.compare(name.size() - 19, 19,
                                                             "num_batches_tracked") == 0;
      out.push_back({name, tensor.sizes().vec(), !counter});
    }
  }
  return out;
}

void logSettings(const config::Settings& st, const comm::Communicator& comm, int threads,
                 int data_threads) {
  log::info0("bnadapt_dist ", BNADAPT_VERSION, " (LibTorch ", compat::kTorchVersion, "; ",
             comm::cudaLibraryVersions(), "): ", comm.size(), " rank(s), ", threads,
             " intra-op and ", data_threads,
             " data thread(s) per rank");
  if (!st.config_path.empty()) log::info0("config: ", st.config_path);
  log::info0("model: ", st.model_path);
  log::info0("data: ", st.data_path);
  log::info0("samples: ", st.samples, ", batch size ", st.batch_size, ", estimator '",
             config::weightingName(st.weighting), "', seed ", st.seed);
  log::info0("outputs: model '", st.output_path, "', stats '", st.stats_output_path,
             "', report '", st.report_path, "'");
  if (!st.checkpoint_path.empty()) {
    log::info0("checkpoint: '", st.checkpoint_path, "' -> '", st.checkpoint_output_path, "'",
               st.in_place ? " (in place)" : "");
  }
  for (const auto& algo : st.compression_algorithms) {
    log::info0("compression.algorithm '", algo,
               "': the model is taken as already compressed; only BN statistics change");
  }
  if (!st.ignored_keys.empty()) {
    std::string keys;
    for (const auto& k : st.ignored_keys) keys += (keys.empty() ? "" : ", ") + k;
    log::info0("config keys not used by bnadapt_dist: ", keys);
  }
}

// Where this rank computes and how the ranks all-reduce.
struct Placement {
  comm::DeviceChoice device;
  comm::Backend backend = comm::Backend::kMpi;
  c10::Device torch_device = c10::Device(c10::kCPU);
  std::string uuid;  // the GPU's, for the log
};

// Chooses the device (local rank -> GPU) and backend on every rank, checks that all ranks
// chose the same kind and that no two share a GPU unless allowed. Collective; returns 0 or
// the exit code every rank returns.
int choosePlacement(const config::Settings& st, comm::Communicator& comm, Watchdog& watchdog,
                    Placement& out) {
  if (int code = agreedPhase(comm, &watchdog, "choosing the device", [&] {
        std::string reason;
        int count = -1;
        const bool torch_cuda = torch::cuda::is_available();
        if (st.device != "cpu") {
          if (torch_cuda) {
            count = static_cast<int>(torch::cuda::device_count());
          } else {
            reason = "this LibTorch has no CUDA (Debian's is CPU-only; build against a CUDA "
                     "LibTorch, see README 'GPU clusters')";
          }
        }
        out.device = comm::chooseDevice(st.device, comm.localRank(), comm.localSize(), count,
                                        reason, comm::processEnv("CUDA_VISIBLE_DEVICES"),
                                        st.allow_gpu_sharing, /*build_has_cuda=*/true);
        out.backend = comm::chooseBackend(st.backend, out.device.kind, comm::kBuildHasNccl,
                                          out.device.shared);
        if (out.device.kind == comm::DeviceChoice::kCuda) {
          out.torch_device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(out.device.device));
          if (comm::kBuildHasCuda) out.uuid = comm::cudaDeviceUuid(out.device.device);
          // TF32 would put convolutions 1e-3 away from the CPU's results.
          compat::disableTF32OnCuda();
        }
      })) {
    return code;
  }
  // Every rank the same kind and backend (auto can differ between hosts), no GPU twice.
  std::vector<int64_t> kinds = {out.device.kind, -out.device.kind,
                                static_cast<int64_t>(out.backend), -static_cast<int64_t>(out.backend)};
  comm.allreduceMax(kinds);
  if (kinds[0] != -kinds[1] || kinds[2] != -kinds[3]) {
    if (comm.rank() == 0) {
      log::error("ranks chose different devices or backends (--device ", st.device, ", --backend ",
                 st.backend, "): some hosts have a usable GPU and some do not; pass --device ",
                 "and --backend explicitly");
    }
    return static_cast<int>(ExitCode::kUsage);
  }
  const std::string shared = comm::checkDistinctDevices(
      comm, out.device.kind == comm::DeviceChoice::kCuda ? out.uuid + "@" + comm.hostname() : "",
      st.allow_gpu_sharing);
  if (!shared.empty()) {
    if (comm.rank() == 0) log::error(shared);
    return static_cast<int>(ExitCode::kUsage);
  }
  log::info("local rank ", comm.localRank(), "/", comm.localSize(), ": ",
            comm::deviceName(out.device), out.uuid.empty() ? "" : " " + out.uuid, " (",
            out.device.reason, "), backend ", comm::backendName(out.backend));
  return 0;
}

}  // namespace

int defaultThreads(int local_ranks) {
  cpu_set_t set;
  int cores = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
  if (cores <= 0) cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local_ranks));
}

ExitCode run(const config::Settings& st, comm::Communicator& comm) {
  const auto t_start = std::chrono::steady_clock::now();
  const int rank = comm.rank();
  const int world = comm.size();
  const int threads = st.threads > 0 ? st.threads : defaultThreads(comm.localSize());
  const int data_threads = st.data_threads > 0 ? st.data_threads : std::max(1, threads / 2);
  at::set_num_threads(threads);
  logSettings(st, comm, threads, data_threads);
  Watchdog watchdog(static_cast<double>(st.timeout_seconds), [&](const std::string& phase,
                                                                   double idle) {
    log::error("no progress for ", static_cast<int64_t>(idle), " s during ", phase,
               " (--timeout ", st.timeout_seconds, "); ending the job");
    std::_Exit(static_cast<int>(ExitCode::kTimeout));
  });
  Placement place;
  if (int code = choosePlacement(st, comm, watchdog, place)) return static_cast<ExitCode>(code);
  const bool on_gpu = place.device.kind == comm::DeviceChoice::kCuda;
  data::LoaderOptions loading;
  loading.threads = data_threads;
  loading.prefetch_batches = st.prefetch_batches;
  loading.skip_corrupt = st.skip_corrupt;
  loading.pin_memory = on_gpu;  // page-locked batches: non-blocking copies to the GPU
  // Activations in bf16 where the device supports it; observed sums stay float64.
  const bool bf16 = st.autocast == "bf16";
  if (bf16) {
    compat::enableAutocast(on_gpu ? c10::DeviceType::CUDA : c10::DeviceType::CPU, at::kBFloat16);
  }
  // The batch as the model takes it: dtype, device (non-blocking from pinned memory), layout.
  auto toModel = [&](const at::Tensor& x, at::ScalarType dtype) {
    at::Tensor y = x.to(place.torch_device, dtype, /*non_blocking=*/on_gpu);
    if (st.channels_last && y.dim() == 4) y = y.contiguous(at::MemoryFormat::ChannelsLast);
    return y;
  };

  // 1. Setup: model (two copies), data, the global batch plan, the evaluation data.
  std::unique_ptr<model::AdaptableModel> model;
  std::unique_ptr<data::Dataset> data;
  std::unique_ptr<data::Dataset> eval_data;
  std::unique_ptr<checkpoint::Checkpoint> ckpt;  // rank 0 only
  data::BatchPlan plan;
  data::BatchPlan eval_plan;
  std::vector<int64_t> order;
  if (int code = agreedPhase(comm, &watchdog, "setup", [&] {
        maybeInjectFault("setup", rank);
        if (rank == 0) checkOutputPaths(st);
        model = std::make_unique<model::AdaptableModel>(st.model_path);
        model->moveTo(place.torch_device, st.channels_last);
        if (rank == 0 && !st.checkpoint_path.empty()) {  // checked now, patched at the end
          ckpt = checkpoint::openCheckpoint(st.checkpoint_path);
          ckpt->plan(expectedBuffers(*model), st.checkpoint_key);
        }
        data = data::openDataset(st.data_path,
                                 dataOptions(st, st.data_format,
                                             data::roundBudget(st.samples, st.batch_size)));
        plan = data::planBatches(st.samples, st.batch_size, data->size());
        order = data::sampleOrder(data->size(), st.shuffle, st.seed);
        if (st.eval) {
          eval_data = data::openDataset(st.eval_data_path, dataOptions(st, "auto", 0));
          BNA_CHECK(eval_data->hasLabels(), ExitCode::kData, "--eval-data '",
                    st.eval_data_path, "' has no labels (", eval_data->describe(),
                    "); use class folders, IDX images with their labels file, or a tensor "
                    "file with \"labels\"");
          const int64_t n = st.eval_samples > 0 ? std::min(st.eval_samples, eval_data->size())
                                                : eval_data->size();
          eval_plan = data::planAll(n, st.batch_size);
        }
      })) {
    return static_cast<ExitCode>(code);
  }
  log::info0("data: ", data->describe());
  if (eval_data) log::info0("eval data: ", eval_data->describe());
  if (ckpt) log::info0("checkpoint: ", ckpt->describe());
  log::info0(model->layers().size(), " BN layer(s) to adapt, ", model->skipped().size(),
             " left alone; ", plan.num_batches, " global batch(es) of ", plan.batch_size,
             " from ", plan.used, " sample(s)");
  for (const auto& m : model->inlinedBatchNormModules()) {
    log::warn0("module '", m, "' calls aten::batch_norm directly (an inlined or frozen graph); ",
               "those calls are not BatchNorm modules and are not adapted");
  }
  if (plan.rounded != plan.requested) {
    log::info0("samples: ", plan.requested, " rounded to ", plan.rounded,
               ", the nearest multiple of the batch size ", plan.batch_size);
  }
  if (plan.truncated) {
    log::warn0("samples: ", plan.rounded, " requested but the data holds ", data->size(),
               "; using all ", plan.used, " (the last batch has ",
               plan.used - (plan.num_batches - 1) * plan.batch_size, " sample(s))");
  }

  // 2. Agree that every rank has the same model, data and settings. The broadcast stays
  //    outside the phase body: a collective must never be skipped by an exception.
  const std::vector<std::string> lines =
      fingerprint(st, *data, plan, eval_data.get(), eval_plan, *model);
  std::string rank0_lines = joinLines(lines);
  comm.broadcast(rank0_lines, 0);
  if (int code = agreedPhase(comm, &watchdog, "the consistency check",
                             [&] { checkSameAsRankZero(comm, lines, rank0_lines); })) {
    return static_cast<ExitCode>(code);
  }
  // The all-reduce of the statistics: NCCL on the GPUs, or MPI. Agreement stays on MPI.
  std::unique_ptr<comm::Communicator> nccl;
#if BNADAPT_WITH_NCCL
  if (place.backend == comm::Backend::kNccl) {
    if (int code = agreedPhase(comm, &watchdog, "starting NCCL", [&] {
          nccl = std::make_unique<comm::NcclCommunicator>(
              comm, place.device.device, static_cast<double>(st.timeout_seconds));
        })) {
      return static_cast<ExitCode>(code);
    }
  }
#endif
  comm::Communicator& reducer = nccl ? *nccl : comm;
  const double setup_seconds = secondsSince(t_start);

  report::RunSummary run;
  run.evaluated = st.eval;
  if (st.eval) {
    run.eval.data_description = eval_data->describe();
    if (int code = evaluate(comm, watchdog, *model, *eval_data, eval_plan, loading, "before",
                            run.eval.samples, run.eval.correct_before)) {
      return static_cast<ExitCode>(code);
    }
  }

  // 3. Forward this rank's batches: global batch b runs on rank b mod world.
  stats::StatsAccumulator acc = model->makeAccumulator();
  const std::vector<int64_t> mine = plan.batchesOfRank(rank, world);
  report::RankInfo me;  // me.batches: batches forwarded (a batch can lose every sample)
  const auto t_forward = std::chrono::steady_clock::now();
  report::Progress progress(static_cast<int64_t>(mine.size()), plan.num_batches, rank == 0);
  int code = agreedPhase(comm, &watchdog, "the forward passes", [&] {
    maybeInjectFault("forward", rank);
    data::Loader loader(*data, data::batchSamples(plan, order, mine), mine, loading);
    data::Batch batch;
    for (int64_t b : mine) {
      try {
        loader.next(batch);
        for (const auto& why : batch.skipped) log::warn("skipped: ", why);
        me.skipped += static_cast<int64_t>(batch.skipped.size());
        me.samples += batch.inputs.size(0);
        if (batch.inputs.size(0) > 0) {
          model->calibrate(toModel(batch.inputs, model->inputDtype()), acc);
          ++me.batches;
        }
      } catch (const Error& e) {
        fail(e.code(), "rank ", rank, ", global batch ", b, ": ", e.what());
      }
      progress.step(batch.requested);
      watchdog.kick();
    }
    me.loader_wait_seconds = loader.waitSeconds();
  });
  progress.finish();
  if (code) return static_cast<ExitCode>(code);
  const double forward_seconds = secondsSince(t_forward);
  me.forward_seconds = forward_seconds;
  me.peak_rss_mib = peakRssMiB();
  if (on_gpu) {  // the per-batch non-finite check would synchronise the GPU: check once here
    code = agreedPhase(comm, &watchdog, "checking the statistics", [&] {
      const int64_t bad = acc.firstNonFiniteLayer();
      BNA_CHECK(bad < 0, ExitCode::kData, "rank ", rank, ": layer '",
                model->layers()[static_cast<size_t>(std::max<int64_t>(bad, 0))].name,
                "': non-finite activations in this rank's batches; nothing written");
    });
    if (code) return static_cast<ExitCode>(code);
  }

  // 4. One all-reduce: the statistics plus, per rank, what it did (report::RankInfo).
  const auto t_reduce = std::chrono::steady_clock::now();
  std::vector<double>& buffer = acc.buffer();
  const size_t stats_size = buffer.size();
  constexpr size_t kSlot = 6;
  buffer.resize(stats_size + kSlot * static_cast<size_t>(world), 0.0);
  double* slot = buffer.data() + stats_size + kSlot * static_cast<size_t>(rank);
  slot[0] = static_cast<double>(me.batches);
  slot[1] = static_cast<double>(me.samples);
  slot[2] = static_cast<double>(me.skipped);
  slot[3] = me.forward_seconds;
  slot[4] = me.loader_wait_seconds;
  slot[5] = me.peak_rss_mib;
  watchdog.enter("the all-reduce of the statistics");
  maybeInjectFault("allreduce", rank);
  reducer.allreduceSum(buffer);
  for (int r = 0; r < world; ++r) {
    const double* s = buffer.data() + stats_size + kSlot * static_cast<size_t>(r);
    run.ranks.push_back({static_cast<int64_t>(s[0]), static_cast<int64_t>(s[1]),
                         static_cast<int64_t>(s[2]), s[3], s[4], s[5]});
    run.skipped_samples += static_cast<int64_t>(s[2]);
    run.forwarded_batches += static_cast<int64_t>(s[0]);
  }
  buffer.resize(stats_size);
  const double allreduce_seconds = secondsSince(t_reduce);

  // 5. Every rank finalises the same statistics (rank 0 writes them; all evaluate them).
  run.settings = &st;
  run.data_description = data->describe();
  run.world_size = world;
  run.threads_per_rank = threads;
  run.data_threads_per_rank = data_threads;
  run.device = comm::deviceName(place.device);
  run.backend = comm::backendName(place.backend);
  run.precision = std::string(c10::toString(model->inputDtype())) +
                  (bf16 ? " with bf16 autocast" : "") +
                  (st.channels_last ? ", channels-last" : "") + "; sums in float64";
  run.plan = plan;
  run.layers = &model->layers();
  run.skipped = &model->skipped();
  run.setup_seconds = setup_seconds;
  run.forward_seconds = forward_seconds;
  run.allreduce_seconds = allreduce_seconds;
  io::NamedTensors buffers;
  code = agreedPhase(comm, &watchdog, "finalising the statistics", [&] {
    const double fraction =
        static_cast<double>(run.skipped_samples) / static_cast<double>(plan.used);
    BNA_CHECK(fraction <= st.max_skip_fraction, ExitCode::kData, run.skipped_samples, " of ",
              plan.used, " samples (", 100.0 * fraction,
              "%) were unreadable and skipped, above --max-skip-fraction ",
              st.max_skip_fraction, "; each rank logged the files it skipped");
    BNA_CHECK(run.skipped_samples < plan.used, ExitCode::kData,
              "every sample was unreadable and skipped; nothing to adapt from");
    size_t adapted = 0;
    for (size_t i = 0; i < model->layers().size(); ++i) {
      const model::BnLayer& layer = model->layers()[i];
      stats::LayerStats s = acc.finalize(i, st.weighting);
      for (size_t c = 0; c < s.mean.size(); ++c) {
        BNA_CHECK(std::isfinite(s.mean[c]) && std::isfinite(s.var[c]), ExitCode::kData,
                  "layer '", layer.name, "' channel ", c, ": non-finite statistic (mean ",
                  s.mean[c], ", var ", s.var[c], "); nothing written");
      }
      if (s.mean.empty()) {
        log::warn0("layer '", layer.name, "' never ran in the forward passes: left unchanged");
      } else {
        ++adapted;
        model->setStatistics(i, s.mean, s.var, run.forwarded_batches);
        for (auto& named : model->buffers(i)) buffers.push_back(std::move(named));
      }
      run.results.push_back(std::move(s));
    }
    std::string inlined;
    for (const auto& m : model->inlinedBatchNormModules()) inlined += " '" + m + "'";
    BNA_CHECK(adapted > 0, ExitCode::kModel, "no BatchNorm layer of '", st.model_path,
              "' ran during the forward passes",
              inlined.empty() ? std::string()
                              : "; aten::batch_norm is called directly in" + inlined +
                                    " (an inlined or frozen graph: save the model without "
                                    "inlining)");
  });
  if (code) return static_cast<ExitCode>(code);
  if (st.eval) {
    int64_t samples = 0;
    if (int c = evaluate(comm, watchdog, *model, *eval_data, eval_plan, loading, "after",
                         samples, run.eval.correct_after)) {
      return static_cast<ExitCode>(c);
    }
  }

  // 6. Rank 0 writes every output, or none.
  code = agreedPhase(comm, &watchdog, "writing the outputs", [&] {
    maybeInjectFault("write", rank);
    if (rank != 0) return;
    run.total_seconds = secondsSince(t_start);
    std::vector<io::StagedFile> staged;
    if (!st.stats_output_path.empty()) {
      staged.emplace_back(st.stats_output_path, io::bytesWriter(io::serializeStats(buffers)));
    }
    if (!st.output_path.empty()) {
      staged.emplace_back(st.output_path, [&](const std::string& tmp) { model->save(tmp); });
    }
    std::string sidecar;
    if (ckpt) {
      // The patched checkpoint keeps IN's permissions; in place, a symlink is followed so
      // the file it names is replaced, not the link.
      const std::string out = st.in_place ? io::resolveLinks(st.checkpoint_output_path)
                                          : st.checkpoint_output_path;
      staged.emplace_back(
          out, [&](const std::string& tmp) { ckpt->write(tmp, buffers, run.forwarded_batches); },
          io::fileMode(st.checkpoint_path));
      run.checkpoint_sha256 = io::sha256FileHex(staged.back().tmpPath());
      sidecar = out + ".sha256";
      staged.emplace_back(sidecar,
                          io::bytesWriter(run.checkpoint_sha256 + "  " +
                                          out.substr(out.find_last_of('/') + 1) + "\n"));
      run.checkpoint_description = ckpt->describe();
    }
    if (!st.report_path.empty()) {
      staged.emplace_back(st.report_path,
                          io::bytesWriter(report::buildReport(run).dump(2) + "\n"));
    }
    // Every output is complete on disk; now put them in place. A checkpoint's old sidecar
    // goes just before the checkpoint, so that no stale .sha256 ever sits beside a new one.
    for (auto& file : staged) {
      if (!sidecar.empty() && file.path() + ".sha256" == sidecar) std::remove(sidecar.c_str());
      file.commit();
    }
    for (const auto& line : report::summaryLines(run)) log::info(line);
    for (const auto& file : staged) log::info("wrote ", file.path());
  });
#if BNADAPT_WITH_NCCL
  if (nccl && code == 0) static_cast<comm::NcclCommunicator&>(*nccl).destroy();
#endif
  return static_cast<ExitCode>(code);
}

int main(const std::vector<std::string>& args, comm::Communicator& comm) {
  log::setIdentity(comm.hostname(), comm.rank(), comm.size());
  // Processes the launcher did not wire into one job (srun without --mpi=pmix: N
  // singletons) stop before any work; every rank reaches the same verdict on its own.
  if (const std::string launch = comm::checkLaunch(comm::processEnv, comm.size());
      !launch.empty()) {
    if (comm.rank() == 0) log::error(launch);
    return static_cast<int>(ExitCode::kCommunication);
  }
  try {
    config::Settings settings;
    bool help = false;
    if (int code = agreedPhase(comm, nullptr, "reading the settings", [&] {
          try {
            settings = config::parseSettings(args);
          } catch (const config::HelpRequested&) {
            help = true;
          }
        })) {
      if (comm.rank() == 0) std::fprintf(stderr, "run 'bnadapt_dist --help' for usage\n");
      return code;
    }
    if (help) {
      if (comm.rank() == 0) std::fputs(config::usage().c_str(), stdout);
      return 0;
    }
    return static_cast<int>(run(settings, comm));
  } catch (const Error& e) {
    // A collective itself failed: the other ranks cannot be told; end the whole job.
    log::error(e.what());
    comm.abortJob(static_cast<int>(e.code()));
  } catch (const std::exception& e) {
    log::error("unexpected error: ", e.what());
    comm.abortJob(static_cast<int>(ExitCode::kInternal));
  }
  return static_cast<int>(ExitCode::kInternal);  // not reached: abortJob does not return
}

}  // namespace bnadapt::app
