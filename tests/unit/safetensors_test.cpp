#include "checkpoint/safetensors.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

using OrderedJson = nlohmann::ordered_json;

const char kPath[] = "ckpt/model.safetensors";

std::string lengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file from a literal header and data buffer.
std::string rawFile(const std::string& header, const std::string& data = "") {
  return lengthPrefix(header.size()) + header + data;
}

struct Spec {
  std::string key;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string data;  // the tensor's bytes
};

// A small safetensors writer: tensors in the given order, each aligned to 8 bytes in the data
// buffer with 0xA5 filler between them, header padded with spaces to a multiple of 8.
std::string writeFile(const std::vector<Spec>& specs, const OrderedJson& metadata = nullptr) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string data;
  for (const Spec& s : specs) {
    while (data.size() % 8 != 0) data.push_back(static_cast<char>(0xA5));
    const uint64_t begin = data.size();
    data += s.data;
    header[s.key] = {
        {"dtype", s.dtype}, {"shape", s.shape}, {"data_offsets", {begin, data.size()}}};
  }
  data += std::string(5, static_cast<char>(0xA5));  // trailing bytes after the last tensor
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  return rawFile(text, data);
}

template <typename T>
std::string bytesOf(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

uint64_t headerEnd(const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  return 8 + n;
}

// The entry's bytes decoded as a tensor of `type` (copied out of the file).
at::Tensor decode(const SafetensorsFile& f, const std::string& key, c10::ScalarType type) {
  const SafetensorsEntry* e = f.find(key);
  EXPECT_NE(e, nullptr) << key;
  if (e == nullptr) return at::Tensor();
  std::string copy = f.bytes().substr(e->begin, e->end - e->begin);
  return at::from_blob(copy.data(), e->shape, at::TensorOptions().dtype(type)).clone();
}

// Every byte outside the entries named in `changed` is as in `original`.
void expectOnlyChanged(const std::string& original, const SafetensorsFile& f,
                       const std::vector<std::string>& changed) {
  ASSERT_EQ(original.size(), f.bytes().size());
  std::vector<bool> may_change(original.size(), false);
  for (const std::string& key : changed) {
    const SafetensorsEntry* e = f.find(key);
    ASSERT_NE(e, nullptr) << key;
    for (uint64_t i = e->begin; i < e->end; ++i) may_change[i] = true;
  }
  for (size_t i = 0; i < original.size(); ++i) {
    if (!may_change[i]) {
      ASSERT_EQ(original[i], f.bytes()[i]) << "byte " << i << " changed";
    }
  }
  EXPECT_EQ(original.substr(0, headerEnd(original)), f.bytes().substr(0, headerEnd(original)));
}

// The standard test file: one tensor of each patchable dtype plus an opaque U8 one.
std::vector<Spec> standardSpecs() {
  return {
      {"bn.running_mean", "F32", {4}, bytesOf(std::vector<float>{1, 2, 3, 4})},
      {"bn.running_var", "F16", {3}, std::string(6, '\x11')},
      {"bn.num_batches_tracked", "I64", {}, bytesOf(std::vector<int64_t>{7})},
      {"bn2.running_var", "BF16", {2, 3}, std::string(12, '\x22')},
      {"bn2.running_mean", "F64", {2}, bytesOf(std::vector<double>{0.5, -0.5})},
      {"bn2.num_batches_tracked", "I32", {1}, bytesOf(std::vector<int32_t>{3})},
      {"mask", "U8", {3}, "\x01\x02\x03"},
  };
}

void expectCheckpointError(const std::string& file, const std::string& needle) {
  try {
    SafetensorsFile::parse(file, kPath);
    ADD_FAILURE() << "accepted; expected an error containing: " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCheckpoint) << e.what();
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(std::string(kPath) + ": ", 0), 0u) << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "'" << needle << "' not in: " << what;
  }
}

