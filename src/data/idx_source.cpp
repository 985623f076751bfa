// MNIST-format data: an IDX images file [N, H, W] (raw or gzip) read whole (MNIST-sized data
// sets are small), with labels from the matching IDX labels file when there is one.
#include "common/error.h"
#include "common/hash.h"
#include "data/idx_file.h"
#include "data/sources.h"

namespace bnadapt::data {
namespace {

class IdxDataset final : public Dataset {
 public:
  IdxDataset(std::string path, IdxArray images, std::string labels_path,
             std::vector<int64_t> labels, float mean, float std)
      : path_(std::move(path)),
        images_(std::move(images)),
        labels_path_(std::move(labels_path)),
        labels_(std::move(labels)),
        scale_(images_.type_code == kIdxUInt8 ? 1.0f / 255.0f : 1.0f),
        mean_(mean),
        std_(std) {}

  int64_t size() const override { return images_.items(); }
  std::vector<int64_t> sampleShape() const override {
    return {1, images_.dims[1], images_.dims[2]};
  }
  bool hasLabels() const override { return !labels_.empty(); }

  int64_t read(int64_t index, void* out) const override {
    auto* dst = static_cast<float*>(out);
    images_.toFloat(index, index + 1, dst);
    for (int64_t i = 0; i < images_.itemNumel(); ++i) dst[i] = (dst[i] * scale_ - mean_) / std_;
    return labels_.empty() ? -1 : labels_[static_cast<size_t>(index)];
  }

  std::string sampleName(int64_t index) const override {
    return path_ + "[" + std::to_string(index) + "]";
  }
  std::string describe() const override {
    return "idx " + path_ + " " + shapeString(images_.dims) + " " +
           idxTypeName(images_.type_code) +
           (labels_.empty() ? ", no labels" : ", labels " + labels_path_) +
           (scale_ != 1.0f ? ", scaled to [0, 1]" : "") + ", mean " + std::to_string(mean_) +
           ", std " + std::to_string(std_);
  }
  uint64_t contentHash() const override {
    Fnv1a hash;
    hash.update(images_.bytes.data(), images_.bytes.size());
    hash.update(labels_.data(), labels_.size() * sizeof(int64_t));
    return hash.digest();
  }

 private:
  std::string path_;
  IdxArray images_;
  std::string labels_path_;
  std::vector<int64_t> labels_;
  float scale_, mean_, std_;
};

}  // namespace

std::unique_ptr<Dataset> openIdxData(const std::string& path, const DataOptions& options) {
  IdxArray images = readIdx(path);
  BNA_CHECK(images.dims.size() == 3, ExitCode::kData, "IDX file '", path, "' holds ",
            shapeString(images.dims), ", expected images [N, H, W]");
  std::vector<int64_t> labels;
  const std::string labels_path = matchingIdxLabels(path);
  if (!labels_path.empty()) {
    const IdxArray l = readIdx(labels_path);
    BNA_CHECK(l.dims.size() == 1 && l.dims[0] == images.items(), ExitCode::kData,
              "IDX labels '", labels_path, "' hold ", shapeString(l.dims), ", expected [",
              images.items(), "] for the images in '", path, "'");
    for (int64_t i = 0; i < l.numel(); ++i) {
      const double v = l.value(i);
      BNA_CHECK(v >= 0 && v == static_cast<double>(static_cast<int64_t>(v)), ExitCode::kData,
                "IDX labels '", labels_path, "': label ", i, " is ", v,
                ", expected a class index >= 0");
      labels.push_back(static_cast<int64_t>(v));
    }
  }
  std::vector<float> mean, std;
  channelNormalization(options, 1, {0.0f}, {1.0f}, mean, std);
  return std::make_unique<IdxDataset>(path, std::move(images), labels_path, std::move(labels),
                                      mean[0], std[0]);
}

}  // namespace bnadapt::data
