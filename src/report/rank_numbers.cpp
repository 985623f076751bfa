#include "report/rank_numbers.h"

#include "common/error.h"

namespace bnadapt::report {

void packRankNumbers(std::vector<double>& buffer, const RankInfo& mine, int rank, int world) {
  BNA_CHECK(world > 0 && rank >= 0 && rank < world, ExitCode::kInternal, "rank ", rank,
            " of a world of ", world);
  const size_t start = buffer.size();
  buffer.resize(start + kRankNumbers * static_cast<size_t>(world), 0.0);
  double* slot = buffer.data() + start + kRankNumbers * static_cast<size_t>(rank);
  slot[0] = static_cast<double>(mine.batches);
  slot[1] = static_cast<double>(mine.samples);
  slot[2] = static_cast<double>(mine.skipped);
  slot[3] = mine.forward_seconds;
  slot[4] = mine.loader_wait_seconds;
  slot[5] = mine.peak_rss_mib;
}

std::vector<RankInfo> unpackRankNumbers(std::vector<double>& buffer, int world) {
  const size_t slots = kRankNumbers * static_cast<size_t>(world);
  BNA_CHECK(world > 0 && buffer.size() >= slots, ExitCode::kInternal, "a buffer of ",
            buffer.size(), " values holds no rank numbers of a world of ", world);
  const size_t start = buffer.size() - slots;
  std::vector<RankInfo> ranks;
  ranks.reserve(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    const double* s = buffer.data() + start + kRankNumbers * static_cast<size_t>(r);
    ranks.push_back({static_cast<int64_t>(s[0]), static_cast<int64_t>(s[1]),
                     static_cast<int64_t>(s[2]), s[3], s[4], s[5]});
  }
  buffer.resize(start);
  return ranks;
}

}  // namespace bnadapt::report
