#include "data/idx_file.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"

namespace bnadapt::data {
namespace {

namespace fs = std::filesystem;

using Bytes = std::vector<uint8_t>;

// An IDX file's bytes: magic, big-endian dims, then `payload` as given.
Bytes idxBytes(uint8_t type, const std::vector<uint32_t>& dims, const Bytes& payload) {
  Bytes b = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(d >> shift));
  }
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

Bytes iota(size_t n) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i);
  return b;
}

Bytes gzipBytes(const Bytes& raw) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  Bytes out(deflateBound(&zs, raw.size()) + 64);
  zs.next_in = const_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

class IdxFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "bnadapt_idx_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write(const std::string& name, const Bytes& bytes) {
    const std::string path = (fs::path(dir_) / name).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // Expects readIdx(path) to fail with kData and a message naming the file and holding
  // every one of `parts`.
  void expectDataError(const std::string& path, const std::vector<std::string>& parts,
                       uint64_t max_bytes = kMaxIdxPayloadBytes) {
    try {
      readIdx(path, max_bytes);
      ADD_FAILURE() << "readIdx(" << path << ") did not fail";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kData) << e.what();
      const std::string what = e.what();
      EXPECT_NE(what.find(path), std::string::npos) << what;
      for (const auto& part : parts) EXPECT_NE(what.find(part), std::string::npos) << what;
    }
  }

  std::string dir_;
};

TEST_F(IdxFileTest, ReadsRawAndGzipUbyte) {
  const Bytes file = idxBytes(kIdxUInt8, {3, 2, 2}, iota(12));
  for (const std::string& path : {write("a-idx3-ubyte", file), write("b.bin", gzipBytes(file))}) {
    SCOPED_TRACE(path);
    const IdxArray a = readIdx(path);
    EXPECT_EQ(a.type_code, kIdxUInt8);
    EXPECT_EQ(a.dims, (std::vector<int64_t>{3, 2, 2}));
    EXPECT_EQ(a.numel(), 12);
    EXPECT_EQ(a.items(), 3);
    EXPECT_EQ(a.itemNumel(), 4);
    EXPECT_EQ(a.bytes, iota(12));
    const std::vector<float> f = a.toFloat();
    ASSERT_EQ(f.size(), 12u);
    for (int i = 0; i < 12; ++i) EXPECT_EQ(f[i], static_cast<float>(i));
    float second[4];
    a.toFloat(1, 2, second);
    EXPECT_EQ(second[0], 4.0f);
    EXPECT_EQ(second[3], 7.0f);
  }
}

TEST_F(IdxFileTest, DecodesBigEndianTypes) {
  // int8 -2; int16 -300 = 0xFED4; int32 -70000 = 0xFFFEEE90; float 1.5 = 0x3FC00000;
  // double -0.25 = 0xBFD0000000000000.
  struct Case {
    uint8_t type;
    Bytes payload;
    double expected;
  };
  const std::vector<Case> cases = {
      {kIdxInt8, {0xFE}, -2.0},
      {kIdxInt16, {0xFE, 0xD4}, -300.0},
      {kIdxInt32, {0xFF, 0xFE, 0xEE, 0x90}, -70000.0},
      {kIdxFloat32, {0x3F, 0xC0, 0x00, 0x00}, 1.5},
      {kIdxFloat64, {0xBF, 0xD0, 0, 0, 0, 0, 0, 0}, -0.25},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(idxTypeName(c.type));
    Bytes payload = c.payload;
    payload.insert(payload.end(), c.payload.begin(), c.payload.end());  // two elements
    const IdxArray a = readIdx(write("t.idx", gzipBytes(idxBytes(c.type, {2}, payload))));
    EXPECT_EQ(a.type_code, c.type);
    EXPECT_EQ(a.elementSize(), c.payload.size());
    EXPECT_EQ(a.value(1), c.expected);
    EXPECT_EQ(a.toFloat(), (std::vector<float>{static_cast<float>(c.expected),
                                               static_cast<float>(c.expected)}));
  }
}

