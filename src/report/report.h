// The --report JSON and the human summary, built from what one run measured.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/settings.h"
#include "data/sharding.h"
#include "model/adaptable_model.h"
#include "stats/accumulator.h"

namespace bnadapt::report {

struct RankInfo {
  int64_t batches = 0;
  int64_t samples = 0;        // forwarded (read and not skipped)
  int64_t skipped = 0;        // unreadable samples left out (--skip-corrupt)
  double forward_seconds = 0;
  double loader_wait_seconds = 0;  // forward passes waiting for decoded batches
  double peak_rss_mib = 0;         // the rank's peak resident memory
};

// Top-1 accuracy of the model before and after adaptation (--eval).
struct EvalResult {
  std::string data_description;
  int64_t samples = 0;
  int64_t correct_before = 0;
  int64_t correct_after = 0;
  double top1(int64_t correct) const {
    return samples > 0 ? static_cast<double>(correct) / static_cast<double>(samples) : 0.0;
  }
};

// Where the model's parameters and buffers came from.
struct WeightsSource {
  std::string from = "model";  // "model" (the TorchScript file) or "checkpoint"
  std::string file;            // the checkpoint
  std::string dict;            // its state_dict's path ("" = the root)
  std::string prefix;          // key prefix
  int64_t tensors = 0;
  std::string sha256;          // of the checkpoint's tensors as stored
  std::vector<std::string> kept_from_model;  // buffers the dict lacks (non-persistent ones)
};

struct RunSummary {
  const config::Settings* settings = nullptr;
  std::string data_description;
  int world_size = 1;
  int threads_per_rank = 1;
  int data_threads_per_rank = 1;
  std::string device = "cpu";   // "cpu", "cuda:0" (rank 0's)
  std::string backend = "mpi";  // of the all-reduce
  std::string precision;        // the forward's: dtype, autocast, layout
  data::BatchPlan plan;
  std::vector<RankInfo> ranks;
  int64_t skipped_samples = 0;  // over all ranks
  // Global batches forwarded (all but those whose every sample was skipped): what
  // num_batches_tracked grows by, as in PyTorch.
  int64_t forwarded_batches = 0;
  bool evaluated = false;
  EvalResult eval;
  const std::vector<model::BnLayer>* layers = nullptr;
  const std::vector<model::SkippedLayer>* skipped = nullptr;
  std::vector<stats::LayerStats> results;  // per layer, final
  // Rank 0's start-up: process exec -> the Job (loading LibTorch, CUDA and MPI, MPI_Init,
  // the settings; -1: unknown), then the Job's set-up up to the first forward.
  double process_start_seconds = -1;
  double setup_seconds = 0;
  double consistency_seconds = 0;  // of the setup: the fingerprint broadcast and agreement
  double forward_seconds = 0;  // wall time of the forward phase on rank 0's clock
  double allreduce_seconds = 0;
  double total_seconds = 0;
  WeightsSource weights;
  std::string checkpoint_description;  // empty: no checkpoint written
  std::string checkpoint_sha256;
};

nlohmann::json buildReport(const RunSummary& run);

// A few lines for the log: what changed, by how much.
std::vector<std::string> summaryLines(const RunSummary& run);

}  // namespace bnadapt::report
