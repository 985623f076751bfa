#include "stats/accumulator.h"

#include <cmath>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace bnadapt::stats {
namespace {

using stats::Weighting;

// float64 reference: mean and unbiased variance per channel of x [N, C, *].
std::pair<at::Tensor, at::Tensor> reference(const at::Tensor& x) {
  at::Tensor flat = x.to(at::kDouble).transpose(0, 1).reshape({x.size(1), -1});
  return {flat.mean(1), flat.var(1, /*unbiased=*/true)};
}

TEST(StatsAccumulator, SamplesWeightingIsExactOverUnevenBatches) {
  at::manual_seed(1);
  at::Tensor x = at::randn({23, 3, 4, 5}, at::kFloat) * 2.5 + 0.75;
  StatsAccumulator acc({{0.1, -3.0, 7.0}});  // arbitrary shifts: results must not depend on them
  acc.observe(0, x.slice(0, 0, 8));
  acc.observe(0, x.slice(0, 8, 16));
  acc.observe(0, x.slice(0, 16, 23));  // partial last batch
  LayerStats s = acc.finalize(0, Weighting::kSamples);
  auto [mean, var] = reference(x);
  ASSERT_EQ(s.mean.size(), 3u);
  EXPECT_DOUBLE_EQ(s.count, 23.0 * 20);
  EXPECT_DOUBLE_EQ(s.batches, 3.0);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(s.mean[c], mean[c].item<double>(), 1e-12);
    EXPECT_NEAR(s.var[c] / var[c].item<double>(), 1.0, 1e-12);
  }
}

TEST(StatsAccumulator, BatchesWeightingAveragesPerBatchMoments) {
  at::manual_seed(2);
  at::Tensor x = at::randn({20, 2, 3}, at::kFloat);
  StatsAccumulator acc({{0.0, 0.0}});
  std::vector<at::Tensor> parts = {x.slice(0, 0, 8), x.slice(0, 8, 16), x.slice(0, 16, 20)};
  for (const auto& p : parts) acc.observe(0, p);
  LayerStats s = acc.finalize(0, Weighting::kBatches);
  for (int c = 0; c < 2; ++c) {
    double m = 0, e2 = 0;
    for (const auto& p : parts) {
      auto [pm, pv] = reference(p);
      m += pm[c].item<double>();
      e2 += pv[c].item<double>() + pm[c].item<double>() * pm[c].item<double>();
    }
    m /= 3;
    e2 /= 3;
    EXPECT_NEAR(s.mean[c], m, 1e-12);
    EXPECT_NEAR(s.var[c], e2 - m * m, 1e-12);
  }
}

TEST(StatsAccumulator, LargeMeanOverSigmaAndConstantChannel) {
  // Channel 0: mean/sigma = 1e4; channel 1: constant. Values are built in float64 and
  // rounded to float32 once, so the float32 tensor itself is the ground truth.
  at::manual_seed(3);
  at::Tensor x = at::empty({64, 2, 8, 8}, at::kDouble);
  x.select(1, 0).copy_(at::randn({64, 8, 8}, at::kDouble) + 1e4);
  x.select(1, 1).fill_(12345.678);
  at::Tensor xf = x.to(at::kFloat);
  auto [mean, var] = reference(xf);
  // Shifts far from the data (a stale running_mean) must not cost precision.
  StatsAccumulator acc({{-5e3, 0.0}});
  for (int b = 0; b < 8; ++b) acc.observe(0, xf.slice(0, 8 * b, 8 * b + 8));
  for (Weighting w : {Weighting::kSamples, Weighting::kBatches}) {
    LayerStats s = acc.finalize(0, w);
    EXPECT_NEAR(s.mean[0], mean[0].item<double>(), 1e-8);
    if (w == Weighting::kSamples) {
      EXPECT_NEAR(s.var[0] / var[0].item<double>(), 1.0, 1e-6);
    }
    EXPECT_GE(s.var[1], 0.0);
    EXPECT_LE(s.var[1], 1e-12);
    EXPECT_NEAR(s.mean[1], xf[0][1][0][0].item<double>(), 1e-9);
  }
}

TEST(StatsAccumulator, ReturnsTheBatchMomentsBatchNormNormalisesWith) {
  // observe() hands batch norm the batch's mean and biased variance (what training mode
  // normalises with), in the requested dtype; mean/sigma = 1e3 must not cost digits.
  at::manual_seed(5);
  at::Tensor x = at::randn({6, 3, 5, 7}, at::kDouble) * 0.5 + 1e3;
  at::Tensor xf = x.to(at::kFloat);
  StatsAccumulator acc({{0.0, 0.0, 0.0}});
  BatchMoments m = acc.observe(0, xf, at::kDouble);
  ASSERT_EQ(m.mean.scalar_type(), at::kDouble);
  auto [mean, var] = reference(xf);
  const double n = 6.0 * 35;
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(m.mean[c].item<double>(), mean[c].item<double>(), 1e-10);
    EXPECT_NEAR(m.var[c].item<double>() / (var[c].item<double>() * (n - 1) / n), 1.0, 1e-9);
  }
  EXPECT_EQ(acc.observe(0, xf).mean.scalar_type(), at::kFloat);  // default: x's dtype
}