TEST_F(IdxFileTest, ReadsConcatenatedGzipMembers) {
  const Bytes file = idxBytes(kIdxUInt8, {5}, iota(5));
  Bytes gz = gzipBytes(Bytes(file.begin(), file.begin() + 6));
  const Bytes second = gzipBytes(Bytes(file.begin() + 6, file.end()));
  gz.insert(gz.end(), second.begin(), second.end());
  EXPECT_EQ(readIdx(write("cat.gz", gz)).bytes, iota(5));
}

TEST_F(IdxFileTest, RejectsBadMagic) {
  expectDataError(write("m1", {1, 0, 8, 1, 0, 0, 0, 1, 7}), {"not an IDX file"});
  expectDataError(write("m2", idxBytes(0x07, {1}, {7})), {"not an IDX file", "type 8"});
  expectDataError(write("m3", idxBytes(kIdxUInt8, {}, {})), {"0 dimensions"});
  expectDataError(write("m4", idxBytes(kIdxUInt8, {1, 1, 1, 1, 1}, {7})), {"5 dimensions"});
  expectDataError(write("m5", idxBytes(kIdxUInt8, {2, 0}, {})), {"dimension 1 is 0"});
}

TEST_F(IdxFileTest, RejectsEmptyAndShortFiles) {
  expectDataError(write("empty-idx3-ubyte", {}), {"empty"});
  expectDataError(write("short", {0, 0, 8}), {"3 bytes", "magic"});
  expectDataError(write("header", {0, 0, 8, 3, 0, 0, 0, 1, 0, 0}), {"header needs 16", "found 10"});
  expectDataError((fs::path(dir_) / "missing-idx3-ubyte").string(), {"cannot be read"});
}

TEST_F(IdxFileTest, RejectsTruncatedAndTrailingPayload) {
  const Bytes truncated = idxBytes(kIdxUInt8, {3, 2, 2}, iota(11));
  expectDataError(write("trunc", truncated), {"truncated", "need 12 payload bytes, found 11"});
  expectDataError(write("trunc.gz", gzipBytes(truncated)),
                  {"truncated", "gzip", "need 12 payload bytes, found 11"});
  const Bytes trailing = idxBytes(kIdxInt16, {3}, iota(7));
  expectDataError(write("long", trailing), {"too long", "need 6 payload bytes, found 7"});
  expectDataError(write("long.gz", gzipBytes(trailing)), {"too long", "found 7"});
}

TEST_F(IdxFileTest, RejectsCorruptGzip) {
  const Bytes file = idxBytes(kIdxUInt8, {64, 64}, Bytes(4096, 0));
  Bytes gz = gzipBytes(file);
  Bytes corrupt = gz;
  for (size_t i = 12; i < corrupt.size() - 8; ++i) corrupt[i] ^= 0x5A;
  expectDataError(write("corrupt.gz", corrupt), {"gzip"});
  Bytes bad_crc = gz;
  bad_crc[bad_crc.size() - 6] ^= 0xFF;  // CRC-32 in the trailer
  expectDataError(write("crc.gz", bad_crc), {"corrupt gzip data"});
  expectDataError(write("cut.gz", Bytes(gz.begin(), gz.end() - 12)), {"ends early"});
  Bytes garbage = gz;
  garbage.push_back(0);
  garbage.push_back(0);
  expectDataError(write("garbage.gz", garbage), {"2 bytes after the end of the gzip data"});
}

