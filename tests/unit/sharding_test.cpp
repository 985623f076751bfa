#include "data/sharding.h"

#include <set>

#include <gtest/gtest.h>

#include "common/error.h"

namespace bnadapt::data {
namespace {

TEST(RoundBudget, NearestMultipleHalvesUpAtLeastOneBatch) {
  EXPECT_EQ(roundBudget(2048, 64), 2048);
  EXPECT_EQ(roundBudget(2047, 64), 2048);
  EXPECT_EQ(roundBudget(2079, 64), 2048);  // 32.48 batches
  EXPECT_EQ(roundBudget(2080, 64), 2112);  // 32.5 batches: halves round up
  EXPECT_EQ(roundBudget(100, 64), 128);    // 1.5625
  EXPECT_EQ(roundBudget(31, 64), 64);      // 0.48 -> at least one batch
  EXPECT_EQ(roundBudget(1, 64), 64);
  EXPECT_EQ(roundBudget(32, 64), 64);  // 0.5 -> 1
  EXPECT_EQ(roundBudget(7, 1), 7);
  EXPECT_EQ(roundBudget(int64_t{1} << 40, 3), (int64_t{1} << 40) - 1);  // 2^40 = 1 mod 3: down
  EXPECT_EQ(roundBudget((int64_t{1} << 40) + 1, 3), (int64_t{1} << 40) + 2);  // 2 mod 3: up
}

TEST(RoundBudget, RejectsNonPositive) {
  for (auto [s, b] : {std::pair<int64_t, int64_t>{0, 8}, {-5, 8}, {8, 0}, {8, -1}}) {
    try {
      roundBudget(s, b);
      ADD_FAILURE() << s << " " << b;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage);
    }
  }
}

TEST(PlanBatches, PartialLastBatchWhenDataIsShort) {
  BatchPlan p = planBatches(200, 16, 100);
  EXPECT_EQ(p.rounded, 208);
  EXPECT_TRUE(p.truncated);
  EXPECT_EQ(p.used, 100);
  EXPECT_EQ(p.num_batches, 7);
  EXPECT_EQ(p.batchRange(6), (std::pair<int64_t, int64_t>{96, 100}));
  BatchPlan q = planBatches(72, 16, 100);
  EXPECT_EQ(q.used, 80);
  EXPECT_FALSE(q.truncated);
  EXPECT_EQ(q.num_batches, 5);
}

TEST(PlanBatches, EveryBatchOnExactlyOneRankForAnyWorld) {
  BatchPlan p = planBatches(1000, 64, 1000);
  for (int world : {1, 2, 3, 7, 8, 40}) {
    std::set<int64_t> seen;
    int64_t samples = 0;
    for (int r = 0; r < world; ++r) {
      for (int64_t b : p.batchesOfRank(r, world)) {
        EXPECT_EQ(b % world, r);
        EXPECT_TRUE(seen.insert(b).second);
      }
      samples += p.samplesOfRank(r, world);
    }
    EXPECT_EQ(static_cast<int64_t>(seen.size()), p.num_batches);
    EXPECT_EQ(samples, p.used);
  }
  // More ranks than batches: the extra ranks get none but still exist.
  EXPECT_TRUE(p.batchesOfRank(39, 40).empty());
}

TEST(PlanBatches, EmptyDataIsAnError) {
  try {
    planBatches(10, 2, 0);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kData);
  }
}

}  // namespace
}  // namespace bnadapt::data