TEST(StatsAccumulator, LayoutsAndPathsAgree) {
  // The fused CPU pass (contiguous and channels-last float32) and the float64-copy path
  // (bfloat16 takes it) give the same sums.
  at::manual_seed(6);
  at::Tensor x = (at::randn({4, 5, 6, 3}, at::kFloat) * 3 + 2).to(at::kBFloat16).to(at::kFloat);
  StatsAccumulator a({{1, 2, 3, 4, 5}}), b({{1, 2, 3, 4, 5}}), c({{1, 2, 3, 4, 5}});
  a.observe(0, x);
  b.observe(0, x.contiguous(at::MemoryFormat::ChannelsLast));
  c.observe(0, x.to(at::kBFloat16));
  for (size_t i = 0; i < a.buffer().size(); ++i) {
    EXPECT_NEAR(a.buffer()[i], b.buffer()[i], 1e-9 * (1 + std::abs(a.buffer()[i])));
    EXPECT_NEAR(a.buffer()[i], c.buffer()[i], 1e-9 * (1 + std::abs(a.buffer()[i])));
  }
}

TEST(StatsAccumulator, BufferSumsCombineLikeOneRank) {
  at::manual_seed(4);
  at::Tensor x = at::randn({30, 4}, at::kFloat);
  StatsAccumulator whole({{0, 0, 0, 0}}), a({{0, 0, 0, 0}}), b({{0, 0, 0, 0}});
  for (int i = 0; i < 3; ++i) whole.observe(0, x.slice(0, 10 * i, 10 * i + 10));
  a.observe(0, x.slice(0, 0, 10));
  a.observe(0, x.slice(0, 20, 30));
  b.observe(0, x.slice(0, 10, 20));
  for (size_t i = 0; i < a.buffer().size(); ++i) a.buffer()[i] += b.buffer()[i];
  for (Weighting w : {Weighting::kSamples, Weighting::kBatches}) {
    LayerStats s1 = whole.finalize(0, w), s2 = a.finalize(0, w);
    for (int c = 0; c < 4; ++c) {
      EXPECT_NEAR(s1.mean[c], s2.mean[c], 1e-14);
      EXPECT_NEAR(s1.var[c], s2.var[c], 1e-14);
    }
  }
}

TEST(StatsAccumulator, RejectsBadInput) {
  StatsAccumulator acc({{0, 0, 0}});
  EXPECT_THROW(acc.observe(0, at::zeros({4, 2, 3})), std::invalid_argument);  // channels
  EXPECT_THROW(acc.observe(0, at::zeros({1, 3})), std::invalid_argument);     // 1 value
  at::Tensor bad = at::zeros({4, 3});
  bad[2][1] = std::nan("");
  EXPECT_THROW(acc.observe(0, bad), std::invalid_argument);
  bad[2][1] = INFINITY;
  EXPECT_THROW(acc.observe(0, bad), std::invalid_argument);
  // Nothing was added by the rejected batches.
  EXPECT_EQ(acc.finalize(0, Weighting::kSamples).count, 0.0);
}

TEST(StatsAccumulator, UnusedLayerHasNoStatistics) {
  StatsAccumulator acc({{0, 0}, {1, 1, 1}});
  acc.observe(1, at::randn({5, 3}));
  EXPECT_TRUE(acc.finalize(0, Weighting::kSamples).mean.empty());
  EXPECT_EQ(acc.finalize(1, Weighting::kSamples).mean.size(), 3u);
  EXPECT_EQ(acc.channels(1), 3);
  EXPECT_EQ(acc.numLayers(), 2u);
}

TEST(StatsAccumulator, NonFiniteShiftIsIgnored) {
  StatsAccumulator acc({{std::nan(""), INFINITY}});
  at::Tensor x = at::randn({16, 2});
  acc.observe(0, x);
  LayerStats s = acc.finalize(0, Weighting::kSamples);
  auto [mean, var] = reference(x);
  EXPECT_NEAR(s.mean[0], mean[0].item<double>(), 1e-12);
  EXPECT_NEAR(s.var[1], var[1].item<double>(), 1e-12);
}

}  // namespace
}  // namespace bnadapt::stats

namespace bnadapt::stats {
namespace {

TEST(StatsAccumulator, LeavesFloat64InputUntouched) {
  at::Tensor x = at::randn({8, 3, 2}, at::kDouble);
  at::Tensor before = x.clone();
  StatsAccumulator acc({{1.0, 2.0, 3.0}});
  acc.observe(0, x);
  EXPECT_TRUE(at::equal(x, before));
}

}  // namespace
}  // namespace bnadapt::stats