void expectPatchError(SafetensorsFile& f, const std::string& key, const at::Tensor& values,
                      const std::string& needle) {
  const std::string before = f.bytes();
  try {
    f.patch(key, values);
    ADD_FAILURE() << key << " patched; expected an error containing: " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCheckpoint) << e.what();
    const std::string what = e.what();
    EXPECT_NE(what.find("'" + key + "'"), std::string::npos) << what;
    EXPECT_NE(what.find(kPath), std::string::npos) << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "'" << needle << "' not in: " << what;
  }
  EXPECT_EQ(before, f.bytes()) << "a failed patch changed bytes";
}

TEST(Safetensors, ParsesEntriesInHeaderOrderWithAbsoluteOffsets) {
  const std::string file = writeFile(standardSpecs(), {{"format", "pt"}, {"step", "100"}});
  const SafetensorsFile f = SafetensorsFile::parse(file, kPath);
  const uint64_t data_start = headerEnd(file);
  EXPECT_EQ(data_start % 8, 0u);

  const std::vector<Spec> specs = standardSpecs();
  ASSERT_EQ(f.entries().size(), specs.size());
  uint64_t rel = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const SafetensorsEntry& e = f.entries()[i];
    while (rel % 8 != 0) ++rel;
    EXPECT_EQ(e.key, specs[i].key);
    EXPECT_EQ(e.dtype, specs[i].dtype);
    EXPECT_EQ(e.shape, specs[i].shape);
    EXPECT_EQ(e.begin, data_start + rel) << e.key;
    EXPECT_EQ(e.end, data_start + rel + specs[i].data.size()) << e.key;
    EXPECT_EQ(file.substr(e.begin, e.end - e.begin), specs[i].data) << e.key;
    EXPECT_EQ(f.find(e.key), &e);
    rel += specs[i].data.size();
  }
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_EQ(f.find("__metadata__"), nullptr);
  EXPECT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata().at("step"), "100");
  EXPECT_EQ(f.bytes(), file);
}

TEST(Safetensors, AcceptsEdgeCases) {
  // Empty header, no data.
  EXPECT_TRUE(SafetensorsFile::parse(rawFile("{}"), kPath).entries().empty());
  // Header padded with spaces, null metadata, unknown fields (ignored, even nested), scalar and
  // empty tensors (two empty ones at one offset, one inside another tensor's range),
  // and an opaque dtype whose size we do not know.
  const std::string header =
      R"({"__metadata__": null,)"
      R"( "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4], "extra": {"a": [1, [2]]}},)"
      R"( "e1": {"dtype": "F32", "shape": [0, 5], "data_offsets": [2, 2]},)"
      R"( "e2": {"dtype": "I64", "shape": [3, 0], "data_offsets": [2, 2], "note": -1},)"
      R"( "q": {"dtype": "F4", "shape": [7], "data_offsets": [4, 8]}}   )";
  const SafetensorsFile f = SafetensorsFile::parse(rawFile(header, std::string(8, '\0')), kPath);
  ASSERT_EQ(f.entries().size(), 4u);
  EXPECT_EQ(f.entries()[0].key, "s");
  EXPECT_TRUE(f.entries()[0].shape.empty());
  EXPECT_EQ(f.entries()[3].dtype, "F4");
  EXPECT_TRUE(f.metadata().empty());
}

