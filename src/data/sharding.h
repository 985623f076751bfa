// The global batch sequence and which rank runs which batch.
//
// The budget of samples is global. Global batch b covers positions [b*B, min((b+1)*B, used))
// of the sample order (the data's own order, or a seeded shuffle of it, the same on every
// rank) and runs on rank b mod world_size, so the set of batches -- and hence the statistics
// -- does not depend on the number of ranks.
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

// Every one of `n` samples (> 0) in batches of `batch_size`, the last one partial: for
// evaluation, where the count is not rounded.
BatchPlan planAll(int64_t n, int64_t batch_size);

// Position -> sample index for a data set of `available` samples: 0, 1, 2, ... or, with
// `shuffle`, a permutation that depends only on `seed` (its own generator, so it is the same
// on every rank, compiler and platform).
std::vector<int64_t> sampleOrder(int64_t available, bool shuffle, uint64_t seed);

// The sample indices of each of `batches` (global batch indices) under `order`.
std::vector<std::vector<int64_t>> batchSamples(const BatchPlan& plan,
                                               const std::vector<int64_t>& order,
                                               const std::vector<int64_t>& batches);

}  // namespace bnadapt::data
