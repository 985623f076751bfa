// AdaptableModel on the generated fixtures: discovery by structure (what is adapted, what is
// left alone and why) and calibration of two models at once from two threads (the observe
// op's context is per model). Needs BNADAPT_FIXTURES=<build>/fixtures (ctest sets it for
// the copy registered as adaptable_model_fixtures; elsewhere the cases skip, saying so).
#include "model/adaptable_model.h"

#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"

namespace bnadapt::model {
namespace {

std::string fixture(const std::string& name) {
  const char* dir = std::getenv("BNADAPT_FIXTURES");
  return dir == nullptr ? std::string() : std::string(dir) + "/" + name;
}

#define NEED_FIXTURES()                                                              \
  if (std::getenv("BNADAPT_FIXTURES") == nullptr)                                    \
  GTEST_SKIP() << "BNADAPT_FIXTURES is not set (the generated fixtures folder)"

std::map<std::string, std::string> leftAloneByName(const AdaptableModel& m) {
  std::map<std::string, std::string> out;
  for (const SkippedLayer& s : m.skipped()) {
    EXPECT_FALSE(s.reason.empty()) << s.name;
    out[s.name] = s.category;
  }
  return out;
}

std::vector<std::string> layerNames(const AdaptableModel& m) {
  std::vector<std::string> out;
  for (const BnLayer& l : m.layers()) out.push_back(l.name);
  return out;
}

TEST(AdaptableModel, FindsEveryBatchNormByStructureScripted) {
  NEED_FIXTURES();
  AdaptableModel m(fixture("variety_scripted.pt"));
  EXPECT_EQ(layerNames(m), (std::vector<std::string>{"bnact", "custom", "fused.1", "native",
                                                      "twice", "spare"}));
  EXPECT_EQ(m.layers()[0].kind, "BatchNormAct2d");
  EXPECT_EQ(leftAloneByName(m),
            (std::map<std::string, std::string>{{"frozen", "frozen"},
                                                {"arith", "not observable"},
                                                {"untracked", "track_running_stats=False"}}));
  EXPECT_EQ(countByCategory(m.skipped()),
            "frozen x1, not observable x1, track_running_stats=False x1");
}

TEST(AdaptableModel, FindsEveryBatchNormByStructureTraced) {
  NEED_FIXTURES();
  AdaptableModel m(fixture("variety_traced.pt"));
  // Tracing keeps no forward for the BN it never called: that one is named as unreached.
  EXPECT_EQ(layerNames(m),
            (std::vector<std::string>{"bnact", "custom", "fused.1", "native", "twice"}));
  EXPECT_EQ(leftAloneByName(m),
            (std::map<std::string, std::string>{{"frozen", "frozen"},
                                                {"arith", "not observable"},
                                                {"untracked", "track_running_stats=False"},
                                                {"spare", "unreached"}}));
}

TEST(AdaptableModel, UnreachedLayerCollectsNothing) {
  NEED_FIXTURES();
  AdaptableModel m(fixture("variety_scripted.pt"));
  stats::StatsAccumulator acc = m.makeAccumulator();
  torch::manual_seed(3);
  m.calibrate(torch::randn({4, 3, 16, 16}), acc);
  for (size_t i = 0; i < m.layers().size(); ++i) {
    const stats::LayerStats s = acc.finalize(i, stats::Weighting::kSamples);
    // "twice" sees two calls per forward: twice the values per channel of a 16x16 map.
    const std::string& name = m.layers()[i].name;
    const double expected = name == "spare" ? 0 : name == "twice" ? 2 * 4 * 256 : 4 * 256;
    EXPECT_EQ(s.count, expected) << m.layers()[i].name;
  }
}

TEST(AdaptableModel, NoBatchNormSaysWhatNormalisationThereIs) {
  NEED_FIXTURES();
  try {
    AdaptableModel m(fixture("nobn_scripted.pt"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kModel);
    EXPECT_NE(std::string(e.what()).find("no normalisation layer: no BatchNorm to adapt"),
              std::string::npos) << e.what();
  }
}

std::vector<double> calibrated(AdaptableModel& m, const std::vector<at::Tensor>& batches) {
  stats::StatsAccumulator acc = m.makeAccumulator();
  for (const at::Tensor& b : batches) m.calibrate(b, acc);
  return acc.buffer();
}

// Two ranks as threads of one process: each model's observe calls reach its own accumulator.
TEST(AdaptableModel, TwoModelsCalibrateConcurrentlyLikeSequentially) {
  NEED_FIXTURES();
  for (const char* file : {"mixed_scripted.pt", "fork_scripted.pt", "variety_traced.pt"}) {
    SCOPED_TRACE(file);
    const std::string path = fixture(file);
    AdaptableModel probe(path);
    torch::manual_seed(7);
    std::vector<at::Tensor> a, b;
    const std::vector<int64_t> shape =
        std::string(file).rfind("fork", 0) == 0 ? std::vector<int64_t>{6, 48}
                                                : std::vector<int64_t>{6, 3, 16, 16};
    for (int i = 0; i < 6; ++i) {
      a.push_back(torch::randn(shape));
      b.push_back(torch::randn(shape) * 2 + 1);
    }
    AdaptableModel seq_a(path), seq_b(path);
    const std::vector<double> want_a = calibrated(seq_a, a);
    const std::vector<double> want_b = calibrated(seq_b, b);
    ASSERT_NE(want_a, want_b);

    AdaptableModel con_a(path), con_b(path);
    std::vector<double> got_a, got_b;
    std::thread ta([&] { got_a = calibrated(con_a, a); });
    std::thread tb([&] { got_b = calibrated(con_b, b); });
    ta.join();
    tb.join();
    ASSERT_EQ(got_a.size(), want_a.size());
    ASSERT_EQ(got_b.size(), want_b.size());
    for (size_t i = 0; i < want_a.size(); ++i) {
      EXPECT_NEAR(got_a[i], want_a[i], 1e-9 * (1 + std::abs(want_a[i]))) << i;
      EXPECT_NEAR(got_b[i], want_b[i], 1e-9 * (1 + std::abs(want_b[i]))) << i;
    }
  }
}

}  // namespace
}  // namespace bnadapt::model
