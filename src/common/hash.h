// A 64-bit FNV-1a content hash, for comparing what ranks loaded (not for security), and the
// splitmix64 mixer behind the tool's seeded streams.
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

// splitmix64's output function: a well-mixed 64-bit value from a counter-based state.
inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The golden-ratio increment between splitmix64 states.
inline constexpr uint64_t kSplitmixStep = 0x9E3779B97F4A7C15ULL;

}  // namespace bnadapt
