#include "data/dataset.h"

#include <ATen/ATen.h>
#include <torch/serialize.h>

#include "common/error.h"
#include "common/hash.h"
#include "io/files.h"

namespace bnadapt::data {
namespace {

class TensorDataset final : public Dataset {
 public:
  TensorDataset(std::string path, at::Tensor inputs)
      : path_(std::move(path)), inputs_(std::move(inputs)) {}
  int64_t size() const override { return inputs_.size(0); }
  std::vector<int64_t> sampleShape() const override {
    auto s = inputs_.sizes().vec();
    s.erase(s.begin());
    return s;
  }
  at::Tensor batch(int64_t begin, int64_t end) const override {
    return inputs_.slice(0, begin, end).contiguous();
  }
  std::string describe() const override {
    return "tensor file " + path_ + " " + shapeString(inputs_.sizes().vec()) + " " +
           std::string(c10::toString(inputs_.scalar_type()));
  }
  uint64_t contentHash() const override {
    Fnv1a hash;
    hash.update(inputs_.data_ptr(), inputs_.numel() * inputs_.element_size());
    return hash.digest();
  }

 private:
  std::string path_;
  at::Tensor inputs_;
};

class SyntheticDataset final : public Dataset {
 public:
  SyntheticDataset(std::vector<int64_t> shape, int64_t size, uint64_t seed)
      : shape_(std::move(shape)), size_(size), seed_(seed) {}
  int64_t size() const override { return size_; }
  std::vector<int64_t> sampleShape() const override { return shape_; }
  at::Tensor batch(int64_t begin, int64_t end) const override {
    std::vector<int64_t> shape = shape_;
    shape.insert(shape.begin(), end - begin);
    at::Tensor out = at::empty(shape, at::kFloat);
    for (int64_t i = begin; i < end; ++i) {
      // splitmix64 of (seed, i): independent streams per sample, whatever the sharding.
      uint64_t z = seed_ + 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(i + 1);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      z ^= z >> 31;
      at::Generator gen = at::detail::createCPUGenerator(z);
      out[i - begin].normal_(0.0, 1.0, gen);
    }
    return out;
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

const char* kExpectedData =
    "expected a file written by torch.save(tensor) or torch.save({\"inputs\": tensor, ...}) "
    "with a plain dict";

}  // namespace

std::string shapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::unique_ptr<Dataset> openTensorFile(const std::string& path) {
  const std::vector<char> bytes = io::readFile(path, "data file", ExitCode::kData);
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    if (why.find("GenericDict") != std::string::npos) {
      why += " (an OrderedDict? save a plain dict instead)";
    }
    fail(ExitCode::kData, "data file '", path, "' cannot be read: ", why, "; ", kExpectedData);
  }
  at::Tensor inputs;
  if (value.isTensor()) {
    inputs = value.toTensor();
  } else if (value.isGenericDict()) {
    auto dict = value.toGenericDict();
    auto it = dict.find(c10::IValue("inputs"));
    BNA_CHECK(it != dict.end(), ExitCode::kData, "data file '", path,
              "' holds a dict without an \"inputs\" key; ", kExpectedData);
    BNA_CHECK(it->value().isTensor(), ExitCode::kData, "data file '", path,
              "': \"inputs\" is a ", it->value().tagKind(), ", expected a tensor");
    inputs = it->value().toTensor();
  } else {
    fail(ExitCode::kData, "data file '", path, "' holds a ", value.tagKind(), "; ",
         kExpectedData);
  }
  BNA_CHECK(at::isFloatingType(inputs.scalar_type()), ExitCode::kData, "data file '", path,
            "': inputs have dtype ", inputs.scalar_type(), ", expected a floating-point tensor");
  BNA_CHECK(inputs.dim() >= 2, ExitCode::kData, "data file '", path, "': inputs have shape ",
            shapeString(inputs.sizes().vec()), ", expected [N, ...] with at least 2 dimensions");
  BNA_CHECK(inputs.size(0) > 0, ExitCode::kData, "data file '", path, "' holds no samples");
  return std::make_unique<TensorDataset>(path, inputs.contiguous());
}

std::unique_ptr<Dataset> makeSynthetic(std::vector<int64_t> sample_shape, int64_t size,
                                       uint64_t seed) {
  return std::make_unique<SyntheticDataset>(std::move(sample_shape), size, seed);
}

std::unique_ptr<Dataset> openDataset(const std::string& path,
                                     const std::vector<int64_t>& sample_shape,
                                     int64_t synthetic_size, uint64_t seed) {
  if (path == "synthetic") {
    BNA_CHECK(!sample_shape.empty(), ExitCode::kUsage,
              "--data synthetic needs the sample shape: set input_info.sample_size in the "
              "config, e.g. [1, 3, 224, 224]");
    return makeSynthetic(sample_shape, synthetic_size, seed);
  }
  auto ds = openTensorFile(path);
  BNA_CHECK(sample_shape.empty() || ds->sampleShape() == sample_shape, ExitCode::kData,
            "data file '", path, "' has samples of shape ", shapeString(ds->sampleShape()),
            " but input_info.sample_size expects ", shapeString(sample_shape),
            " (after the batch dimension)");
  return ds;
}

}  // namespace bnadapt::data
