// SHA-256 (FIPS 180-4), for recording what the tool read and wrote.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace bnadapt::io {

// Incremental SHA-256. hexDigest() finalises: later calls return the same digest, and a later
// update() is an internal error.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  // Lower-case hex, 64 characters.
  std::string hexDigest();

 private:
  void compress(const unsigned char* block);

  std::array<uint32_t, 8> state_;
  std::array<unsigned char, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
  std::string digest_;
};

std::string sha256Hex(const void* data, size_t size);

// Hashes a file, streamed in 1 MiB chunks. An unreadable file fails with kOutput, naming it.
std::string sha256FileHex(const std::string& path);

}  // namespace bnadapt::io
