// Each rank's report numbers (RankInfo) travel in the one all-reduce of the statistics:
// `world` slots of kRankNumbers doubles appended to the float64 buffer, each rank filling
// its own slot and leaving the others 0, so that the sum holds every rank's numbers.
// The counts are exact while below 2^53.
#pragma once

#include <cstddef>
#include <vector>

#include "report/report.h"

namespace bnadapt::report {

// batches, samples, skipped, forward_seconds, loader_wait_seconds, peak_rss_mib
inline constexpr size_t kRankNumbers = 6;

// Appends world * kRankNumbers zeros to `buffer` and writes `mine` into slot `rank`.
void packRankNumbers(std::vector<double>& buffer, const RankInfo& mine, int rank, int world);

// After the sum: takes the `world` slots off the end of `buffer` (restoring its size
// before packRankNumbers) and returns them in rank order.
std::vector<RankInfo> unpackRankNumbers(std::vector<double>& buffer, int world);

}  // namespace bnadapt::report
