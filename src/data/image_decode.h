// Decoding and preprocessing of one image file, as torchvision's ImageNet evaluation pipeline
// does it on a PIL image:
//
//   Image.open(f).convert("RGB") -> Resize(S) -> CenterCrop((H, W)) -> ToTensor() -> Normalize
//
// Decoding is OpenCV's (the same libjpeg, libpng, ... that PIL links on Debian). The resize is
// PIL's antialiased bilinear resampling re-implemented exactly: the same per-pixel windows and
// weights, the same 22-bit fixed-point arithmetic, the same 8-bit intermediate image between
// the two passes, and the order of the passes that Pillow 13 chooses (vertical first when the
// height shrinks by more than twice as many pixels as the width; older Pillow always ran the
// horizontal pass first, and differs by 1/255 in places there). On the same decoded pixels
// the output is bit-identical to torchvision's with Pillow 13. Only the output pixels inside
// the centre crop are computed.
// Known differences from PIL's decoding: 16-bit grey PNGs (PIL clips the 16-bit values to
// 255; here the high byte is kept, as PIL does for 16-bit RGB) and CMYK JPEGs (other
// CMYK-to-RGB arithmetic: up to 1/255 apart on a test image).
//
// No LibTorch here: callers run decodeImage on their own decoding threads, and nothing in this
// file changes OpenCV's global threading.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bnadapt::data {

struct ImagePreprocess {
  int64_t crop_h = 224, crop_w = 224;
  // Shorter side after the resize (torchvision Resize(int)); callers compute their default
  // (crop / 0.875).
  int64_t resize_shorter = 256;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
  // Images with more pixels are refused, before decoding where the header tells the size
  // (decompression bombs). PIL's DecompressionBombError threshold (2 * MAX_IMAGE_PIXELS).
  int64_t max_pixels = 178956970;
};

// Decodes `bytes` (a file's contents; `name` names it in errors) and writes the preprocessed
// image as float32 CHW RGB [3, crop_h, crop_w] to `out`. Grey, palette and RGBA images become
// RGB (alpha dropped, as PIL's convert("RGB")); EXIF orientation is ignored, as PIL does.
// Where the resized image is smaller than the crop, the border is 0 before normalisation, as
// torchvision's CenterCrop pads. Throws Error(kData) naming the file and the reason for an
// empty file, content that is no decodable image, a truncated JPEG or PNG, or more than
// p.max_pixels pixels; Error(kUsage) for invalid `p`. Thread-safe (scratch is thread_local).
void decodeImage(std::string_view bytes, const std::string& name, const ImagePreprocess& p,
                 float* out);


// ---- the pieces of decodeImage, exposed for tests ------------------------------------------

// Where Resize(S) + CenterCrop((H, W)) puts the crop, as torchvision computes it.
struct ResizeCropGeometry {
  int64_t resized_h = 0, resized_w = 0;  // shorter side S, longer int(S * long / short)
  // Resized-image coordinates of the crop's first row and column: round((size - crop) / 2)
  // with Python's round, or -((crop - size) / 2) where the crop is larger and padded.
  int64_t top = 0, left = 0;
};
ResizeCropGeometry resizeCropGeometry(int64_t height, int64_t width, const ImagePreprocess& p);

// PIL's bilinear resampling windows (precompute_coeffs) for outputs [begin, end) of an axis
// resized from in_size to out_size: output i reads inputs [first[i], first[i] + count[i])
// with weights[i * stride + j], which sum to 1.
struct ResampleWindows {
  std::vector<int32_t> first, count;
  int32_t stride = 0;  // PIL's ksize: room for the widest window
  std::vector<double> weights;
};
void bilinearWindows(int64_t in_size, int64_t out_size, int64_t begin, int64_t end,
                     ResampleWindows& windows);

}  // namespace bnadapt::data
