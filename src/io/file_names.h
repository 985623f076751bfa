// Every rule that tells a file's kind, or names a companion file, from its path: the tool's
// one list of file-name conventions (content sniffing stays with each reader).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace bnadapt::io {

// A torch.save tensor file: "*.pt" or "*.pth", not hidden (".x.pt").
bool isTensorFileName(const std::string& path);

// An image the image-folder reader decodes: jpg, jpeg, png, ppm, bmp, pgm, tif, tiff, webp
// (any letter case).
bool isImageFileName(const std::string& path);

// "*.safetensors".
bool isSafetensorsFileName(const std::string& path);

// The SHA-256 sidecar written beside a checkpoint output: "<path>.sha256".
std::string sidecarPath(const std::string& path);

// An IDX images file "<prefix><sep>idx3-ubyte[.gz]" (sep '-' or '.', as MNIST and
// Fashion-MNIST name them), split into its parts; nullopt for any other name.
struct IdxImagesName {
  std::string prefix;  // with its folder
  char sep = '-';
  bool gz = false;
};
std::optional<IdxImagesName> splitIdxImagesName(const std::string& path);

// Where the labels of an IDX images file may be, in order of preference: "images" in the
// file name replaced by "labels", then the same prefix; idx1-ubyte, compressed like the
// images first. Empty for a path that is not an IDX images name.
std::vector<std::string> idxLabelsCandidates(const std::string& images_path);

}  // namespace bnadapt::io
