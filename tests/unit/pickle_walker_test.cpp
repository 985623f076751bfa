#include "torchfile/pickle_walker.h"

#include <random>
#include <sstream>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/serialize.h>

#include "common/error.h"

namespace bnadapt::torchfile {
namespace {

// data.pkl of torch::pickle_save(value): the same layout torch.save writes.
std::string dataPkl(const c10::IValue& value) {
  const std::vector<char> zip = torch::pickle_save(value);
  std::istringstream in(std::string(zip.begin(), zip.end()));
  caffe2::serialize::PyTorchStreamReader reader(&in);
  auto [ptr, size] = reader.getRecord("data.pkl");
  return std::string(static_cast<const char*>(ptr.get()), size);
}

c10::IValue sampleCheckpoint() {
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("bn.running_mean", at::arange(4, at::kFloat));
  sd.insert("bn.running_var", at::ones({4}, at::kHalf));
  sd.insert("bn.num_batches_tracked", at::scalar_tensor(7, at::kLong));
  sd.insert("fc.weight", at::zeros({3, 4}, at::kDouble).t());  // a transposed view
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("model", sd);
  root.insert("epoch", 12);
  root.insert("name", std::string("run7"));
  return root;
}

TEST(PickleWalker, FindsEveryTensorAndItsKey) {
  const std::string pkl = dataPkl(sampleCheckpoint());
  UnpickleResult r = unpickle(pkl, "test");
  EXPECT_EQ(r.tensors.size(), 4u);
  std::vector<DictNode> dicts = tensorDicts(r);
  ASSERT_EQ(dicts.size(), 1u);
  EXPECT_EQ(dicts[0].path, "model");
  std::map<std::string, const TensorRecord*> byKey(dicts[0].tensors.begin(), dicts[0].tensors.end());
  ASSERT_EQ(byKey.size(), 4u);
  const TensorRecord* mean = byKey.at("bn.running_mean");
  EXPECT_EQ(mean->dtype, c10::kFloat);
  EXPECT_EQ(mean->sizes, (std::vector<int64_t>{4}));
  EXPECT_EQ(mean->strides, (std::vector<int64_t>{1}));
  EXPECT_EQ(mean->storage_numel, 4);
  EXPECT_EQ(byKey.at("bn.running_var")->dtype, c10::kHalf);
  EXPECT_EQ(byKey.at("bn.num_batches_tracked")->dtype, c10::kLong);
  EXPECT_TRUE(byKey.at("bn.num_batches_tracked")->sizes.empty());
  const TensorRecord* w = byKey.at("fc.weight");
  EXPECT_EQ(w->dtype, c10::kDouble);
  EXPECT_EQ(w->sizes, (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(w->strides, (std::vector<int64_t>{1, 4}));
  EXPECT_NE(mean->storage_key, w->storage_key);
}

// BINUNICODE s
std::string bu(const std::string& s) {
  std::string out = "X";
  for (int i = 0; i < 4; ++i) out += char((s.size() >> (8 * i)) & 0xff);
  return out + s;
}
std::string op(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out += char(b);
  return out;
}

// Hand-written protocol-2 pickle of what torch.save writes for
// {"sd": OrderedDict(w=tensor) with _metadata, "args": argparse.Namespace(lr=0.5),
//  "bigs": 2**64} with memo reuse, BUILD on an OrderedDict, NEWOBJ, LONG1 and BINFLOAT.
std::string handWritten() {
  const std::string od = "ccollections\nOrderedDict\n";
  std::string p = op({0x80, 2}) + "}" + op({'q', 0}) + "(" + bu("sd") + od + op({'q', 2}) + ")R" +
                  bu("w") + "ctorch._utils\n_rebuild_tensor_v2\n" + "((" + bu("storage") +
                  "ctorch\nFloatStorage\n" + bu("0") + bu("cpu") + op({'K', 6}) + "tQ" +
                  op({'K', 0, 'K', 2, 'K', 3, 0x86, 'K', 3, 'K', 1, 0x86, 0x89, 'h', 2}) + ")RtR" +
                  "s" + "}" + bu("_metadata") + op({'h', 2}) + ")Rsb" +  //
                  bu("args") + "cargparse\nNamespace\n" + ")" + op({0x81}) + "}" + bu("lr") + "G" +
                  op({0x3f, 0xe0, 0, 0, 0, 0, 0, 0}) + "sb" +  //
                  bu("bigs") + op({0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1}) + "u.";
  return p;
}

TEST(PickleWalker, OrderedDictBuildNewobjAndOpaqueObjects) {
  UnpickleResult r = unpickle(handWritten(), "hand");
  ASSERT_EQ(r.tensors.size(), 1u);
  const TensorRecord& t = *r.tensors.front();
  EXPECT_EQ(t.storage_key, "0");
  EXPECT_EQ(t.sizes, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.strides, (std::vector<int64_t>{3, 1}));
  std::vector<DictNode> dicts = tensorDicts(r);
  ASSERT_EQ(dicts.size(), 1u);
  EXPECT_EQ(dicts[0].path, "sd");
  EXPECT_EQ(dicts[0].tensors.at(0).first, "w");
  // The Namespace is an opaque call with one BUILD state; the 9-byte long is flagged big.
  const auto& entries = r.root->entries;
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[1].second->kind, PickleValue::Kind::kCall);
  EXPECT_EQ(entries[1].second->items[0]->text, "argparse.Namespace");
  EXPECT_EQ(entries[1].second->states.size(), 1u);
  EXPECT_TRUE(entries[2].second->big_int);
}

// {"sd": {"w": T0, "w": T1, "x": T2}}: Python keeps T1 for "w"; and a tensor built then
// POPped (T9) must not lend its record to a later one (T2).
TEST(PickleWalker, LastValueOfARepeatedKeyAndPoppedTensors) {
  auto tensor = [](const std::string& key) {
    return "ctorch._utils\n_rebuild_tensor_v2\n((" + bu("storage") + "ctorch\nFloatStorage\n" +
           bu(key) + bu("cpu") + op({'K', 4}) + "tQ" + op({'K', 0, 'K', 4, 0x85, 'K', 1, 0x85, 0x89}) +
           "ccollections\nOrderedDict\n)RtR";
  };
  const std::string p = op({0x80, 2}) + "}(" + bu("sd") + "}(" + bu("w") + tensor("0") + bu("w") +
                        tensor("1") + "u" + tensor("9") + "0" + bu("x") + tensor("2") + "su.";
  UnpickleResult r = unpickle(p, "dup");
  EXPECT_EQ(r.tensors.size(), 4u);
  std::vector<DictNode> dicts = tensorDicts(r);
  ASSERT_EQ(dicts.size(), 1u);
  ASSERT_EQ(dicts[0].tensors.size(), 2u);
  EXPECT_EQ(dicts[0].tensors[0].first, "w");
  EXPECT_EQ(dicts[0].tensors[0].second->storage_key, "1");
  EXPECT_EQ(dicts[0].tensors[1].first, "x");
  EXPECT_EQ(dicts[0].tensors[1].second->storage_key, "2");
}

TEST(PickleWalker, StorageDtypes) {
  EXPECT_EQ(storageDtype("torch.BFloat16Storage"), c10::kBFloat16);
  EXPECT_EQ(storageDtype("torch.LongStorage"), c10::kLong);
  EXPECT_EQ(storageDtype("torch.QUInt8Storage"), c10::ScalarType::Undefined);
}

TEST(PickleWalker, CleanErrors) {
  for (const std::string& bad :
       {std::string(), op({0x80, 2}), op({0x80, 9, '.'}), op({0x80, 2, 'h', 5, '.'}),
        op({0x80, 2, 't', '.'}), op({0x80, 2, 'K', 1, 'K', 2, '.'}), op({0x80, 2, 0xff, '.'}),
        op({0x80, 2, 'X', 0xff, 0xff, 0xff, 0x7f}), op({0x80, 2, 's', '.'})}) {
    try {
      unpickle(bad, "bad.pkl");
      ADD_FAILURE() << "accepted " << ::testing::PrintToString(bad);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
      EXPECT_NE(std::string(e.what()).find("bad.pkl: byte "), std::string::npos) << e.what();
    }
  }
}

TEST(PickleWalker, DeepNestingAndCyclesDoNotCrash) {
  // 2,000,000 nested lists: "]" pushes, "a" appends the top into the one below.
  std::string deep = op({0x80, 2});
  const int n = 2000000;
  deep += std::string(n, ']');
  deep += std::string(n - 1, 'a');
  deep += ".";
  EXPECT_NO_THROW(unpickle(deep, "deep"));
  // A list that contains itself.
  EXPECT_NO_THROW(unpickle(op({0x80, 2, ']', 'q', 0, 'h', 0, 'a', '.'}), "cycle"));
}

TEST(PickleWalker, DroppedDeepValuesAndCyclesAreFreedWithoutRecursion) {
  // A value 1,000,000 tuples deep (TUPLE1 repeated), dropped by POP, by an error (REDUCE with
  // a non-tuple argument) and by a replaced memo entry: freed in a loop, not one stack frame
  // per level (found by tests/fuzz/fuzz_checkpoint: stack overflow).
  const std::string deep = op({0x80, 2, 'N'}) + std::string(1000000, char(0x85));
  EXPECT_NO_THROW(unpickle(deep + "0N.", "pop"));
  EXPECT_THROW(unpickle(deep + "NR.", "error"), Error);
  EXPECT_NO_THROW(unpickle(deep + op({'q', 0, '0', 'N', 'q', 0, '.'}), "memo"));
  // Cycles that become garbage (a list appended to itself, then popped; a dict holding
  // itself whose memo entry is replaced): cut, so LeakSanitizer finds nothing.
  EXPECT_NO_THROW(unpickle(op({0x80, 2, ']', 'q', 0, 'h', 0, 'a', '0', 'N', '.'}), "cycle"));
  EXPECT_NO_THROW(
      unpickle(op({0x80, 2, '}', 'q', 0, 'h', 0, 'h', 0, 's', '0', 'N', 'q', 0, '.'}),
               "memo cycle"));
  // The result itself is intact when garbage around it was cut.
  const UnpickleResult r =
      unpickle(op({0x80, 2, ']', 'q', 0, 'h', 0, 'a', '0', ']', 'K', 7, 'a', '.'}), "kept");
  ASSERT_EQ(r.root->kind, PickleValue::Kind::kList);
  ASSERT_EQ(r.root->items.size(), 1u);
  EXPECT_EQ(r.root->items[0]->int_value, 7);
}

TEST(PickleWalker, FuzzedCopiesGiveCleanErrors) {
  const std::string pkl = dataPkl(sampleCheckpoint()) + handWritten();  // trailing bytes ignored
  std::mt19937 rng(1234);
  int parsed = 0, rejected = 0;
  for (int i = 0; i < 400; ++i) {
    std::string m = pkl;
    if (i % 2 == 0) {
      m.resize(rng() % m.size());
    } else {
      for (int k = 0; k < 1 + int(rng() % 4); ++k) m[rng() % m.size()] ^= char(1u << (rng() % 8));
    }
    try {
      UnpickleResult r = unpickle(m, "fuzz");
      tensorDicts(r);
      ++parsed;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 200);
  EXPECT_EQ(parsed + rejected, 400);
}

}  // namespace
}  // namespace bnadapt::torchfile
