#include "data/image_decode.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <type_traits>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "common/error.h"

namespace bnadapt::data {
namespace {

// ---- container checks before decoding ------------------------------------------------------
//
// libjpeg only warns about a truncated JPEG and returns the image filled with grey, and the
// decoders would allocate whatever size a header claims. So JPEG and PNG are walked here
// first: the size comes from the SOF / IHDR header, completeness from the EOI marker / IEND
// chunk. Anything after those (padding, appended data) is ignored, as the decoders do.

enum class Format { kJpeg, kPng, kOther };

Format sniff(std::string_view b) {
  if (b.size() >= 3 && static_cast<uint8_t>(b[0]) == 0xFF && static_cast<uint8_t>(b[1]) == 0xD8 &&
      static_cast<uint8_t>(b[2]) == 0xFF) {
    return Format::kJpeg;
  }
  if (b.size() >= 8 && std::memcmp(b.data(), "\x89PNG\r\n\x1a\n", 8) == 0) return Format::kPng;
  return Format::kOther;
}

uint32_t be16(const uint8_t* p) { return uint32_t(p[0]) << 8 | p[1]; }
uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

struct HeaderInfo {
  int64_t width = 0, height = 0;  // 0: not known before decoding
  bool complete = false;          // the end marker was found
  std::string problem;            // why not complete, for the message
};

// SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
bool isSof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

// Walks the JPEG marker segments and the entropy-coded data after each SOS up to the EOI.
HeaderInfo scanJpeg(std::string_view bytes) {
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  HeaderInfo info;
  size_t pos = 2;  // after SOI
  while (true) {
    // Next marker: 0xFF, any fill 0xFFs, then the code. Stray bytes between segments are
    // skipped, as libjpeg does (with a warning).
    const void* ff = pos < n ? std::memchr(b + pos, 0xFF, n - pos) : nullptr;
    if (ff == nullptr) break;
    pos = static_cast<size_t>(static_cast<const uint8_t*>(ff) - b);
    while (pos < n && b[pos] == 0xFF) ++pos;
    if (pos >= n) break;
    const uint8_t m = b[pos++];
    if (m == 0xD9) {  // EOI
      info.complete = true;
      return info;
    }
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) continue;  // no length field
    if (pos + 2 > n) break;
    const size_t len = be16(b + pos);
    if (isSof(m) && len >= 7 && pos + 7 <= n) {  // the size, even from a cut segment
      info.height = be16(b + pos + 3);
      info.width = be16(b + pos + 5);
    }
    if (len < 2 || pos + len > n) break;
    pos += len;
    if (m == 0xDA) {  // SOS: entropy-coded data up to the next marker that is not RSTn
      while (true) {
        const void* f = pos < n ? std::memchr(b + pos, 0xFF, n - pos) : nullptr;
        if (f == nullptr) {
          pos = n;
          break;
        }
        pos = static_cast<size_t>(static_cast<const uint8_t*>(f) - b);
        if (pos + 1 >= n) {
          pos = n;
          break;
        }
        const uint8_t next = b[pos + 1];
        if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) {
          pos += 2;  // stuffed zero or restart marker
        } else if (next == 0xFF) {
          pos += 1;  // fill byte: the marker starts at the next 0xFF
        } else {
          break;  // a marker: back to the segment loop
        }
      }
    }
  }
  info.problem = "truncated JPEG: the data ends without an end-of-image marker (FF D9)";
  return info;
}

// Walks the PNG chunks from IHDR to IEND.
HeaderInfo scanPng(std::string_view bytes) {
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  HeaderInfo info;
  if (n < 33 || std::memcmp(b + 12, "IHDR", 4) != 0 || be32(b + 8) != 13) {
    info.problem = n < 33 ? "truncated PNG: the file ends inside its header"
                          : "corrupt PNG: the first chunk is not a 13-byte IHDR";
    return info;
  }
  info.width = be32(b + 16);
  info.height = be32(b + 20);
  size_t pos = 8;
  while (pos + 12 <= n) {
    const uint32_t len = be32(b + pos);
    if (len > 0x7FFFFFFFu) {
      info.problem = "corrupt PNG: a chunk length exceeds 2^31 - 1";
      return info;
    }
    if (std::memcmp(b + pos + 4, "IEND", 4) == 0) {
      info.complete = true;
      return info;
    }
    pos += 12 + size_t{len};
  }
  info.problem = "truncated PNG: the data ends before the IEND chunk";
  return info;
}

