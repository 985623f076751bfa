#include "report/rank_numbers.h"

#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"

namespace bnadapt::report {
namespace {

// What the all-reduce does: the element-wise sum of every rank's buffer.
std::vector<double> sumOf(const std::vector<std::vector<double>>& buffers) {
  std::vector<double> sum(buffers.at(0).size(), 0.0);
  for (const auto& b : buffers) {
    EXPECT_EQ(b.size(), sum.size());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += b[i];
  }
  return sum;
}

RankInfo infoOf(int r) {
  RankInfo info;
  info.batches = 10 + r;
  info.samples = (int64_t{1} << 52) + r;  // still exact in a double
  info.skipped = r;
  info.forward_seconds = 1.5 * r;
  info.loader_wait_seconds = 0.25 + r;
  info.peak_rss_mib = 512.0 + r;
  return info;
}

TEST(RankNumbers, SumOfPackedBuffersUnpacksEveryRankInOrder) {
  const int world = 3;
  const std::vector<double> stats = {1.0, -2.5, 3.25, 0.0};
  std::vector<std::vector<double>> buffers;
  for (int r = 0; r < world; ++r) {
    std::vector<double> b = stats;
    packRankNumbers(b, infoOf(r), r, world);
    EXPECT_EQ(b.size(), stats.size() + kRankNumbers * world);
    buffers.push_back(b);
  }
  std::vector<double> sum = sumOf(buffers);
  const std::vector<RankInfo> ranks = unpackRankNumbers(sum, world);
  ASSERT_EQ(ranks.size(), static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    const RankInfo want = infoOf(r);
    EXPECT_EQ(ranks[r].batches, want.batches);
    EXPECT_EQ(ranks[r].samples, want.samples);
    EXPECT_EQ(ranks[r].skipped, want.skipped);
    EXPECT_EQ(ranks[r].forward_seconds, want.forward_seconds);
    EXPECT_EQ(ranks[r].loader_wait_seconds, want.loader_wait_seconds);
    EXPECT_EQ(ranks[r].peak_rss_mib, want.peak_rss_mib);
  }
  // The statistics part is the plain sum, and the buffer is back to its size.
  ASSERT_EQ(sum.size(), stats.size());
  for (size_t i = 0; i < stats.size(); ++i) EXPECT_EQ(sum[i], world * stats[i]);
}

TEST(RankNumbers, OneRankAndAnEmptyStatsBuffer) {
  std::vector<double> b;
  packRankNumbers(b, infoOf(0), 0, 1);
  ASSERT_EQ(b.size(), kRankNumbers);
  const std::vector<RankInfo> ranks = unpackRankNumbers(b, 1);
  ASSERT_EQ(ranks.size(), 1u);
  EXPECT_EQ(ranks[0].batches, 10);
  EXPECT_EQ(ranks[0].peak_rss_mib, 512.0);
  EXPECT_TRUE(b.empty());
}

TEST(RankNumbers, OtherRanksSlotsStayZero) {
  std::vector<double> b = {7.0};
  packRankNumbers(b, infoOf(1), 1, 3);
  for (size_t i = 1; i < 1 + kRankNumbers; ++i) EXPECT_EQ(b[i], 0.0);
  for (size_t i = 1 + 2 * kRankNumbers; i < b.size(); ++i) EXPECT_EQ(b[i], 0.0);
  EXPECT_EQ(b[1 + kRankNumbers], 11.0);  // rank 1's batches
}

TEST(RankNumbers, RejectsBadRankAndShortBuffer) {
  std::vector<double> b;
  EXPECT_THROW(packRankNumbers(b, RankInfo{}, 3, 3), Error);
  EXPECT_THROW(packRankNumbers(b, RankInfo{}, -1, 3), Error);
  std::vector<double> shorter(kRankNumbers * 2 - 1, 0.0);
  EXPECT_THROW(unpackRankNumbers(shorter, 2), Error);
}

}  // namespace
}  // namespace bnadapt::report
