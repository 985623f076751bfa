#include "app/job.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <utility>

#include <ATen/Parallel.h>

#include "app/agreement.h"
#include "app/checkpoint_weights.h"
#include "app/evaluation.h"
#include "app/fault_injection.h"
#include "app/fingerprint.h"
#include "app/output_paths.h"
#include "app/run.h"
#include "comm/cpu_binding.h"
#include "comm/cuda_devices.h"
#include "common/error.h"
#include "common/log.h"
#include "common/torch_compat.h"
#include "io/staged_outputs.h"
#include "report/progress.h"
#include "report/rank_numbers.h"

namespace bnadapt::app {
namespace {

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Seconds since this process was exec'd (the kernel's start time, 10 ms ticks): dynamic
// loading of LibTorch, CUDA and MPI, MPI_Init and reading the settings. -1 if /proc says
// nothing usable.
double secondsSinceProcessStart() {
  std::ifstream stat("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');  // the command name may hold spaces and ')'
  std::ifstream uptime_file("/proc/uptime");
  double uptime = -1;
  uptime_file >> uptime;
  if (close == std::string::npos || !uptime_file || uptime < 0) return -1;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  for (int i = 3; i < 22 && fields >> field; ++i) {
  }  // fields 3..21
  unsigned long long start_ticks = 0;
  if (!(fields >> start_ticks)) return -1;  // field 22: starttime
  const long ticks = sysconf(_SC_CLK_TCK);
  if (ticks <= 0) return -1;
  return std::max(0.0, uptime - static_cast<double>(start_ticks) / static_cast<double>(ticks));
}

double peakRssMiB() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

data::DataOptions dataOptions(const config::Settings& st, data::DataFormat format,
                              int64_t synthetic_size) {
  data::DataOptions o;
  o.format = format;
  o.sample_shape = st.sample_shape;
  o.synthetic_size = synthetic_size;
  o.seed = st.seed;
  o.mean = st.mean;
  o.std = st.std;
  o.resize_shorter = st.resize_shorter;
  return o;
}

report::WeightsSource weightsSource(const checkpoint::ModelWeights& w) {
  return {"checkpoint",          w.file,   w.where.dict_path, w.where.prefix,
          static_cast<int64_t>(w.tensors), w.sha256, w.kept_from_model};
}

// The log's and the consistency check's line on where the weights came from.
std::string describeWeights(const report::WeightsSource& w) {
  if (w.from != "checkpoint") return "weights: the model file's";
  return "weights: every parameter and buffer from checkpoint '" + w.file + "' (" +
         (w.dict.empty() ? std::string("root dict") : "dict '" + w.dict + "'") +
         ", key prefix '" + w.prefix + "'), " + std::to_string(w.tensors) +
         " tensor(s), sha256 " + w.sha256 + "; the model file gives the architecture";
}

void logSettings(const config::Settings& st, const comm::Communicator& comm, int threads,
                 int data_threads) {
  log::info0("bnadapt_dist ", BNADAPT_VERSION, " (LibTorch ", compat::kTorchVersion, "; ",
             comm::cudaLibraryVersions(), "): ", comm.size(), " rank(s), ", threads,
             " intra-op and ", data_threads, " data thread(s) per rank; rank 0 may use ",
             comm::allowedCores(), " of ", comm::onlineCores(), " core(s)");
  if (!st.config_path.empty()) log::info0("config: ", st.config_path);
  log::info0("model: ", st.model_path);
  log::info0("data: ", st.data_path);
  log::info0("samples: ", st.samples, ", batch size ", st.batch_size, ", estimator '",
             stats::weightingName(st.weighting), "', seed ", st.seed);
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

}  // namespace

Job::Job(const config::Settings& settings, comm::Communicator& comm, Watchdog& watchdog)
    : st_(settings),
      comm_(comm),
      rank_(comm.rank()),
      world_(comm.size()),
      t_start_(std::chrono::steady_clock::now()),
      process_start_seconds_(secondsSinceProcessStart()),
      threads_(at::get_num_threads()),  // configureProcess() set them
      data_threads_(dataThreads(settings, threads_)),
      watchdog_(watchdog) {}

int Job::start() {
  logSettings(st_, comm_, threads_, data_threads_);
  return 0;
}

int Job::place() {
  if (int code = choosePlacement(st_, comm_, watchdog_, place_)) return code;
  loading_.threads = data_threads_;
  loading_.prefetch_batches = st_.prefetch_batches;
  loading_.skip_corrupt = st_.skip_corrupt;
  loading_.pin_memory = place_.onGpu();  // page-locked batches: non-blocking copies to the GPU
  // Activations in bf16 where the device supports it; observed sums stay float64.
  bf16_ = st_.autocast == config::Precision::kBf16;
  if (bf16_) {
    autocast_.emplace(place_.onGpu() ? c10::DeviceType::CUDA : c10::DeviceType::CPU,
                      at::kBFloat16);
  }
  return 0;
}

int Job::load() {
  if (int code = agreedPhase(comm_, &watchdog_, "setup", [&] { openInputs(); })) return code;
  logInputs();
  return 0;
}

void Job::openInputs() {
  maybeInjectFault("setup", rank_);
  if (rank_ == 0) checkOutputPaths(st_);
  CheckpointWeights weights(st_, rank_, comm_.localSize());  // matched and checked now, patched at the end
  model_ = std::make_unique<model::AdaptableModel>(st_.model_path, weights.prepare());
  model_->moveTo(place_.torch_device, st_.channels_last);
  if (rank_ == 0) ckpt_ = weights.takeCheckpoint();
  if (const checkpoint::ModelWeights* w = weights.loaded()) run_.weights = weightsSource(*w);
  data_ = data::openDataset(
      st_.data_path,
      dataOptions(st_, st_.data_format, data::roundBudget(st_.samples, st_.batch_size)));
  plan_ = data::planBatches(st_.samples, st_.batch_size, data_->size());
  order_ = data::sampleOrder(data_->size(), st_.shuffle, st_.seed);
  if (st_.eval) {
    eval_data_ = data::openDataset(st_.eval_data_path, dataOptions(st_, data::DataFormat::kAuto, 0));
    BNA_CHECK(eval_data_->hasLabels(), ExitCode::kData, "--eval-data '", st_.eval_data_path,
              "' has no labels (", eval_data_->describe(),
              "); use class folders, IDX images with their labels file, or a tensor "
              "file with \"labels\"");
    const int64_t n = st_.eval_samples > 0 ? std::min(st_.eval_samples, eval_data_->size())
                                           : eval_data_->size();
    eval_plan_ = data::planAll(n, st_.batch_size);
  }
}

void Job::logInputs() const {
  log::info0("data: ", data_->describe());
  if (eval_data_) log::info0("eval data: ", eval_data_->describe());
  if (ckpt_) log::info0("checkpoint: ", ckpt_->describe());
  if (!st_.checkpoint_path.empty()) {
    log::info0(st_.weights_from == config::WeightsFrom::kModel
                   ? "weights: the model file's, equal to the checkpoint's (--weights-from model)"
                   : describeWeights(run_.weights));
  }
  if (!run_.weights.kept_from_model.empty()) {
    std::string names;
    for (const auto& n : run_.weights.kept_from_model) names += (names.empty() ? "'" : ", '") + n + "'";
    log::warn0(run_.weights.kept_from_model.size(), " buffer(s) the checkpoint lacks keep the ",
               "model file's values (non-persistent buffers, which TorchScript keeps and ",
               "state_dicts leave out): ", names);
  }
  const std::string by_reason = model::countByCategory(model_->skipped());
  log::info0(model_->layers().size(), " BN layer(s) to adapt, ", model_->skipped().size(),
             " left alone", by_reason.empty() ? "" : " (" + by_reason + ")", "; ",
             plan_.num_batches, " global batch(es) of ", plan_.batch_size, " from ", plan_.used,
             " sample(s)");
  for (const auto& s : model_->skipped()) {
    log::warn0("left alone: layer '", s.name, "' (", s.kind, "): ", s.reason);
  }
  for (const auto& m : model_->unobservedBatchNormModules()) {
    log::warn0("module '", m, "' calls batch_norm with constant statistics (a frozen graph); ",
               "those calls are not adapted");
  }
  if (plan_.rounded != plan_.requested) {
    log::info0("samples: ", plan_.requested, " rounded to ", plan_.rounded,
               ", the nearest multiple of the batch size ", plan_.batch_size);
  }
  if (plan_.truncated) {
    log::warn0("samples: ", plan_.rounded, " requested but the data holds ", data_->size(),
               "; using all ", plan_.used, " (the last batch has ",
               plan_.used - (plan_.num_batches - 1) * plan_.batch_size, " sample(s))");
  }
}

int Job::checkConsistency() {
  // The broadcast stays outside the phase body: a collective must never be skipped by an
  // exception.
  std::vector<std::string> lines =
      fingerprint(st_, *data_, plan_, eval_data_.get(), eval_plan_, *model_);
  const auto t_check = std::chrono::steady_clock::now();
  lines.push_back(describeWeights(run_.weights));  // what each rank read
  std::string rank0_lines = joinLines(lines);
  comm_.broadcast(rank0_lines, 0);
  const int code = agreedPhase(comm_, &watchdog_, "the consistency check",
                               [&] { checkSameAsRankZero(rank_, lines, rank0_lines); });
  run_.consistency_seconds = secondsSince(t_check);
  return code;
}

int Job::connect() {
  // The all-reduce of the statistics: NCCL on the GPUs, or MPI. Agreement stays on comm_.
  if (place_.backend == comm::Backend::kNccl) {
    if (int code = agreedPhase(comm_, &watchdog_, "starting NCCL", [&] {
          device_comm_ = comm::makeDeviceCommunicator(place_.backend, comm_, place_.device,
                                                      static_cast<double>(st_.timeout_seconds));
        })) {
      return code;
    }
  }
  run_.setup_seconds = secondsSince(t_start_);
  run_.process_start_seconds = process_start_seconds_;
  return 0;
}

comm::Communicator& Job::reducer() { return device_comm_ ? *device_comm_ : comm_; }

int Job::evaluateBefore() {
  run_.evaluated = st_.eval;
  if (!st_.eval) return 0;
  run_.eval.data_description = eval_data_->describe();
  return evaluate(comm_, watchdog_, *model_, *eval_data_, eval_plan_, loading_, "before",
                  run_.eval.samples, run_.eval.correct_before);
}

// The batch as the model takes it: dtype, device (non-blocking from pinned memory), layout.
at::Tensor Job::toModel(const at::Tensor& x) const {
  at::Tensor y = x.to(place_.torch_device, model_->inputDtype(), /*non_blocking=*/place_.onGpu());
  if (st_.channels_last && y.dim() == 4) y = y.contiguous(at::MemoryFormat::ChannelsLast);
  return y;
}

int Job::forward() {
  // Global batch b runs on rank b mod world.
  acc_.emplace(model_->makeAccumulator());
  const std::vector<int64_t> mine = plan_.batchesOfRank(rank_, world_);
  const auto t_forward = std::chrono::steady_clock::now();
  report::Progress progress(static_cast<int64_t>(mine.size()), plan_.num_batches, rank_ == 0);
  const int code = agreedPhase(comm_, &watchdog_, "the forward passes",
                               [&] { forwardBatches(mine, progress); });
  progress.finish();
  if (code) return code;
  run_.forward_seconds = secondsSince(t_forward);
  me_.forward_seconds = run_.forward_seconds;
  me_.peak_rss_mib = peakRssMiB();
  return 0;
}

void Job::forwardBatches(const std::vector<int64_t>& mine, report::Progress& progress) {
  maybeInjectFault("forward", rank_);
  data::Loader loader(*data_, data::batchSamples(plan_, order_, mine), mine, loading_);
  data::Batch batch;
  for (int64_t b : mine) {
    try {
      loader.next(batch);
      for (const auto& why : batch.skipped) log::warn("skipped: ", why);
      me_.skipped += static_cast<int64_t>(batch.skipped.size());
      me_.samples += batch.inputs.size(0);
      if (batch.inputs.size(0) > 0) {
        model_->calibrate(toModel(batch.inputs), *acc_);
        ++me_.batches;
      }
    } catch (const Error& e) {
      fail(e.code(), "rank ", rank_, ", global batch ", b, ": ", e.what());
    }
    progress.step(batch.requested);
    watchdog_.kick();
  }
  me_.loader_wait_seconds = loader.waitSeconds();
}

int Job::checkStatistics() {
  // The per-batch non-finite check would synchronise the GPU: on a GPU, check once here.
  if (!place_.onGpu()) return 0;
  return agreedPhase(comm_, &watchdog_, "checking the statistics", [&] {
    const int64_t bad = acc_->firstNonFiniteLayer();
    BNA_CHECK(bad < 0, ExitCode::kData, "rank ", rank_, ": layer '",
              model_->layers()[static_cast<size_t>(std::max<int64_t>(bad, 0))].name,
              "': non-finite activations in this rank's batches; nothing written");
  });
}

int Job::reduce() {
  // One all-reduce: the statistics plus, per rank, what it did (report/rank_numbers.h).
  const auto t_reduce = std::chrono::steady_clock::now();
  std::vector<double>& buffer = acc_->buffer();
  report::packRankNumbers(buffer, me_, rank_, world_);
  watchdog_.enter("the all-reduce of the statistics");
  maybeInjectFault("allreduce", rank_);
  reducer().allreduceSum(buffer);
  run_.ranks = report::unpackRankNumbers(buffer, world_);
  for (const report::RankInfo& r : run_.ranks) {
    run_.skipped_samples += r.skipped;
    run_.forwarded_batches += r.batches;
  }
  run_.allreduce_seconds = secondsSince(t_reduce);
  return 0;
}

int Job::finalize() {
  // Every rank finalises the same statistics (rank 0 writes them; all evaluate them).
  describeRun();
  return agreedPhase(comm_, &watchdog_, "finalising the statistics", [&] {
    const double fraction =
        static_cast<double>(run_.skipped_samples) / static_cast<double>(plan_.used);
    BNA_CHECK(fraction <= st_.max_skip_fraction, ExitCode::kData, run_.skipped_samples, " of ",
              plan_.used, " samples (", 100.0 * fraction,
              "%) were unreadable and skipped, above --max-skip-fraction ",
              st_.max_skip_fraction, "; each rank logged the files it skipped");
    BNA_CHECK(run_.skipped_samples < plan_.used, ExitCode::kData,
              "every sample was unreadable and skipped; nothing to adapt from");
    adaptLayers();
  });
}

void Job::describeRun() {
  run_.settings = &st_;
  run_.data_description = data_->describe();
  run_.world_size = world_;
  run_.threads_per_rank = threads_;
  run_.data_threads_per_rank = data_threads_;
  run_.device = comm::deviceName(place_.device);
  run_.backend = comm::backendName(place_.backend);
  run_.precision = std::string(c10::toString(model_->inputDtype())) +
                   (bf16_ ? " with bf16 autocast" : "") +
                   (st_.channels_last ? ", channels-last" : "") + "; sums in float64";
  run_.plan = plan_;
  run_.layers = &model_->layers();
  run_.skipped = &model_->skipped();
}

void Job::adaptLayers() {
  size_t adapted = 0;
  for (size_t i = 0; i < model_->layers().size(); ++i) {
    const model::BnLayer& layer = model_->layers()[i];
    stats::LayerStats s = acc_->finalize(i, st_.weighting);
    for (size_t c = 0; c < s.mean.size(); ++c) {
      BNA_CHECK(std::isfinite(s.mean[c]) && std::isfinite(s.var[c]), ExitCode::kData,
                "layer '", layer.name, "' channel ", c, ": non-finite statistic (mean ",
                s.mean[c], ", var ", s.var[c], "); nothing written");
    }
    if (s.mean.empty()) {
      log::warn0("unreached: layer '", layer.name, "' (", layer.kind,
                 ") never ran in the forward passes: left unchanged");
    } else {
      ++adapted;
      model_->setStatistics(i, s.mean, s.var, run_.forwarded_batches);
      for (auto& named : model_->buffers(i)) buffers_.push_back(std::move(named));
    }
    run_.results.push_back(std::move(s));
  }
  std::string frozen;
  for (const auto& m : model_->unobservedBatchNormModules()) frozen += " '" + m + "'";
  BNA_CHECK(adapted > 0, ExitCode::kModel, "no BatchNorm layer of '", st_.model_path,
            "' ran during the forward passes",
            frozen.empty() ? std::string()
                           : "; batch_norm is called with constant statistics in" + frozen +
                                 " (a frozen graph: adapt the model before freezing it)");
}

int Job::evaluateAfter() {
  if (!st_.eval) return 0;
  int64_t samples = 0;
  return evaluate(comm_, watchdog_, *model_, *eval_data_, eval_plan_, loading_, "after", samples,
                  run_.eval.correct_after);
}

int Job::write() {
  // Rank 0 writes every output, or none.
  return agreedPhase(comm_, &watchdog_, "writing the outputs", [&] {
    maybeInjectFault("write", rank_);
    if (rank_ == 0) stageAndCommit();
  });
}

void Job::stageAndCommit() {
  run_.total_seconds = secondsSince(t_start_);
  io::StagedOutputs outputs;
  if (!st_.stats_output_path.empty()) {
    outputs.add(st_.stats_output_path, io::bytesWriter(io::serializeStats(buffers_)));
  }
  if (!st_.output_path.empty()) {
    outputs.add(st_.output_path, [&](const std::string& tmp) { model_->save(tmp); });
  }
  if (ckpt_) {
    // The patched checkpoint keeps IN's permissions; in place, a symlink is followed so
    // the file it names is replaced, not the link.
    const std::string out = st_.in_place ? io::resolveLinks(st_.checkpoint_output_path)
                                         : st_.checkpoint_output_path;
    run_.checkpoint_sha256 = outputs.addWithSidecar(
        out,
        [&](const std::string& tmp) { ckpt_->write(tmp, buffers_, run_.forwarded_batches); },
        io::fileMode(st_.checkpoint_path));
    run_.checkpoint_description = ckpt_->describe();
  }
  if (!st_.report_path.empty()) {
    outputs.add(st_.report_path, io::bytesWriter(report::buildReport(run_).dump(2) + "\n"));
  }
  // Every output is complete on disk; now put them in place.
  outputs.commitAll();
  for (const auto& line : report::summaryLines(run_)) log::info(line);
  for (const auto& path : outputs.paths()) log::info("wrote ", path);
}

int Job::shutdown() {
  if (device_comm_) {
    device_comm_->shutdown();
    device_comm_.reset();
  }
  return 0;
}

Job::~Job() {
  // A phase failed after connect(): end the device communicator's pending work, never its
  // collective shutdown (which would wait for ranks that may be gone).
  if (device_comm_) device_comm_->abort();
}

}  // namespace bnadapt::app
