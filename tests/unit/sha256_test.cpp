#include "io/sha256.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

#include "common/error.h"

namespace bnadapt::io {
namespace {

std::string hashOf(const std::string& s) { return sha256Hex(s.data(), s.size()); }

// A temp file removed at scope exit.
class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/sha256_test_XXXXXX";
    const int fd = mkstemp(path_.data());
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    close(fd);
    std::ofstream out(path_, std::ios::binary);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    if (!out) throw std::runtime_error("cannot write " + path_);
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The digest coreutils' sha256sum prints for `path`.
std::string sha256sum(const std::string& path) {
  const std::string command = "sha256sum '" + path + "'";
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "popen failed";
  char digest[65] = {};
  const size_t n = std::fread(digest, 1, 64, pipe);
  pclose(pipe);
  return std::string(digest, n);
}

TEST(Sha256, FipsVectors) {
  EXPECT_EQ(hashOf(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hashOf("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hashOf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hashOf("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnop"
                   "qklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(hashOf(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, MillionAInUnevenChunks) {
  const std::string block(997, 'a');
  Sha256 h;
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, block.size());
    h.update(block.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.hexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, EverySplitPointMatchesOneShot) {
  std::string message(200, '\0');
  for (size_t i = 0; i < message.size(); ++i) message[i] = static_cast<char>((i * 37 + 11) & 0xff);
  const std::string expected = hashOf(message);
  for (size_t split = 0; split <= message.size(); ++split) {
    Sha256 h;
    h.update(message.data(), split);
    h.update(message.data() + split, message.size() - split);
    EXPECT_EQ(h.hexDigest(), expected) << "split at " << split;
  }
  Sha256 bytewise;
  for (char c : message) bytewise.update(&c, 1);
  EXPECT_EQ(bytewise.hexDigest(), expected);
}

TEST(Sha256, PaddingBoundariesMatchSha256sum) {
  // Lengths around the 55/56/64-byte padding boundaries of one and two blocks.
  for (size_t len = 0; len <= 130; ++len) {
    std::string message(len, '\0');
    for (size_t i = 0; i < len; ++i) message[i] = static_cast<char>((i * 131 + len) & 0xff);
    TempFile file(message);
    EXPECT_EQ(hashOf(message), sha256sum(file.path())) << "length " << len;
  }
}

TEST(Sha256, DigestIsFinalAndRepeatable) {
  Sha256 h;
  h.update("abc", 3);
  const std::string first = h.hexDigest();
  EXPECT_EQ(h.hexDigest(), first);
  EXPECT_EQ(first.size(), 64u);
  try {
    h.update("d", 1);
    ADD_FAILURE() << "update after hexDigest was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInternal);
  }
}

TEST(Sha256, FileMatchesSha256sum) {
  // Crosses the 1 MiB read chunk: 3 MiB + 17 bytes.
  std::string contents((size_t{3} << 20) + 17, '\0');
  uint32_t x = 12345;
  for (char& c : contents) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  TempFile file(contents);
  const std::string expected = sha256sum(file.path());
  ASSERT_EQ(expected.size(), 64u);
  EXPECT_EQ(sha256FileHex(file.path()), expected);
  EXPECT_EQ(hashOf(contents), expected);

  TempFile empty("");
  EXPECT_EQ(sha256FileHex(empty.path()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, UnreadableFileIsAnOutputError) {
  for (const std::string& path : {std::string("/nonexistent/sha256_test/file.bin"),
                                 std::string("/")}) {
    try {
      sha256FileHex(path);
      ADD_FAILURE() << path << " was hashed";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kOutput);
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace bnadapt::io