// "ff d8 00 12 ('....')": the first bytes, for the message about undecodable content.
std::string leadingBytes(std::string_view b) {
  std::ostringstream os;
  const size_t k = std::min<size_t>(b.size(), 8);
  for (size_t i = 0; i < k; ++i) {
    os << (i ? " " : "") << std::hex << std::setw(2) << std::setfill('0')
       << unsigned(static_cast<uint8_t>(b[i]));
  }
  os << " ('";
  for (size_t i = 0; i < k; ++i) {
    os << (std::isprint(static_cast<unsigned char>(b[i])) ? b[i] : '.');
  }
  os << "')";
  return os.str();
}

// Sizes are at most 2^32 - 1 (PNG's field): their product fits in uint64.
void checkPixels(int64_t width, int64_t height, const std::string& name, const ImagePreprocess& p) {
  const uint64_t pixels = static_cast<uint64_t>(width) * static_cast<uint64_t>(height);
  BNA_CHECK(pixels <= static_cast<uint64_t>(p.max_pixels), ExitCode::kData, "image '", name,
            "': ", width, "x", height, " = ", pixels, " pixels exceeds the limit of ",
            p.max_pixels, " (a decompression bomb or a mistaken file)");
}

// ---- PIL's resampling ------------------------------------------------------------------------
//
// Matched: Pillow 13.0 (src/libImaging/Resample.c, ImagingResampleInner), the Pillow of the
// project's torchvision environment. PIL resizes in two separable passes with an 8-bit image
// between them, so the order of the passes changes results by 1/255 here and there. Before
// Pillow 13 (9.4 checked) the horizontal pass always ran first; Pillow 13
// (python-pillow/Pillow#9549, "if height is scaled down significantly more than width,
// resize vertically first") runs the vertical pass first when the height shrinks by more
// than twice as many pixels as the width does (verticalPassFirst). The windows, weights and
// fixed-point arithmetic of each pass are the same in 9.4 and 13.0 (single-axis resizes agree).

// PIL's PRECISION_BITS for 8-bit images: weights are 22-bit fixed point, sums fit int32.
constexpr int kPrecisionBits = 32 - 8 - 2;

constexpr int32_t kRoundingBias = 1 << (kPrecisionBits - 1);

// PIL's clip8: the rounding bias is in the initial sum, so this is round-half-up. Bilinear
// weights are never negative, so neither are the sums: only the upper clamp remains.
inline uint8_t clip8(int32_t s) {
  return static_cast<uint8_t>(std::min(s >> kPrecisionBits, 255));
}

// The windows of one axis with the same number of taps for every output (the widest
// window's), so the kernels below run fixed-length, unrolled loops: shorter windows get zero
// weights, and at the far border the window start moves back inside the input. A zero
// weight adds exactly nothing, so the sums are PIL's.
struct FixedTaps {
  int taps = 0;
  std::vector<int32_t> first;  // first input of output i
  std::vector<int32_t> k;      // PIL's fixed-point weights (normalize_coeffs_8bpc), taps each
};

void toFixedTaps(const ResampleWindows& w, int64_t in_size, FixedTaps& f) {
  f.taps = *std::max_element(w.count.begin(), w.count.end());
  const size_t n = w.first.size();
  f.first.resize(n);
  f.k.assign(n * static_cast<size_t>(f.taps), 0);
  for (size_t i = 0; i < n; ++i) {
    const int32_t first = std::min<int32_t>(w.first[i], static_cast<int32_t>(in_size) - f.taps);
    f.first[i] = first;
    for (int32_t j = 0; j < w.count[i]; ++j) {
      const double v = w.weights[i * static_cast<size_t>(w.stride) + j] * (1 << kPrecisionBits);
      f.k[i * static_cast<size_t>(f.taps) + static_cast<size_t>(w.first[i] - first + j)] =
          static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
    }
  }
}

// Where a pass puts its sums (b, g, r: the channel order of OpenCV's images, which both
// passes keep): PIL's 8-bit intermediate image (ToBytes, BGR) or, after the second pass, the
// three output planes through the normalisation table (ToPlanes, RGB).
struct ToBytes {
  uint8_t* dst;
  void operator()(size_t i, const int32_t (&s)[3]) const {
    dst[3 * i + 0] = clip8(s[0]);
    dst[3 * i + 1] = clip8(s[1]);
    dst[3 * i + 2] = clip8(s[2]);
  }
};
struct ToPlanes {
  const float (&lut)[3][256];
  float* red;
  float* green;
  float* blue;
  void operator()(size_t i, const int32_t (&s)[3]) const {
    red[i] = lut[0][clip8(s[2])];
    green[i] = lut[1][clip8(s[1])];
    blue[i] = lut[2][clip8(s[0])];
  }
};

