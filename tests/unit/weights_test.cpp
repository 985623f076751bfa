#include "checkpoint/weights.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/serialize.h>

#include "checkpoint/checkpoint.h"
#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

#define EXPECT_ERROR(stmt, want, text)                                              \
  try {                                                                             \
    stmt;                                                                           \
    ADD_FAILURE() << "no error from " #stmt;                                        \
  } catch (const Error& e) {                                                        \
    EXPECT_EQ(e.code(), want) << e.what();                                          \
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();     \
  }

// fc (Linear 4 -> 3) and bn (BatchNorm over 3 channels), as a scripted model's tensors.
torch::jit::Module model(at::ScalarType dtype = at::kFloat) {
  torch::jit::Module fc("fc"), bn("bn"), root("root");
  fc.register_parameter("weight", at::zeros({3, 4}, dtype), false);
  fc.register_parameter("bias", at::zeros({3}, dtype), false);
  bn.register_parameter("weight", at::ones({3}, dtype), false);
  bn.register_parameter("bias", at::zeros({3}, dtype), false);
  bn.register_buffer("running_mean", at::zeros({3}, dtype));
  bn.register_buffer("running_var", at::ones({3}, dtype));
  bn.register_buffer("num_batches_tracked", at::scalar_tensor(0, at::kLong));
  root.register_module("fc", fc);
  root.register_module("bn", bn);
  return root;
}

// The state_dict of an epoch-12 model: every value differs from model()'s.
io::NamedTensors epoch12(at::ScalarType dtype = at::kFloat) {
  return {{"fc.weight", at::arange(12, dtype).view({3, 4}) / 8},
          {"fc.bias", at::full({3}, 0.5, dtype)},
          {"bn.weight", at::full({3}, 2.0, dtype)},
          {"bn.bias", at::full({3}, -1.0, dtype)},
          {"bn.running_mean", at::full({3}, 0.25, dtype)},
          {"bn.running_var", at::full({3}, 4.0, dtype)},
          {"bn.num_batches_tracked", at::scalar_tensor(1200, at::kLong)}};
}

const KeyMatch kWhere{"model", "module.", 0};

io::NamedTensors without(io::NamedTensors d, const std::string& name) {
  std::erase_if(d, [&](const auto& kv) { return kv.first == name; });
  return d;
}

TEST(Weights, LoadsEveryParameterAndBufferConvertedToTheModelsDtype) {
  torch::jit::Module m = model();
  const ModelWeights w = checkWeights(m, epoch12(at::kHalf), "ck.pt", kWhere);
  EXPECT_EQ(w.tensors, 7u);
  assignWeights(m, w);
  EXPECT_TRUE(m.attr("fc").toModule().attr("weight").toTensor().equal(
      at::arange(12, at::kFloat).view({3, 4}) / 8));
  EXPECT_EQ(m.attr("fc").toModule().attr("weight").toTensor().scalar_type(), at::kFloat);
  EXPECT_EQ(m.attr("bn").toModule().attr("num_batches_tracked").toTensor().item<int64_t>(), 1200);
  EXPECT_NE(w.describe().find("dict 'model', key prefix 'module.'), 7 tensor(s), sha256 "),
            std::string::npos)
      << w.describe();
}

TEST(Weights, MissingAndUnexpectedKeysAreNamed) {
  io::NamedTensors d = without(without(epoch12(), "fc.bias"), "bn.weight");
  d.emplace_back("head.weight", at::zeros({2}));
  EXPECT_ERROR(checkWeights(model(), d, "ck.pt", kWhere), ExitCode::kCheckpoint,
               "2 key(s) of the model are missing: 'module.fc.bias', 'module.bn.weight'; 1 "
               "key(s) are not in the model: 'module.head.weight'");
}

TEST(Weights, AMissingBatchCounterIsTolerated) {
  const ModelWeights w =
      checkWeights(model(), without(epoch12(), "bn.num_batches_tracked"), "ck.pt", kWhere);
  EXPECT_EQ(w.tensors, 6u);
  EXPECT_EQ(w.tolerated_missing, 1u);
}