TEST_F(IdxFileTest, RejectsHeaderClaimingTooMuch) {
  // 65535^4 bytes: refused from the header, before any allocation.
  expectDataError(write("huge", idxBytes(kIdxUInt8, {65535, 65535, 65535, 65535}, {})),
                  {"exceed the limit"});
  EXPECT_NO_THROW(readIdx(write("ok", idxBytes(kIdxFloat64, {4, 4}, Bytes(128, 0))), 128));
  expectDataError(write("cap", idxBytes(kIdxFloat64, {4, 4}, Bytes(8, 0))),
                  {"dimensions 4 x 4 of double exceed the limit of 100"}, 100);
  expectDataError(write("big", idxBytes(kIdxUInt8, {8}, Bytes(200, 0))),
                  {"more than the limit of 120 bytes"}, 100);  // refused before reading
}

TEST_F(IdxFileTest, NamesAndLabelMatching) {
  EXPECT_TRUE(looksLikeIdxImages("/d/train-images-idx3-ubyte"));
  EXPECT_TRUE(looksLikeIdxImages("/d/train-images-idx3-ubyte.gz"));
  EXPECT_TRUE(looksLikeIdxImages("train-images.idx3-ubyte"));
  EXPECT_FALSE(looksLikeIdxImages("/d/train-labels-idx1-ubyte.gz"));
  EXPECT_FALSE(looksLikeIdxImages("/d/-idx3-ubyte"));
  EXPECT_FALSE(looksLikeIdxImages("/d/idx3-ubyte.gz"));
  EXPECT_FALSE(looksLikeIdxImages("/d/train.pt"));

  const Bytes labels = idxBytes(kIdxUInt8, {1}, {3});
  const std::string images = write("train-images-idx3-ubyte.gz", {});
  EXPECT_EQ(matchingIdxLabels(images), "");
  const std::string raw_labels = write("train-labels-idx1-ubyte", labels);
  EXPECT_EQ(matchingIdxLabels(images), raw_labels);  // the other compression
  const std::string gz_labels = write("train-labels-idx1-ubyte.gz", gzipBytes(labels));
  EXPECT_EQ(matchingIdxLabels(images), gz_labels);  // the images' own compression first
  EXPECT_EQ(matchingIdxLabels(write("train-images-idx3-ubyte", {})), raw_labels);
  // No "images" in the name: same prefix; a different separator is kept.
  const std::string calib = write("calib.idx3-ubyte", {});
  EXPECT_EQ(matchingIdxLabels(calib), "");
  const std::string calib_labels = write("calib.idx1-ubyte.gz", labels);
  EXPECT_EQ(matchingIdxLabels(calib), calib_labels);
  // "images" in a folder name is not replaced.
  fs::create_directory(fs::path(dir_) / "images");
  const std::string nested = write("images/x-idx3-ubyte", {});
  EXPECT_EQ(matchingIdxLabels(nested), "");
  fs::create_directory(fs::path(dir_) / "images" / "x-idx1-ubyte");  // a folder, not a file
  EXPECT_EQ(matchingIdxLabels(nested), "");
  EXPECT_EQ(matchingIdxLabels((fs::path(dir_) / "none.pt").string()), "");
}

TEST(IdxFileDataset, ReadsDebianFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  const std::string images = dir + "/t10k-images-idx3-ubyte.gz";
  struct stat st {};
  if (::stat(images.c_str(), &st) != 0) {
    GTEST_SKIP() << images << " not found (Debian package dataset-fashion-mnist)";
  }
  ASSERT_TRUE(looksLikeIdxImages(images));
  const IdxArray x = readIdx(images);
  EXPECT_EQ(x.type_code, kIdxUInt8);
  EXPECT_EQ(x.dims, (std::vector<int64_t>{10000, 28, 28}));
  const std::string labels_path = matchingIdxLabels(images);
  EXPECT_EQ(labels_path, dir + "/t10k-labels-idx1-ubyte.gz");
  const IdxArray y = readIdx(labels_path);
  EXPECT_EQ(y.dims, (std::vector<int64_t>{10000}));
  std::vector<int> counts(10, 0);
  for (uint8_t label : y.bytes) {
    ASSERT_LT(label, 10);
    ++counts[label];
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c], 1000) << "class " << c;  // balanced test set
}

}  // namespace
}  // namespace bnadapt::data