// Horizontal pass over one row `src` (BGR pixels, src[0] being column `src_first` of the
// image) for all outputs of `f`. kTaps > 0: the number of taps at compile time; 0: f.taps at
// run time.
template <int kTaps, typename Sink>
void horizontalRow(const uint8_t* src, int32_t src_first, const FixedTaps& f, const Sink& sink) {
  const int taps = kTaps > 0 ? kTaps : f.taps;
  const size_t n = f.first.size();
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* px = src + 3 * static_cast<ptrdiff_t>(f.first[i] - src_first);
    const int32_t* k = &f.k[i * static_cast<size_t>(taps)];
    int32_t s[3] = {kRoundingBias, kRoundingBias, kRoundingBias};
#pragma GCC unroll 8
    for (int t = 0; t < taps; ++t) {
      s[0] += px[3 * t + 0] * k[t];
      s[1] += px[3 * t + 1] * k[t];
      s[2] += px[3 * t + 2] * k[t];
    }
    sink(i, s);
  }
}

// Vertical pass for one output row from the rows `rows[0..taps)` (BGR, `n` pixels each) with
// the weights `k`.
template <int kTaps, typename Sink>
void verticalRow(const uint8_t* const* rows, const int32_t* k, int taps_at_run_time, size_t n,
                 const Sink& sink) {
  const int taps = kTaps > 0 ? kTaps : taps_at_run_time;
  for (size_t i = 0; i < n; ++i) {
    int32_t s[3] = {kRoundingBias, kRoundingBias, kRoundingBias};
#pragma GCC unroll 8
    for (int t = 0; t < taps; ++t) {
      const uint8_t* px = rows[t] + 3 * i;
      s[0] += px[0] * k[t];
      s[1] += px[1] * k[t];
      s[2] += px[2] * k[t];
    }
    sink(i, s);
  }
}

// Calls fn(std::integral_constant<int, taps>) for the common window sizes (unrolled loops),
// fn(std::integral_constant<int, 0>) for the others.
template <typename Fn>
void withTaps(int taps, Fn&& fn) {
  switch (taps) {
    case 1: return fn(std::integral_constant<int, 1>());
    case 2: return fn(std::integral_constant<int, 2>());
    case 3: return fn(std::integral_constant<int, 3>());
    case 4: return fn(std::integral_constant<int, 4>());
    case 5: return fn(std::integral_constant<int, 5>());
    case 6: return fn(std::integral_constant<int, 6>());
    default: return fn(std::integral_constant<int, 0>());
  }
}

// Per-thread buffers, reused from call to call.
struct Scratch {
  ResampleWindows windows;
  FixedTaps rows, cols;
  std::vector<uint8_t> tmp;  // PIL's 8-bit intermediate image (BGR), the part the crop needs
  std::vector<const uint8_t*> row_ptrs;
};

// Python's round(d / 2.0) for d >= 0: halves to even.
int64_t halfToEven(int64_t d) {
  int64_t h = d / 2;
  if (d % 2 == 1 && h % 2 == 1) ++h;
  return h;
}

// CenterCrop's start along one axis of `size` pixels.
int64_t cropStart(int64_t size, int64_t crop) {
  return size >= crop ? halfToEven(size - crop) : -((crop - size) / 2);
}

// Pillow >= 13's choice of the pass order for a resize from in_h x in_w to out_h x out_w
// (both passes needed): vertical first iff the height shrinks and by more than twice the
// pixels the width loses, (in_h - out_h) > 2 * (in_w - out_w), ties horizontal first.
// (Established against Pillow 13.0 on random sizes of both modes, up- and downscaling,
// including every tie and near-tie; Pillow <= 12 is always horizontal first.) With a tall
// image (height > ~2 x width) that Resize shrinks, torchvision gets the vertical order.
bool verticalPassFirst(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  return out_h < in_h && in_h - out_h > 2 * (in_w - out_w);
}

}  // namespace

ResizeCropGeometry resizeCropGeometry(int64_t height, int64_t width, const ImagePreprocess& p) {
  // torchvision's _compute_resized_output_size: new_long = int(S * long / short), in double.
  const int64_t s = p.resize_shorter;
  const int64_t shorter = std::min(height, width), longer = std::max(height, width);
  const auto new_long =
      static_cast<int64_t>(static_cast<double>(s * longer) / static_cast<double>(shorter));
  ResizeCropGeometry g;
  if (width <= height) {
    g.resized_w = s;
    g.resized_h = new_long;
  } else {
    g.resized_w = new_long;
    g.resized_h = s;
  }
  g.top = cropStart(g.resized_h, p.crop_h);
  g.left = cropStart(g.resized_w, p.crop_w);
  return g;
}

