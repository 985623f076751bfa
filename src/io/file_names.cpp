#include "io/file_names.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

namespace bnadapt::io {

bool isTensorFileName(const std::string& path) {
  const std::string base = std::filesystem::path(path).filename().string();
  return !base.empty() && base[0] != '.' && (base.ends_with(".pt") || base.ends_with(".pth"));
}

bool isImageFileName(const std::string& path) {
  static const char* const kExtensions[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                            ".pgm", ".tif",  ".tiff", ".webp"};
  std::string lower(path);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::any_of(std::begin(kExtensions), std::end(kExtensions),
                     [&lower](const char* ext) { return lower.ends_with(ext); });
}

bool isSafetensorsFileName(const std::string& path) { return path.ends_with(".safetensors"); }

std::string sidecarPath(const std::string& path) { return path + ".sha256"; }

std::optional<IdxImagesName> splitIdxImagesName(const std::string& path) {
  IdxImagesName out;
  out.gz = path.ends_with(".gz");
  const std::string name = out.gz ? path.substr(0, path.size() - 3) : path;
  const std::string tail = "idx3-ubyte";
  if (!name.ends_with(tail) || name.size() < tail.size() + 2) return std::nullopt;
  out.sep = name[name.size() - tail.size() - 1];
  if (out.sep != '-' && out.sep != '.') return std::nullopt;
  out.prefix = name.substr(0, name.size() - tail.size() - 1);
  if (out.prefix.back() == '/') return std::nullopt;
  return out;
}

std::vector<std::string> idxLabelsCandidates(const std::string& images_path) {
  const std::optional<IdxImagesName> name = splitIdxImagesName(images_path);
  if (!name) return {};
  std::vector<std::string> prefixes;
  const std::string& prefix = name->prefix;
  const auto slash = prefix.find_last_of('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const auto images = prefix.rfind("images");
  if (images != std::string::npos && images >= base) {
    prefixes.push_back(prefix.substr(0, images) + "labels" + prefix.substr(images + 6));
  }
  prefixes.push_back(prefix);
  std::vector<std::string> out;
  for (const std::string& p : prefixes) {
    const std::string stem = p + name->sep + "idx1-ubyte";
    if (name->gz) {
      out.insert(out.end(), {stem + ".gz", stem});
    } else {
      out.insert(out.end(), {stem, stem + ".gz"});
    }
  }
  return out;
}

}  // namespace bnadapt::io
