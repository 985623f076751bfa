#include "checkpoint/checkpoint.h"

#include <fstream>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/serialize.h>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bna_ckpt_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string write(const std::string& name, const std::vector<char>& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
    return path;
  }

  // {"model": {...BN buffers in float16, a weight}, "epoch": 3}, written by LibTorch.
  static std::vector<char> sample() {
    c10::Dict<std::string, at::Tensor> sd;
    sd.insert("module.bn.running_mean", at::zeros({4}, at::kHalf));
    sd.insert("module.bn.running_var", at::ones({4}, at::kHalf));
    sd.insert("module.bn.num_batches_tracked", at::scalar_tensor(7, at::kLong));
    sd.insert("module.fc.weight", at::arange(12, at::kFloat).view({3, 4}));
    c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
    root.insert("model", sd);
    root.insert("epoch", 3);
    return torch::pickle_save(root);
  }

  static std::vector<ExpectedBuffer> expected() {
    return {{"bn.running_mean", {4}, true},
            {"bn.running_var", {4}, true},
            {"bn.num_batches_tracked", {}, false}};
  }

  std::string dir_;
};

TEST_F(CheckpointTest, PatchesOnlyTheBnBuffers) {
  const std::string in = write("in.pt", sample());
  auto ckpt = openCheckpoint(in);
  ckpt->plan(expected(), "");
  EXPECT_NE(ckpt->describe().find("'model' with key prefix 'module.', 3 BN buffer(s)"),
            std::string::npos)
      << ckpt->describe();
  const std::string out = dir_ + "/out.pt";
  ckpt->write(out, {{"bn.running_mean", at::tensor({0.5, 1.5, -2.0, 3.25}, at::kDouble)},
                    {"bn.running_var", at::tensor({1.0, 2.0, 4.0, 0.125}, at::kFloat)},
                    {"bn.num_batches_tracked", at::scalar_tensor(-1, at::kLong)}},
              /*batches_added=*/5);
  std::ifstream f(out, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  c10::IValue loaded = torch::pickle_load(bytes);
  auto root = loaded.toGenericDict();
  EXPECT_EQ(root.at("epoch").toInt(), 3);
  auto sd = root.at("model").toGenericDict();
  at::Tensor mean = sd.at("module.bn.running_mean").toTensor();
  EXPECT_EQ(mean.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(mean, at::tensor({0.5, 1.5, -2.0, 3.25}).to(at::kHalf)));
  EXPECT_TRUE(at::equal(sd.at("module.bn.running_var").toTensor(),
                        at::tensor({1.0, 2.0, 4.0, 0.125}).to(at::kHalf)));
  EXPECT_EQ(sd.at("module.bn.num_batches_tracked").toTensor().item<int64_t>(), 12);
  EXPECT_TRUE(at::equal(sd.at("module.fc.weight").toTensor(), at::arange(12, at::kFloat).view({3, 4})));
}

TEST_F(CheckpointTest, RefusesValuesTheDtypeCannotHold) {
  auto ckpt = openCheckpoint(write("in.pt", sample()));
  ckpt->plan(expected(), "");
  try {
    ckpt->write(dir_ + "/out.pt", {{"bn.running_var", at::full({4}, 1e6, at::kDouble)}}, 1);
    ADD_FAILURE() << "float16 overflow accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
    EXPECT_NE(std::string(e.what()).find("key 'module.bn.running_var': a new value does not fit"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(CheckpointTest, LegacyAndForeignFilesAreRefusedClearly) {
  auto messageOf = [&](const std::vector<char>& bytes) {
    const std::string p = write("x.pt", bytes);
    try {
      openCheckpoint(p);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(messageOf({'\x80', '\x02', '\x8a', '\x0a'}).find("legacy torch.save format"),
            std::string::npos);
  EXPECT_NE(messageOf({'h', 'e', 'l', 'l', 'o'}).find("neither a torch.save zip"),
            std::string::npos);
}

TEST_F(CheckpointTest, FuzzedCopiesGiveCleanErrors) {
  const std::vector<char> good = sample();
  std::mt19937 rng(99);
  int ok = 0, rejected = 0;
  for (int i = 0; i < 200; ++i) {
    std::vector<char> m = good;
    if (i % 2 == 0) {
      m.resize(rng() % m.size());
    } else {
      for (int k = 0; k < 1 + int(rng() % 8); ++k) m[rng() % m.size()] ^= char(1u << (rng() % 8));
    }
    const std::string p = write("fuzz.pt", m);
    try {
      auto ckpt = openCheckpoint(p);
      ckpt->plan(expected(), "");
      ckpt->write(dir_ + "/fuzz_out.pt", {{"bn.running_mean", at::zeros({4})}}, 1);
      ++ok;
    } catch (const Error& e) {
      EXPECT_TRUE(e.code() == ExitCode::kCheckpoint || e.code() == ExitCode::kOutput) << e.what();
      ++rejected;
    }
  }
  EXPECT_EQ(ok + rejected, 200);
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace bnadapt::checkpoint