TEST(Weights, ABufferTheDictLacksKeepsTheModelsValue) {
  torch::jit::Module m = model();
  m.register_buffer("index", at::arange(3));  // persistent=False in Python: not in state_dicts
  const ModelWeights w = checkWeights(m, epoch12(), "ck.pt", kWhere);
  EXPECT_EQ(w.kept_from_model, std::vector<std::string>{"index"});
  EXPECT_ERROR(checkWeights(m, without(epoch12(), "bn.running_var"), "ck.pt", kWhere),
               ExitCode::kCheckpoint, "missing: 'module.bn.running_var'");
}

TEST(Weights, ShapeAndOverflowAreNamed) {
  io::NamedTensors d = epoch12();
  d[0].second = at::zeros({5, 4});
  EXPECT_ERROR(checkWeights(model(), d, "ck.pt", kWhere), ExitCode::kCheckpoint,
               "key 'module.fc.weight' has shape [5, 4] but the model's 'fc.weight' has shape [3, 4]");
  io::NamedTensors wide = epoch12(at::kFloat);
  wide[1].second[2] = 1e5;  // beyond float16's 65504
  EXPECT_ERROR(checkWeights(model(at::kHalf), wide, "ck.pt", kWhere), ExitCode::kCheckpoint,
               "key 'module.fc.bias': a value does not fit the model's Half");
}

TEST(Weights, WeightsFromModelNamesTheFirstDifference) {
  torch::jit::Module m = model();
  io::NamedTensors same = {{"fc.weight", at::zeros({3, 4})}, {"fc.bias", at::zeros({3})},
                           {"bn.weight", at::ones({3})},     {"bn.bias", at::zeros({3})},
                           // statistics differ: they are recomputed, not compared
                           {"bn.running_mean", at::full({3}, 9.0)},
                           {"bn.running_var", at::full({3}, 9.0)}};
  requireSameWeights(m, checkWeights(m, same, "ck.pt", kWhere));
  same[1].second[1] = 0.125;
  EXPECT_ERROR(requireSameWeights(m, checkWeights(m, same, "ck.pt", kWhere)),
               ExitCode::kCheckpoint,
               "first at key 'module.fc.bias' (largest absolute difference 0.125)");
}

TEST(Weights, Sha256DependsOnValuesNotOrder) {
  io::NamedTensors d = epoch12();
  io::NamedTensors reversed(d.rbegin(), d.rend());
  EXPECT_EQ(weightsSha256(d), weightsSha256(reversed));
  d[2].second = d[2].second.clone();  // `reversed` shares the tensors
  d[2].second[0] = 2.5;
  EXPECT_NE(weightsSha256(d), weightsSha256(reversed));
}

TEST(Weights, SaysWhatARankWouldNeed) {
  EXPECT_ERROR(checkMemoryFor(uint64_t{1} << 60, "huge.pt"), ExitCode::kCheckpoint,
               "reading the state_dict's tensors (1099511627776 MiB) needs about 2199023255552 MiB "
               "on this rank, but only ");
  EXPECT_ERROR(checkMemoryFor(uint64_t{1} << 50, "big.pt", 4096), ExitCode::kCheckpoint,
               "needs about 2147483648 MiB on this rank, 8796093022208 MiB for the 4096 ranks "
               "of this host that read it, but only ");
  checkMemoryFor(1 << 20, "small.pt", 8);
}

TEST(Weights, ReadsTheMatchedStateDictOfATorchSaveFile) {
  c10::Dict<std::string, at::Tensor> sd;
  for (const auto& [name, t] : epoch12(at::kHalf)) sd.insert("module." + name, t);
  sd.insert("other.weight", at::zeros({2}));
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("model", sd);
  root.insert("epoch", 12);
  const std::vector<char> bytes = torch::pickle_save(root);
  const std::string path = "/tmp/bna_weights_test_" + std::to_string(::getpid()) + ".pt";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto ckpt = openCheckpoint(path);
  torch::jit::Module m = model();
  ckpt->plan(bnBuffersOf(m), "");
  const io::NamedTensors read = ckpt->readStateDict();
  std::remove(path.c_str());
  EXPECT_EQ(read.size(), 7u);  // "other.weight" lies outside the prefix
  const ModelWeights w = checkWeights(m, read, path, ckpt->match());
  EXPECT_EQ(w.sha256, weightsSha256(epoch12(at::kHalf)));
  EXPECT_EQ(w.where.prefix, "module.");
}

}  // namespace
}  // namespace bnadapt::checkpoint
