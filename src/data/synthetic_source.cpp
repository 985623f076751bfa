// Synthetic data: seeded standard-normal samples of any shape, for smoke runs and benchmarks.
#include <ATen/ATen.h>

#include "data/sources.h"

namespace bnadapt::data {
namespace {

class SyntheticDataset final : public Dataset {
 public:
  SyntheticDataset(std::vector<int64_t> shape, int64_t size, uint64_t seed)
      : shape_(std::move(shape)), size_(size), seed_(seed) {}
  int64_t size() const override { return size_; }
  std::vector<int64_t> sampleShape() const override { return shape_; }

  int64_t read(int64_t index, void* out) const override {
    // splitmix64 of (seed, index): an independent stream per sample, whatever the sharding.
    uint64_t z = seed_ + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(index + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    at::Generator gen = at::detail::createCPUGenerator(z);
    at::from_blob(out, shape_, at::kFloat).normal_(0.0, 1.0, gen);
    return -1;
  }
  std::string sampleName(int64_t index) const override {
    return "synthetic[" + std::to_string(index) + "]";
  }
  std::string describe() const override {
    return "synthetic N(0,1) " + shapeString(shape_) + " x " + std::to_string(size_) +
           " (seed " + std::to_string(seed_) + ")";
  }
  uint64_t contentHash() const override { return seed_; }  // shape and size are checked too

 private:
  std::vector<int64_t> shape_;
  int64_t size_;
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<Dataset> makeSynthetic(std::vector<int64_t> sample_shape, int64_t size,
                                       uint64_t seed) {
  return std::make_unique<SyntheticDataset>(std::move(sample_shape), size, seed);
}

}  // namespace bnadapt::data
