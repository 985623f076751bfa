// Data-path benchmark: decoding throughput and what the loader costs the forward passes.
//
//   bnadapt_bench_data --model M.pt --images DIR --tensor FILE.pt [--batch-size 32]
//                      [--batches 20] [--threads T] [--data-threads D] [--repeat 3]
//
// Each time is the fastest of --repeat runs, forward-only and end-to-end alternating, so
// that other load on the machine affects both alike.
//
// Prints, measured in this one run:
//   decode    images/s of one thread for decode + resize + centre crop (+ normalise) of DIR's
//             images to the model's input size, from bytes already in memory and from files
//   tensor    end-to-end time (loader + forward) / forward-only time on the same batches,
//             batches preloaded for the forward-only pass
//   images    end-to-end time / max(forward-only time, decode time / data threads)
// Targets (issue "Real calibration data"): >= 300 img/s per thread for 224 px output from
// ~500x375 JPEGs; ratios <= 1.05.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "data/dataset.h"
#include "data/image_decode.h"
#include "data/loader.h"
#include "data/sharding.h"
#include "io/file_names.h"
#include "io/files.h"
#include "model/adaptable_model.h"

namespace {

using namespace bnadapt;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Args {
  std::string model, images, tensor;
  int64_t batch_size = 32, batches = 20;
  int threads = 1, data_threads = 1, repeat = 3;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") a.model = v;
    else if (k == "--images") a.images = v;
    else if (k == "--tensor") a.tensor = v;
    else if (k == "--batch-size") a.batch_size = std::stoll(v);
    else if (k == "--batches") a.batches = std::stoll(v);
    else if (k == "--threads") a.threads = std::stoi(v);
    else if (k == "--data-threads") a.data_threads = std::stoi(v);
    else if (k == "--repeat") a.repeat = std::max(1, std::stoi(v));
    else throw std::runtime_error("unknown argument " + k);
  }
  if (a.model.empty() || a.images.empty() || a.tensor.empty()) {
    throw std::runtime_error("usage: --model M --images DIR --tensor FILE [--batch-size N] "
                             "[--batches N] [--threads N] [--data-threads N]");
  }
  return a;
}

// Forward-only: every batch read first, then timed calibration passes.
double forwardOnly(model::AdaptableModel& model, const data::Dataset& ds,
                   const std::vector<std::vector<int64_t>>& batches, int data_threads) {
  std::vector<at::Tensor> ready;
  data::LoaderOptions o;
  o.threads = data_threads;
  o.prefetch_batches = static_cast<int>(batches.size());
  data::Loader loader(ds, batches, std::vector<int64_t>(batches.size(), 0), o);
  data::Batch b;
  while (loader.next(b)) ready.push_back(b.inputs.to(model.inputDtype()));
  stats::StatsAccumulator acc = model.makeAccumulator();
  const auto t0 = Clock::now();
  for (const auto& t : ready) model.calibrate(t, acc);
  return since(t0);
}

// End to end: the loader decodes while the forward passes run, as bnadapt_dist does.
double endToEnd(model::AdaptableModel& model, const data::Dataset& ds,
                const std::vector<std::vector<int64_t>>& batches, int data_threads,
                double* wait) {
  stats::StatsAccumulator acc = model.makeAccumulator();
  const auto t0 = Clock::now();
  data::LoaderOptions o;
  o.threads = data_threads;
  data::Loader loader(ds, batches, std::vector<int64_t>(batches.size(), 0), o);
  data::Batch b;
  while (loader.next(b)) model.calibrate(b.inputs.to(model.inputDtype()), acc);
  *wait = loader.waitSeconds();
  return since(t0);
}

