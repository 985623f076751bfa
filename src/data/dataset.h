// Calibration data: samples addressed by global index.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace bnadapt::data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual std::vector<int64_t> sampleShape() const = 0;
  // Samples [begin, end) stacked into one floating-point tensor [end - begin, ...].
  virtual at::Tensor batch(int64_t begin, int64_t end) const = 0;
  virtual std::string describe() const = 0;
  // Identifies the samples' values, for checking that all ranks read the same data.
  virtual uint64_t contentHash() const = 0;
};

// A file written by Python torch.save(tensor [N, ...]) or torch.save({"inputs": tensor, ...}).
std::unique_ptr<Dataset> openTensorFile(const std::string& path);

// Seeded standard-normal samples of `sample_shape`; sample i depends only on (seed, i).
std::unique_ptr<Dataset> makeSynthetic(std::vector<int64_t> sample_shape, int64_t size,
                                       uint64_t seed);

// "synthetic" -> makeSynthetic(sample_shape, synthetic_size, seed), else openTensorFile.
// When sample_shape is given, the data's sample shape must equal it (kData otherwise).
std::unique_ptr<Dataset> openDataset(const std::string& path,
                                     const std::vector<int64_t>& sample_shape,
                                     int64_t synthetic_size, uint64_t seed);

std::string shapeString(const std::vector<int64_t>& shape);

}  // namespace bnadapt::data