TEST(Safetensors, PatchesEachFloatingDtype) {
  const std::string file = writeFile(standardSpecs());
  SafetensorsFile f = SafetensorsFile::parse(file, kPath);

  const at::Tensor mean = at::tensor({0.25, -1.5, 3.0e-8, 1.0e10}, at::kDouble);
  f.patch("bn.running_mean", mean);
  EXPECT_TRUE(at::equal(decode(f, "bn.running_mean", at::kFloat), mean.to(at::kFloat)));

  const at::Tensor var = at::tensor({1.0f / 3, 2.5f, 60000.0f});
  f.patch("bn.running_var", var);
  EXPECT_TRUE(at::equal(decode(f, "bn.running_var", at::kHalf), var.to(at::kHalf)));

  const at::Tensor var2 = at::linspace(0.1, 7.3, 6, at::kFloat).reshape({2, 3});
  f.patch("bn2.running_var", var2);
  EXPECT_TRUE(at::equal(decode(f, "bn2.running_var", at::kBFloat16), var2.to(at::kBFloat16)));

  const at::Tensor mean2 = at::tensor({0.1f, -0.2f});
  f.patch("bn2.running_mean", mean2);
  EXPECT_TRUE(at::equal(decode(f, "bn2.running_mean", at::kDouble), mean2.to(at::kDouble)));

  expectOnlyChanged(file, f,
                    {"bn.running_mean", "bn.running_var", "bn2.running_var", "bn2.running_mean"});
  // Untouched tensors keep their values.
  EXPECT_EQ(decode(f, "bn.num_batches_tracked", at::kLong).item<int64_t>(), 7);
}

TEST(Safetensors, PatchesIntegerDtypes) {
  const std::string file = writeFile(standardSpecs());
  SafetensorsFile f = SafetensorsFile::parse(file, kPath);
  f.patch("bn.num_batches_tracked", at::tensor({int32_t{123456}}).reshape({}));
  EXPECT_EQ(decode(f, "bn.num_batches_tracked", at::kLong).item<int64_t>(), 123456);
  f.patch("bn.num_batches_tracked", at::tensor({int64_t{1} << 40}).reshape({}));
  EXPECT_EQ(decode(f, "bn.num_batches_tracked", at::kLong).item<int64_t>(), int64_t{1} << 40);
  f.patch("bn2.num_batches_tracked", at::tensor({int64_t{-42}}));
  EXPECT_EQ(decode(f, "bn2.num_batches_tracked", at::kInt).item<int32_t>(), -42);
  expectOnlyChanged(file, f, {"bn.num_batches_tracked", "bn2.num_batches_tracked"});
}

TEST(Safetensors, PatchAcceptsNonContiguousValuesOfAnyShapeWithTheSameNumel) {
  const std::string file = writeFile(standardSpecs());
  SafetensorsFile f = SafetensorsFile::parse(file, kPath);
  // A transposed [3, 2] view into the [2, 3] entry: written in the view's logical order.
  const at::Tensor base = at::arange(6, at::kFloat).reshape({2, 3});
  const at::Tensor view = base.t();
  ASSERT_FALSE(view.is_contiguous());
  f.patch("bn2.running_var", view);
  EXPECT_TRUE(at::equal(decode(f, "bn2.running_var", at::kBFloat16).flatten(),
                        view.contiguous().flatten().to(at::kBFloat16)));
  // A strided slice of doubles into the F32 [4] entry.
  const at::Tensor strided = at::arange(8, at::kDouble).slice(0, 0, 8, 2);
  ASSERT_FALSE(strided.is_contiguous());
  f.patch("bn.running_mean", strided);
  EXPECT_TRUE(at::equal(decode(f, "bn.running_mean", at::kFloat),
                        at::tensor({0.0f, 2.0f, 4.0f, 6.0f})));
  expectOnlyChanged(file, f, {"bn2.running_var", "bn.running_mean"});
}