std::vector<std::vector<int64_t>> plan(const data::Dataset& ds, int64_t batch_size,
                                       int64_t batches) {
  const int64_t n = std::min(ds.size(), batch_size * batches);
  const data::BatchPlan p = data::planAll(n, batch_size);
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < p.num_batches; ++b) ids.push_back(b);
  return data::batchSamples(p, data::sampleOrder(n, false, 0), ids);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    at::set_num_threads(a.threads);
    model::AdaptableModel model(a.model);

    // 1. Decoding throughput, one thread.
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::recursive_directory_iterator(a.images)) {
      if (e.is_regular_file() && io::isImageFileName(e.path().string())) {
        files.push_back(e.path().string());
      }
    }
    std::sort(files.begin(), files.end());
    std::vector<std::vector<char>> bytes;
    for (const auto& f : files) bytes.push_back(io::readFile(f, "image", ExitCode::kData));
    const auto images = data::openDataset(a.images, {});
    const std::vector<int64_t> shape = images->sampleShape();
    data::ImagePreprocess prep;
    prep.crop_h = shape[1];
    prep.crop_w = shape[2];
    prep.resize_shorter = static_cast<int64_t>(std::min(prep.crop_h, prep.crop_w) / 0.875);
    std::vector<float> out(static_cast<size_t>(3 * prep.crop_h * prep.crop_w));
    auto t0 = Clock::now();
    for (const auto& b : bytes) {
      data::decodeImage(std::string_view(b.data(), b.size()), "x", prep, out.data());
    }
    const double decode_memory = static_cast<double>(bytes.size()) / since(t0);
    t0 = Clock::now();
    for (int64_t i = 0; i < images->size(); ++i) images->read(i, out.data());
    const double decode_files = static_cast<double>(images->size()) / since(t0);
    std::printf("decode: %zu images -> %lldx%lld: %.0f img/s per thread from memory, %.0f "
                "img/s per thread from files (target >= 300)\n",
                bytes.size(), static_cast<long long>(prep.crop_h),
                static_cast<long long>(prep.crop_w), decode_memory, decode_files);

    // 2. Tensor data.
    const auto tensor = data::openDataset(a.tensor, {});
    const auto tb = plan(*tensor, a.batch_size, a.batches);
    forwardOnly(model, *tensor, tb, 1);  // warm-up: JIT profiling runs, allocator
    double t_fwd = 1e30, t_e2e = 1e30, wait = 0, w = 0;
    for (int r = 0; r < a.repeat; ++r) {
      t_fwd = std::min(t_fwd, forwardOnly(model, *tensor, tb, 1));
      const double e = endToEnd(model, *tensor, tb, 1, &w);
      if (e < t_e2e) t_e2e = e, wait = w;
    }
    std::printf("tensor: %zu batches of %lld: forward-only %.3f s, end-to-end %.3f s "
                "(waited %.3f s): ratio %.3f (target <= 1.05)\n",
                tb.size(), static_cast<long long>(a.batch_size), t_fwd, t_e2e, wait,
                t_e2e / t_fwd);

    // 3. Image data.
    const auto ib = plan(*images, a.batch_size, a.batches);
    int64_t n = 0;
    for (const auto& b : ib) n += static_cast<int64_t>(b.size());
    forwardOnly(model, *images, ib, a.data_threads);  // warm-up at this input size
    double i_fwd = 1e30, i_e2e = 1e30;
    for (int r = 0; r < a.repeat; ++r) {
      i_fwd = std::min(i_fwd, forwardOnly(model, *images, ib, a.data_threads));
      const double e = endToEnd(model, *images, ib, a.data_threads, &w);
      if (e < i_e2e) i_e2e = e, wait = w;
    }
    const double decode_time = static_cast<double>(n) / decode_files;
    const double bound = std::max(i_fwd, decode_time / a.data_threads);
    std::printf("images: %zu batches of %lld, %d data thread(s), %d intra-op thread(s): "
                "forward-only %.3f s, decode %.3f s / %d threads, end-to-end %.3f s "
                "(waited %.3f s): ratio %.3f (target <= 1.05)\n",
                ib.size(), static_cast<long long>(a.batch_size), a.data_threads, a.threads,
                i_fwd, decode_time, a.data_threads, i_e2e, wait, i_e2e / bound);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bnadapt_bench_data: %s\n", e.what());
    return 1;
  }
}