void bilinearWindows(int64_t in_size, int64_t out_size, int64_t begin, int64_t end,
                     ResampleWindows& w) {
  BNA_ASSERT(in_size > 0 && out_size > 0 && 0 <= begin && begin <= end && end <= out_size);
  // PIL's precompute_coeffs with the box (0, in_size) as floats and the bilinear filter
  // (support 1): the filter widens by the scale when downsampling (antialiasing).
  const double scale =
      static_cast<double>(static_cast<float>(in_size)) / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  const double ss = 1.0 / filterscale;
  w.stride = static_cast<int32_t>(std::ceil(support)) * 2 + 1;
  const size_t n = static_cast<size_t>(end - begin);
  w.first.resize(n);
  w.count.resize(n);
  w.weights.assign(n * static_cast<size_t>(w.stride), 0.0);
  for (size_t i = 0; i < n; ++i) {
    const double center = (static_cast<double>(begin) + static_cast<double>(i) + 0.5) * scale;
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_size);
    double* k = &w.weights[i * static_cast<size_t>(w.stride)];
    double total = 0.0;
    for (int64_t x = 0; x < xmax - xmin; ++x) {
      double t = std::abs((static_cast<double>(x + xmin) - center + 0.5) * ss);
      k[x] = t < 1.0 ? 1.0 - t : 0.0;
      total += k[x];
    }
    if (total != 0.0) {
      for (int64_t x = 0; x < xmax - xmin; ++x) k[x] /= total;
    }
    w.first[i] = static_cast<int32_t>(xmin);
    w.count[i] = static_cast<int32_t>(xmax - xmin);
  }
}

