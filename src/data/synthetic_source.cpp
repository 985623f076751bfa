// Synthetic data: seeded standard-normal samples of any shape, for smoke runs and benchmarks.
#include <ATen/ATen.h>

#include "common/hash.h"
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
    const uint64_t z = splitmix64(seed_ + kSplitmixStep * static_cast<uint64_t>(index + 1));
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