TEST(Safetensors, PatchErrorsNameTheKeyAndChangeNothing) {
  SafetensorsFile f = SafetensorsFile::parse(writeFile(standardSpecs()), kPath);
  expectPatchError(f, "bn.missing", at::zeros({4}), "no tensor");
  expectPatchError(f, "bn.running_mean", at::zeros({3}), "expected shape [4], got [3]");
  expectPatchError(f, "bn2.running_var", at::zeros({7}), "expected shape [2, 3], got [7]");
  expectPatchError(f, "mask", at::zeros({3}), "stored as U8");
  expectPatchError(f, "bn.running_mean", at::zeros({4}, at::kLong), "floating-point values");
  expectPatchError(f, "bn.num_batches_tracked", at::zeros({}, at::kFloat), "integer values");
  expectPatchError(f, "bn.num_batches_tracked", at::zeros({}, at::kBool), "integer values");
  expectPatchError(f, "bn.running_var", at::tensor({1.0f, 70000.0f, 2.0f}), "out of the range");
  expectPatchError(f, "bn2.num_batches_tracked", at::tensor({int64_t{1} << 31}),
                   "out of the range");
  // Non-finite values that were already non-finite are the caller's business.
  f.patch("bn.running_var", at::tensor({1.0f, INFINITY, NAN}));
  EXPECT_TRUE(std::isinf(decode(f, "bn.running_var", at::kHalf)[1].item<float>()));

  SafetensorsFile opaque = SafetensorsFile::parse(
      rawFile(R"({"q": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})",
              std::string(4, '\0')),
      kPath);
  expectPatchError(opaque, "q", at::zeros({4}), "cannot be written");
}

struct BadCase {
  const char* name;
  std::string file;
  const char* needle;
};

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string data(16, '\0');
  auto one = [&](const std::string& entry) { return rawFile("{\"t\": " + entry + "}", data); };
  const std::vector<BadCase> cases = {
      {"empty", "", "shorter than the 8-byte"},
      {"7 bytes", std::string(7, '\0'), "shorter than the 8-byte"},
      {"header beyond file", lengthPrefix(100) + "{}", "beyond the end of the file"},
      {"header over 100 MB", lengthPrefix(100000001) + "{}", "exceeds the limit"},
      {"header length 2^64-1", std::string(8, '\xff'), "exceeds the limit"},
      {"not JSON", rawFile("{not json}"), "header: invalid JSON at byte"},
      {"truncated JSON", rawFile(R"({"t": {"dtype": "F32")"), "invalid JSON"},
      {"trailing garbage", rawFile("{} x"), "invalid JSON"},
      {"invalid UTF-8", rawFile("{\"\xff\": 1}"), "invalid JSON"},
      {"NUL in header", rawFile(std::string("{}\0", 3)), "invalid JSON"},
      {"empty header", rawFile(""), "invalid JSON"},
      {"array header", rawFile("[1, 2]"), "not a JSON object"},
      {"string header", rawFile("\"x\""), "not a JSON object"},
      {"number header", rawFile("42"), "not a JSON object"},
      {"entry not object", one("[0, 4]"), "tensor 't' must be an object"},
      {"entry is string", one("\"F32\""), "tensor 't' must be an object"},
      {"missing dtype", one(R"({"shape": [1], "data_offsets": [0, 4]})"), "no \"dtype\""},
      {"missing shape", one(R"({"dtype": "F32", "data_offsets": [0, 4]})"), "no \"shape\""},
      {"missing offsets", one(R"({"dtype": "F32", "shape": [1]})"), "no \"data_offsets\""},
      {"dtype number", one(R"({"dtype": 5, "shape": [1], "data_offsets": [0, 4]})"),
       "\"dtype\" must be a string"},
      {"dtype array", one(R"({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]})"),
       "\"dtype\" must be a string"},
      {"shape string", one(R"({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]})"),
       "\"shape\" must be an array"},
      {"shape float", one(R"({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]})"),
       "\"shape\" must hold non-negative integers"},
      {"shape nested", one(R"({"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]})"),
       "\"shape\" must hold"},
      {"shape object", one(R"({"dtype": "F32", "shape": {}, "data_offsets": [0, 4]})"),
       "\"shape\" must be an array"},
      {"negative dim", one(R"({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})"),
       "negative dimension"},
      {"dim too large",
       one(R"({"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 4]})"),
       "too large"},
      {"offsets one", one(R"({"dtype": "F32", "shape": [1], "data_offsets": [4]})"),
       "must hold 2 integers"},
      {"offsets three", one(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]})"),
       "must hold 2 integers"},
      {"offsets strings", one(R"({"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]})"),
       "must hold non-negative integers"},
      {"offsets negative", one(R"({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]})"),
       "negative \"data_offsets\""},
      {"offsets reversed", one(R"({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]})"),
       "end before they begin"},
      {"offsets beyond data", one(R"({"dtype": "F32", "shape": [2], "data_offsets": [12, 20]})"),
       "beyond the data buffer (16 bytes)"},
      {"offsets huge",
       one(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]})"),
       "beyond the data buffer"},
      {"size mismatch", one(R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]})"),
       "needs 8 bytes, but data_offsets [0, 4] hold 4"},
      {"size mismatch BF16", one(R"({"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 4]})"),
       "needs 8 bytes"},
      {"numel overflow",
       one(R"({"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]})"),
       "more than 2^64"},
      {"opaque numel overflow",
       one(R"({"dtype": "XX", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]})"),
       "too many elements"},
      {"overlap",
       rawFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
               R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
               data),
       "'a' and 'b' overlap"},
      {"same range",
       rawFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},)"
               R"( "b": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]}})",
               data),
       "overlap"},
      {"duplicate tensor",
       rawFile(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
               R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
               data),
       "duplicate key 'a'"},
      {"duplicate field",
       one(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "dtype": "I32"})"),
       "duplicate key 't.dtype'"},
      {"metadata array", rawFile(R"({"__metadata__": ["a"]})"), "\"__metadata__\" must be"},
      {"metadata value number", rawFile(R"({"__metadata__": {"a": 1}})"), "must be a string"},
      {"metadata value object", rawFile(R"({"__metadata__": {"a": {}}})"), "must be a string"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    expectCheckpointError(c.file, c.needle);
  }
}

