// The global batch sequence and which rank runs which batch.
//
// The budget of samples is global. Global batch b covers samples
// [b*B, min((b+1)*B, used)) in data order and runs on rank b mod world_size, so the set of
// batches -- and hence the statistics -- does not depend on the number of ranks.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace bnadapt::data {

// `samples` rounded to the nearest multiple of `batch_size` (halves round up), at least one
// batch. Both must be positive.
int64_t roundBudget(int64_t samples, int64_t batch_size);

struct BatchPlan {
  int64_t requested = 0;   // samples asked for
  int64_t rounded = 0;     // after rounding to the batch size
  int64_t used = 0;        // min(rounded, available)
  int64_t batch_size = 0;
  int64_t num_batches = 0;
  bool truncated = false;  // rounded > available: all samples used, last batch may be partial

  std::pair<int64_t, int64_t> batchRange(int64_t b) const;  // [begin, end) sample indices
  // Global batch indices run by `rank` in a world of `world_size`, ascending.
  std::vector<int64_t> batchesOfRank(int rank, int world_size) const;
  // Samples run by `rank`.
  int64_t samplesOfRank(int rank, int world_size) const;
};

// `available`: samples in the data set (> 0).
BatchPlan planBatches(int64_t samples, int64_t batch_size, int64_t available);

}  // namespace bnadapt::data