void decodeImage(std::string_view bytes, const std::string& name, const ImagePreprocess& p,
                 float* out) {
  BNA_CHECK(p.crop_h > 0 && p.crop_w > 0 && p.resize_shorter > 0 && p.max_pixels > 0,
            ExitCode::kUsage, "image preprocessing: crop ", p.crop_h, "x", p.crop_w,
            ", resize ", p.resize_shorter, " and max pixels ", p.max_pixels,
            " must all be positive");
  for (float s : p.std) {
    BNA_CHECK(s != 0.0f && std::isfinite(s), ExitCode::kUsage,
              "image preprocessing: std must be finite and non-zero, got ", s);
  }
  BNA_CHECK(!bytes.empty(), ExitCode::kData, "image '", name, "': the file is empty");
  BNA_CHECK(bytes.size() <= static_cast<size_t>(INT_MAX), ExitCode::kData, "image '", name,
            "': ", bytes.size(), " bytes is larger than the decoder accepts (2 GiB)");

  const Format format = sniff(bytes);
  if (format != Format::kOther) {
    const HeaderInfo h = format == Format::kJpeg ? scanJpeg(bytes) : scanPng(bytes);
    if (h.width > 0 && h.height > 0) checkPixels(h.width, h.height, name, p);
    BNA_CHECK(h.complete, ExitCode::kData, "image '", name, "' (", bytes.size(), " bytes): ",
              h.problem, "; re-copy or re-encode the file");
  }

  thread_local Scratch scratch;
  Scratch& s = scratch;
  // IMREAD_COLOR: 3-channel 8-bit BGR whatever the file holds (grey replicated, palette
  // expanded, alpha dropped, 16-bit reduced to 8); EXIF orientation ignored, as PIL does.
  const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  // (Not imdecode's overload with a reusable destination: on failure it returns that
  // destination unchanged, indistinguishable from a success.)
  cv::Mat img;
  try {
    img = cv::imdecode(buf, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  } catch (const cv::Exception& e) {
    fail(ExitCode::kData, "image '", name, "': cannot be decoded: ", e.what());
  }
  if (img.empty()) {
    if (format != Format::kOther) {
      fail(ExitCode::kData, "image '", name, "': corrupt ",
           format == Format::kJpeg ? "JPEG" : "PNG",
           " data: the decoder rejected it; re-copy or re-encode the file");
    }
    fail(ExitCode::kData, "image '", name, "': not a decodable image: it starts with ",
         leadingBytes(bytes),
         ", which is no JPEG, PNG, BMP, TIFF, WebP or PNM/PPM/PGM content");
  }
  BNA_ASSERT(img.type() == CV_8UC3);
  const int64_t in_h = img.rows, in_w = img.cols;
  checkPixels(in_w, in_h, name, p);

  // The resized pixels the crop covers: rows [y0, y1), columns [x0, x1).
  const ResizeCropGeometry g = resizeCropGeometry(in_h, in_w, p);
  const int64_t y0 = std::max<int64_t>(g.top, 0);
  const int64_t y1 = std::min(g.top + p.crop_h, g.resized_h);
  const int64_t x0 = std::max<int64_t>(g.left, 0);
  const int64_t x1 = std::min(g.left + p.crop_w, g.resized_w);
  const int64_t ncols = x1 - x0;

  // ToTensor + Normalize of each 8-bit value, in float32 as torchvision computes it.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      lut[c][v] = (static_cast<float>(v) / 255.0f - p.mean[c]) / p.std[c];
    }
  }
  const int64_t plane = p.crop_h * p.crop_w;
  if (y1 - y0 < p.crop_h || ncols < p.crop_w) {  // CenterCrop's zero padding
    for (int c = 0; c < 3; ++c) std::fill(out + c * plane, out + (c + 1) * plane, lut[c][0]);
  }

  bilinearWindows(in_h, g.resized_h, y0, y1, s.windows);
  toFixedTaps(s.windows, in_h, s.rows);
  bilinearWindows(in_w, g.resized_w, x0, x1, s.windows);
  toFixedTaps(s.windows, in_w, s.cols);

  const int64_t nrows = y1 - y0;
  if (!verticalPassFirst(in_h, in_w, g.resized_h, g.resized_w)) {
    // Horizontal pass over the input rows the vertical windows read (their starts ascend)
    // into the crop's columns, then the vertical pass, one output row at a time.
    const int64_t r0 = s.rows.first.front();
    const int64_t r1 = s.rows.first.back() + s.rows.taps;
    const size_t tmp_stride = static_cast<size_t>(ncols) * 3;
    s.tmp.resize(static_cast<size_t>(r1 - r0) * tmp_stride);
    withTaps(s.cols.taps, [&](auto taps) {
      for (int64_t r = r0; r < r1; ++r) {
        horizontalRow<decltype(taps)::value>(
            img.ptr<uint8_t>(static_cast<int>(r)), 0, s.cols,
            ToBytes{&s.tmp[static_cast<size_t>(r - r0) * tmp_stride]});
      }
    });
    s.row_ptrs.resize(static_cast<size_t>(s.rows.taps));
    withTaps(s.rows.taps, [&](auto taps) {
      for (int64_t j = 0; j < nrows; ++j) {
        for (int t = 0; t < s.rows.taps; ++t) {
          s.row_ptrs[t] = &s.tmp[static_cast<size_t>(s.rows.first[j] + t - r0) * tmp_stride];
        }
        float* at = out + (y0 + j - g.top) * p.crop_w + (x0 - g.left);
        verticalRow<decltype(taps)::value>(
            s.row_ptrs.data(), &s.rows.k[static_cast<size_t>(j * s.rows.taps)], s.rows.taps,
            static_cast<size_t>(ncols), ToPlanes{lut, at, at + plane, at + 2 * plane});
      }
    });
  } else {
    // Vertical pass over the input columns the horizontal windows read (their starts
    // ascend) into the crop's rows, then the horizontal pass, one output row at a time.
    const int64_t c0 = s.cols.first.front();
    const int64_t c1 = s.cols.first.back() + s.cols.taps;
    const size_t tmp_stride = static_cast<size_t>(c1 - c0) * 3;
    s.tmp.resize(static_cast<size_t>(nrows) * tmp_stride);
    s.row_ptrs.resize(static_cast<size_t>(s.rows.taps));
    withTaps(s.rows.taps, [&](auto taps) {
      for (int64_t j = 0; j < nrows; ++j) {
        for (int t = 0; t < s.rows.taps; ++t) {
          s.row_ptrs[t] = img.ptr<uint8_t>(static_cast<int>(s.rows.first[j] + t)) + 3 * c0;
        }
        verticalRow<decltype(taps)::value>(
            s.row_ptrs.data(), &s.rows.k[static_cast<size_t>(j * s.rows.taps)], s.rows.taps,
            static_cast<size_t>(c1 - c0),
            ToBytes{&s.tmp[static_cast<size_t>(j) * tmp_stride]});
      }
    });
    withTaps(s.cols.taps, [&](auto taps) {
      for (int64_t j = 0; j < nrows; ++j) {
        float* at = out + (y0 + j - g.top) * p.crop_w + (x0 - g.left);
        horizontalRow<decltype(taps)::value>(&s.tmp[static_cast<size_t>(j) * tmp_stride],
                                             static_cast<int32_t>(c0), s.cols,
                                             ToPlanes{lut, at, at + plane, at + 2 * plane});
      }
    });
  }
}

}  // namespace bnadapt::data
