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
  int64_t samples = 0;
  double forward_seconds = 0;
};

struct RunSummary {
  const config::Settings* settings = nullptr;
  std::string data_description;
  int world_size = 1;
  int threads_per_rank = 1;
  data::BatchPlan plan;
  std::vector<RankInfo> ranks;
  const std::vector<model::BnLayer>* layers = nullptr;
  const std::vector<model::SkippedLayer>* skipped = nullptr;
  std::vector<stats::LayerStats> results;  // per layer, final
  double setup_seconds = 0;
  double forward_seconds = 0;  // wall time of the forward phase on rank 0's clock
  double allreduce_seconds = 0;
  double total_seconds = 0;
  std::string checkpoint_description;  // empty: no checkpoint written
  std::string checkpoint_sha256;
};

nlohmann::json buildReport(const RunSummary& run);

// A few lines for the log: what changed, by how much.
std::vector<std::string> summaryLines(const RunSummary& run);

}  // namespace bnadapt::report
