// The two estimators of the new statistics (README "What it computes"): every sample of a
// channel weighs the same, or every batch observation does (what momentum=None estimates).
#pragma once

namespace bnadapt::stats {

enum class Weighting { kSamples, kBatches };

// "samples" or "batches", as the flag, the config key and the report spell them.
constexpr const char* weightingName(Weighting w) {
  return w == Weighting::kBatches ? "batches" : "samples";
}

}  // namespace bnadapt::stats
