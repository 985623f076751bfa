// A 64-bit FNV-1a content hash, for comparing what ranks loaded (not for security).
#pragma once

#include <cstddef>
#include <cstdint>

namespace bnadapt {

class Fnv1a {
 public:
  void update(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) {
      h_ ^= p[i];
      h_ *= 0x100000001b3ULL;
    }
  }
  uint64_t digest() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

}  // namespace bnadapt
