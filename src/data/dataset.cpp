#include "data/dataset.h"

#include <filesystem>

#include "common/error.h"
#include "data/idx_file.h"
#include "data/image_decode.h"
#include "data/sources.h"
#include "io/file_names.h"
#include "io/files.h"

namespace bnadapt::data {
namespace {

namespace fs = std::filesystem;

const char* kFormats =
    "a .pt file or a folder of .pt files (tensor), a folder of class folders of images "
    "(imagefolder), a *-idx3-ubyte[.gz] file (idx), or 'synthetic'";

}  // namespace

std::string shapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

DataFormat inferFormat(const std::string& path) {
  if (path == "synthetic") return DataFormat::kSynthetic;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  BNA_CHECK(fs::exists(status), ExitCode::kData, "data path '", path,
            "' does not exist; expected ", kFormats);
  if (fs::is_directory(status)) {
    bool tensors = false, folders = false, images = false;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.empty() || name[0] == '.') continue;
      if (entry.is_directory()) folders = true;
      else if (io::isTensorFileName(name)) tensors = true;
      else if (io::isImageFileName(name)) images = true;
    }
    BNA_CHECK(!ec, ExitCode::kData, "data folder '", path, "' cannot be listed: ", ec.message());
    BNA_CHECK(!(tensors && folders), ExitCode::kData, "data folder '", path,
              "' holds both .pt files and folders; pass --data-format tensor or imagefolder");
    if (tensors) return DataFormat::kTensor;
    if (folders) return DataFormat::kImageFolder;
    fail(ExitCode::kData, "data folder '", path, "' ",
         images ? "holds images but no class folders: the imagefolder layout is "
                  "PATH/<class>/<image> (put them in one class folder for unlabelled data)"
                : "holds no .pt files and no class folders",
         "; expected ", kFormats);
  }
  if (looksLikeIdxImages(path)) return DataFormat::kIdx;
  if (io::isTensorFileName(path)) return DataFormat::kTensor;
  const std::string head = io::readHead(path, 4, "data file", ExitCode::kData);
  if (head.rfind("PK\x03\x04", 0) == 0) return DataFormat::kTensor;
  BNA_CHECK(!io::isImageFileName(path), ExitCode::kData, "data path '", path,
            "' is a single image; point --data at the folder of class folders (imagefolder)");
  fail(ExitCode::kData, "cannot tell the format of data file '", path, "'; expected ", kFormats,
       ", or pass --data-format");
}

void channelNormalization(const DataOptions& options, size_t channels,
                          const std::vector<float>& default_mean,
                          const std::vector<float>& default_std, std::vector<float>& mean,
                          std::vector<float>& std) {
  auto expand = [&](const std::vector<float>& given, const std::vector<float>& fallback,
                    const char* what) {
    const std::vector<float>& v = given.empty() ? fallback : given;
    BNA_CHECK(v.size() == 1 || v.size() == channels, ExitCode::kUsage, "--", what, " has ",
              v.size(), " value(s) but the data has ", channels,
              " channel(s); give one value or one per channel");
    return v.size() == 1 ? std::vector<float>(channels, v[0]) : v;
  };
  mean = expand(options.mean, default_mean, "mean");
  std = expand(options.std, default_std, "std");
  for (float s : std) {
    BNA_CHECK(s > 0, ExitCode::kUsage, "--std values must be > 0, got ", s);
  }
}

std::unique_ptr<Dataset> openDataset(const std::string& path, const DataOptions& options) {
  const DataFormat format =
      options.format == DataFormat::kAuto ? inferFormat(path) : options.format;
  std::unique_ptr<Dataset> ds;
  switch (format) {
    case DataFormat::kSynthetic:
      BNA_CHECK(!options.sample_shape.empty(), ExitCode::kUsage,
                "--data synthetic needs the sample shape: set input_info.sample_size in the "
                "config, e.g. [1, 3, 224, 224]");
      return makeSynthetic(options.sample_shape, options.synthetic_size, options.seed);
    case DataFormat::kImageFolder:
      return openImageFolder(path, options);  // crops to the requested shape
    case DataFormat::kIdx:
      ds = openIdxData(path, options);
      break;
    case DataFormat::kTensor:
    case DataFormat::kAuto:
      ds = openTensorData(path);
      break;
  }
  BNA_CHECK(options.sample_shape.empty() || ds->sampleShape() == options.sample_shape,
            ExitCode::kData, "data '", path, "' has samples of shape ",
            shapeString(ds->sampleShape()), " but input_info.sample_size expects ",
            shapeString(options.sample_shape), " (after the batch dimension)");
  return ds;
}

}  // namespace bnadapt::data