TEST(Safetensors, SurvivesTruncationAndBitFlips) {
  const std::string valid = writeFile(standardSpecs(), {{"format", "pt"}});
  const uint64_t header_end = headerEnd(valid);
  std::mt19937_64 rng(20240611);
  int parsed = 0, rejected = 0;
  for (int iteration = 0; iteration < 300; ++iteration) {
    std::string file = valid;
    if (iteration % 3 == 0) {
      file.resize(std::uniform_int_distribution<size_t>(0, valid.size() - 1)(rng));
    } else {
      // Mostly in the length and header, where the structure is.
      const int flips = 1 + iteration % 4;
      for (int k = 0; k < flips; ++k) {
        const size_t limit = (iteration % 5 == 0) ? valid.size() : header_end;
        const size_t pos = std::uniform_int_distribution<size_t>(0, limit - 1)(rng);
        file[pos] = static_cast<char>(file[pos] ^ (1 << (rng() % 8)));
      }
    }
    try {
      SafetensorsFile f = SafetensorsFile::parse(file, kPath);
      ++parsed;
      for (const SafetensorsEntry& e : f.entries()) {
        ASSERT_LE(e.begin, e.end);
        ASSERT_LE(e.end, file.size());
        ASSERT_GE(e.begin, 8u);
        int64_t numel = 1;
        for (int64_t d : e.shape) numel *= d;
        if (numel > 1000) continue;
        try {
          f.patch(e.key, at::zeros({numel}, at::kDouble));
        } catch (const Error& err) {
          EXPECT_EQ(err.code(), ExitCode::kCheckpoint) << err.what();
        }
      }
      EXPECT_EQ(f.bytes().substr(0, header_end < file.size() ? header_end : file.size()),
                file.substr(0, header_end < file.size() ? header_end : file.size()));
    } catch (const Error& e) {
      ++rejected;
      EXPECT_EQ(e.code(), ExitCode::kCheckpoint) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind(std::string(kPath) + ": ", 0), 0u) << e.what();
    }
  }
  EXPECT_EQ(parsed + rejected, 300);
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace bnadapt::checkpoint
