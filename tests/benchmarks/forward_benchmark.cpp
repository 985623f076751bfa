// What observing the BatchNorm inputs costs the forward passes.
//
//   bnadapt_bench_forward --model M.pt [--shape 3,112,112] [--batch-size 32] [--batches 8]
//                         [--threads T] [--repeat 5]
//
// On the same seeded batches, in this one process with T intra-op threads, alternating
// (ABBA) after two warm-up passes each:
//   tool   the calibration copy (AdaptableModel::calibrate: rewritten graph, every BN input
//          observed into the float64 accumulator)
//   bare   the model as a user would run precise BN: torch::jit::load, eval(), every module
//          with a running_mean in train mode, forward under no_grad
// Prints one JSON line: the fastest pass of each, in seconds, and their ratio.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include "model/adaptable_model.h"

namespace {

using namespace bnadapt;

// Seconds `f` takes.
template <typename F>
double timed(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Args {
  std::string model;
  std::vector<int64_t> shape{3, 112, 112};
  int64_t batch_size = 32;
  int64_t batches = 8;
  int threads = 1;
  int repeat = 5;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") {
      a.model = v;
    } else if (k == "--shape") {
      a.shape.clear();
      std::stringstream ss(v);
      for (std::string d; std::getline(ss, d, ',');) a.shape.push_back(std::stoll(d));
    } else if (k == "--batch-size") {
      a.batch_size = std::stoll(v);
    } else if (k == "--batches") {
      a.batches = std::stoll(v);
    } else if (k == "--threads") {
      a.threads = std::stoi(v);
    } else if (k == "--repeat") {
      a.repeat = std::stoi(v);
    }
  }
  return a;
}

// Precise BN as users write it: BN modules (anything with a running_mean) train, rest eval.
void bnTrainOnly(torch::jit::Module& m) {
  m.eval();
  for (auto child : m.named_modules()) {
    if (child.value.hasattr("running_mean") && child.value.attr("running_mean").isTensor()) {
      child.value.train(true);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  at::set_num_threads(a.threads);
  at::manual_seed(0);
  std::vector<at::Tensor> batches;
  std::vector<int64_t> dims{a.batch_size};
  dims.insert(dims.end(), a.shape.begin(), a.shape.end());
  for (int64_t b = 0; b < a.batches; ++b) batches.push_back(at::randn(dims));

  model::AdaptableModel tool(a.model);
  stats::StatsAccumulator acc = tool.makeAccumulator();
  torch::jit::Module bare = torch::jit::load(a.model);
  bnTrainOnly(bare);
  auto toolPass = [&] {
    return timed([&] {
      for (const auto& x : batches) tool.calibrate(x, acc);
    });
  };
  auto barePass = [&] {
    torch::NoGradGuard no_grad;
    return timed([&] {
      for (const auto& x : batches) bare.forward({x});
    });
  };
  for (int w = 0; w < 2; ++w) {
    toolPass();
    barePass();
  }
  double best_tool = 1e300, best_bare = 1e300;
  for (int r = 0; r < a.repeat; ++r) {
    if (r % 2 == 0) {
      best_tool = std::min(best_tool, toolPass());
      best_bare = std::min(best_bare, barePass());
    } else {
      best_bare = std::min(best_bare, barePass());
      best_tool = std::min(best_tool, toolPass());
    }
  }
  std::printf("{\"layers\": %zu, \"threads\": %d, \"tool_forward\": %.4f, \"bare_forward\": %.4f, "
              "\"ratio\": %.3f}\n",
              tool.layers().size(), at::get_num_threads(), best_tool, best_bare,
              best_tool / best_bare);
  return 0;
}
