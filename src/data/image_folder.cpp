// Image folders in the ImageNet layout, read as torchvision's ImageFolder reads them: class
// folders sorted by name give the labels; inside each, folders are walked in sorted order and
// files with an image extension taken in sorted order. Other files are ignored.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "common/error.h"
#include "common/hash.h"
#include "data/image_decode.h"
#include "data/sources.h"
#include "io/file_names.h"
#include "io/files.h"

namespace bnadapt::data {
namespace {

namespace fs = std::filesystem;

struct ImageFile {
  std::string path;  // full path
  int64_t label = 0;
};

class ImageFolderDataset final : public Dataset {
 public:
  ImageFolderDataset(std::string root, std::vector<std::string> classes,
                     std::vector<ImageFile> files, int64_t ignored, ImagePreprocess prep)
      : root_(std::move(root)),
        classes_(std::move(classes)),
        files_(std::move(files)),
        ignored_(ignored),
        prep_(prep) {}

  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  std::vector<int64_t> sampleShape() const override { return {3, prep_.crop_h, prep_.crop_w}; }
  bool hasLabels() const override { return true; }

  int64_t read(int64_t index, void* out) const override {
    const ImageFile& f = files_[static_cast<size_t>(index)];
    const std::vector<char> bytes = io::readFile(f.path, "image", ExitCode::kData);
    decodeImage(std::string_view(bytes.data(), bytes.size()), f.path, prep_,
                static_cast<float*>(out));
    return f.label;
  }

  std::string sampleName(int64_t index) const override {
    return files_[static_cast<size_t>(index)].path;
  }
  std::string describe() const override {
    return "imagefolder " + root_ + ": " + std::to_string(files_.size()) + " images in " +
           std::to_string(classes_.size()) + " classes, resized to " +
           std::to_string(prep_.resize_shorter) + " (shorter side), centre crop " +
           std::to_string(prep_.crop_h) + "x" + std::to_string(prep_.crop_w) +
           (ignored_ > 0 ? ", " + std::to_string(ignored_) + " non-image file(s) ignored" : "");
  }
  uint64_t contentHash() const override {
    // Names and labels (not bytes: reading every image to hash it would cost a full pass).
    Fnv1a hash;
    const size_t skip = root_.size();
    for (const auto& f : files_) {
      hash.update(f.path.data() + skip, f.path.size() - skip);
      hash.update(&f.label, sizeof f.label);
    }
    return hash.digest();
  }

 private:
  std::string root_;
  std::vector<std::string> classes_;
  std::vector<ImageFile> files_;
  int64_t ignored_;
  ImagePreprocess prep_;
};

// Image files under `dir`, as torchvision's make_dataset orders them: folders in sorted order
// of their paths (os.walk sorted), each folder's files sorted. Symlinked folders are followed.
std::vector<std::string> imagesUnder(const fs::path& dir, int64_t& ignored) {
  std::vector<fs::path> folders = {dir};
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(
           dir, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory()) folders.push_back(it->path());
  }
  BNA_CHECK(!ec, ExitCode::kData, "image folder '", dir.string(),
            "' cannot be listed: ", ec.message());
  std::sort(folders.begin(), folders.end(),
            [](const fs::path& a, const fs::path& b) { return a.string() < b.string(); });
  std::vector<std::string> out;
  for (const auto& folder : folders) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
      if (entry.is_directory()) continue;
      const std::string name = entry.path().filename().string();
      if (io::isImageFileName(name)) {
        names.push_back(name);
      } else {
        ++ignored;
      }
    }
    BNA_CHECK(!ec, ExitCode::kData, "image folder '", folder.string(),
              "' cannot be listed: ", ec.message());
    std::sort(names.begin(), names.end());
    for (const auto& n : names) out.push_back((folder / n).string());
  }
  return out;
}

}  // namespace

std::unique_ptr<Dataset> openImageFolder(const std::string& path, const DataOptions& options) {
  ImagePreprocess prep;
  if (!options.sample_shape.empty()) {
    const auto& s = options.sample_shape;
    BNA_CHECK(s.size() == 3 && s[0] == 3, ExitCode::kData, "image folder '", path,
              "' gives RGB samples [3, H, W], but input_info.sample_size expects ",
              shapeString(s), " (after the batch dimension)");
    prep.crop_h = s[1];
    prep.crop_w = s[2];
  }
  prep.resize_shorter = options.resize_shorter > 0
                            ? options.resize_shorter
                            : static_cast<int64_t>(std::min(prep.crop_h, prep.crop_w) / 0.875);
  if (options.max_image_pixels > 0) prep.max_pixels = options.max_image_pixels;
  std::vector<float> mean, std;
  channelNormalization(options, 3, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}, mean,
                       std);
  std::copy(mean.begin(), mean.end(), prep.mean.begin());
  std::copy(std.begin(), std.end(), prep.std.begin());

  std::vector<std::string> classes;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && !name.empty() && name[0] != '.') classes.push_back(name);
  }
  BNA_CHECK(!ec, ExitCode::kData, "image folder '", path, "' cannot be listed: ", ec.message());
  BNA_CHECK(!classes.empty(), ExitCode::kData, "image folder '", path,
            "' has no class folders; the layout is PATH/<class>/<image>");
  std::sort(classes.begin(), classes.end());
  std::vector<ImageFile> files;
  int64_t ignored = 0;
  for (size_t c = 0; c < classes.size(); ++c) {
    const std::vector<std::string> images = imagesUnder(fs::path(path) / classes[c], ignored);
    BNA_CHECK(!images.empty(), ExitCode::kData, "class folder '",
              (fs::path(path) / classes[c]).string(),
              "' holds no image files (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp); "
              "remove it or add its images, so that class indices stay as trained");
    for (const auto& f : images) files.push_back({f, static_cast<int64_t>(c)});
  }
  return std::make_unique<ImageFolderDataset>(path, std::move(classes), std::move(files),
                                              ignored, prep);
}

}  // namespace bnadapt::data
