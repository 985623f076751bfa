#include "data/image_decode.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "common/error.h"

namespace bnadapt::data {
namespace {

// `m` (BGR, grey or BGRA, as OpenCV holds images) encoded as a file of type `ext` (".png").
std::string encode(const cv::Mat& m, const std::string& ext, const std::vector<int>& params = {}) {
  std::vector<uint8_t> buf;
  EXPECT_TRUE(cv::imencode(ext, m, buf, params));
  return std::string(buf.begin(), buf.end());
}

ImagePreprocess identity(int64_t resize = 256, int64_t crop_h = 224, int64_t crop_w = 224) {
  ImagePreprocess p;
  p.resize_shorter = resize;
  p.crop_h = crop_h;
  p.crop_w = crop_w;
  p.mean = {0.0f, 0.0f, 0.0f};
  p.std = {1.0f, 1.0f, 1.0f};
  return p;
}

std::vector<float> decode(const std::string& bytes, const ImagePreprocess& p) {
  std::vector<float> out(static_cast<size_t>(3 * p.crop_h * p.crop_w), -1000.0f);
  decodeImage(bytes, "test.img", p, out.data());
  return out;
}

// The message of the Error(kData) that decoding `bytes` as `name` throws.
std::string errorOf(const std::string& bytes, const std::string& name,
                    const ImagePreprocess& p = ImagePreprocess()) {
  std::vector<float> out(static_cast<size_t>(3 * p.crop_h * p.crop_w));
  try {
    decodeImage(bytes, name, p, out.data());
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kData) << e.what();
    return e.what();
  }
  ADD_FAILURE() << name << ": no error";
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A photo-like BGR image: gradients plus deterministic noise (compresses like a photo).
cv::Mat photo(int h, int w) {
  cv::Mat m(h, w, CV_8UC3);
  cv::RNG rng(7);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) {
        const double v = 128 + 80 * std::sin(0.02 * (c + 1) * x + 0.03 * y) + rng.gaussian(10);
        m.at<cv::Vec3b>(y, x)[c] = cv::saturate_cast<uint8_t>(v);
      }
    }
  }
  return m;
}

TEST(DecodeImage, ConstantColourGivesItsNormalisedValue) {
  const cv::Mat bgr(300, 400, CV_8UC3, cv::Scalar(30, 120, 200));
  const ImagePreprocess p;  // ImageNet mean and std
  const std::vector<float> out = decode(encode(bgr, ".png"), p);
  const float rgb[3] = {200, 120, 30};
  for (int c = 0; c < 3; ++c) {
    const float expected = (rgb[c] / 255.0f - p.mean[c]) / p.std[c];
    for (int64_t i = 0; i < p.crop_h * p.crop_w; ++i) {
      ASSERT_EQ(out[c * p.crop_h * p.crop_w + i], expected) << "channel " << c << " at " << i;
    }
  }
}

TEST(DecodeImage, ChannelsAreRgb) {
  const cv::Mat red(64, 80, CV_8UC3, cv::Scalar(0, 0, 255));  // BGR
  const std::vector<float> out = decode(encode(red, ".png"), identity(32, 32, 32));
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[32 * 32], 0.0f);
  EXPECT_EQ(out[2 * 32 * 32], 0.0f);
  EXPECT_EQ(*std::min_element(out.begin(), out.begin() + 32 * 32), 1.0f);
  EXPECT_EQ(*std::max_element(out.begin() + 32 * 32, out.end()), 0.0f);
}

TEST(DecodeImage, GreyBecomesThreeEqualChannels) {
  cv::Mat grey(90, 120, CV_8UC1);
  for (int y = 0; y < grey.rows; ++y) {
    for (int x = 0; x < grey.cols; ++x) grey.at<uint8_t>(y, x) = static_cast<uint8_t>(2 * x + y);
  }
  const int64_t plane = 60 * 60;
  for (const char* ext : {".png", ".pgm"}) {
    const std::vector<float> out = decode(encode(grey, ext), identity(64, 60, 60));
    EXPECT_TRUE(std::equal(out.begin(), out.begin() + plane, out.begin() + plane)) << ext;
    EXPECT_TRUE(std::equal(out.begin(), out.begin() + plane, out.begin() + 2 * plane)) << ext;
    EXPECT_NE(out[0], out[plane - 1]) << ext;  // not constant
  }
}

TEST(DecodeImage, AlphaIsDropped) {
  const cv::Mat bgr = photo(70, 90);
  cv::Mat bgra;
  cv::Mat alpha(70, 90, CV_8UC1);
  cv::randu(alpha, 0, 256);
  cv::merge(std::vector<cv::Mat>{bgr, alpha}, bgra);
  const ImagePreprocess p = identity(64, 48, 56);
  EXPECT_EQ(decode(encode(bgra, ".png"), p), decode(encode(bgr, ".png"), p));
}

TEST(DecodeImage, SixteenBitPngKeepsTheHighByte) {
  cv::Mat wide(40, 50, CV_16UC3, cv::Scalar(0x12FF, 0x3400, 0xAB80));
  const std::vector<float> out = decode(encode(wide, ".png"), identity(40, 40, 40));
  EXPECT_EQ(out[0], 0xAB / 255.0f);
  EXPECT_EQ(out[40 * 40], 0x34 / 255.0f);
  EXPECT_EQ(out[2 * 40 * 40], 0x12 / 255.0f);
}

TEST(DecodeImage, PaddingWhereTheCropIsLarger) {
  // 10x10 resized to 10x10 (no change), crop 15 high and 13 wide: CenterCrop pads
  // (15-10)//2 = 2 rows above and (13-10)//2 = 1 column left with 0.
  const cv::Mat bgr(10, 10, CV_8UC3, cv::Scalar(51, 102, 153));
  ImagePreprocess p = identity(10, 15, 13);
  p.mean = {0.5f, 0.5f, 0.5f};
  p.std = {0.25f, 0.5f, 1.0f};
  const std::vector<float> out = decode(encode(bgr, ".png"), p);
  const float rgb[3] = {153, 102, 51};
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 15; ++y) {
      for (int x = 0; x < 13; ++x) {
        const bool inside = y >= 2 && y < 12 && x >= 1 && x < 11;
        const float v = inside ? rgb[c] / 255.0f : 0.0f;
        ASSERT_EQ(out[(c * 15 + y) * 13 + x], (v - p.mean[c]) / p.std[c])
            << c << " " << y << " " << x;
      }
    }
  }
}

TEST(DecodeImage, MarkerPixelLandsWherePilPutsIt) {
  // 512x512 -> 256x256 (scale 2, windows of 4 taps: 1/8 3/8 3/8 1/8), crop 224 from 16.
  // Input column 300 feeds outputs 149 (weight 1/8) and 150 (3/8): the peak is at crop column
  // 134 and row 200 / 2 - 16 = 84, with PIL's 8-bit rounding 255 * 3/8 = 95.6 -> 96, then
  // 96 * 3/8 = 36.
  cv::Mat img(512, 512, CV_8UC3, cv::Scalar(0, 0, 0));
  img.at<cv::Vec3b>(200, 300) = cv::Vec3b(255, 255, 255);
  const std::vector<float> out = decode(encode(img, ".png"), identity());
  const auto peak = std::max_element(out.begin(), out.begin() + 224 * 224) - out.begin();
  EXPECT_EQ(peak / 224, 84);
  EXPECT_EQ(peak % 224, 134);
  EXPECT_EQ(out[84 * 224 + 134], 36.0f / 255.0f);
  EXPECT_EQ(out[84 * 224 + 133], 12.0f / 255.0f);  // 255 * 1/8 = 31.9 -> 32, 32 * 3/8
  EXPECT_EQ(out[83 * 224 + 134], 12.0f / 255.0f);  // 96 * 1/8
  EXPECT_EQ(out[83 * 224 + 133], 4.0f / 255.0f);   // 32 * 1/8
  EXPECT_EQ(out[84 * 224 + 135], 0.0f);
  EXPECT_EQ(std::count_if(out.begin(), out.end(), [](float v) { return v != 0.0f; }), 3 * 4);
}

// PIL's two passes round to 8 bits in between, so their order shows. Pillow 13 runs the
// vertical pass first when the height shrinks by more than twice the pixels the width loses
// (40x89 -> 36x80: 9 > 2 * 4), else the horizontal pass first (89x40 -> 80x36). The hashes
// are of torchvision's Resize(36) + CenterCrop(32) with Pillow 13.0 (as bytes, CHW); the
// other pass order gives 666 and 564 other values of 3072.
TEST(DecodeImage, PassOrderIsPillow13s) {
  auto pattern = [](int w, int h) {
    cv::Mat m(h, w, CV_8UC3);
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        const int r = (x * 37 + y * y * 11 + x * y * 5) & 255;
        const int g = (x * x * 3 + y * 53 + 17) & 255;
        const int b = (x * y * 7 + x * 19 + y * 29 + 91) & 255;
        m.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uint8_t>(b), static_cast<uint8_t>(g),
                                          static_cast<uint8_t>(r));
      }
    }
    return m;
  };
  auto fnv1a = [](const std::vector<float>& v) {
    uint32_t h = 2166136261u;
    for (float f : v) {
      const long byte = std::lround(f * 255.0f);
      EXPECT_EQ(static_cast<float>(byte) / 255.0f, f);
      h = (h ^ static_cast<uint32_t>(byte)) * 16777619u;
    }
    return h;
  };
  EXPECT_EQ(fnv1a(decode(encode(pattern(40, 89), ".png"), identity(36, 32, 32))), 0x93d1ff48u);
  EXPECT_EQ(fnv1a(decode(encode(pattern(89, 40), ".png"), identity(36, 32, 32))), 0x3e72f973u);
}

TEST(ResizeCropGeometry, TorchvisionSizesAndRounding) {
  const ImagePreprocess p;  // 256, 224x224
  ResizeCropGeometry g = resizeCropGeometry(375, 500, p);
  EXPECT_EQ(g.resized_h, 256);
  EXPECT_EQ(g.resized_w, 341);  // int(256 * 500 / 375) = int(341.33)
  EXPECT_EQ(g.top, 16);
  EXPECT_EQ(g.left, 58);  // round(58.5) = 58: halves to even
  g = resizeCropGeometry(100, 134, p);
  EXPECT_EQ(g.resized_w, 343);  // int(343.04)
  EXPECT_EQ(g.left, 60);        // round(59.5) = 60
  g = resizeCropGeometry(700, 150, p);
  EXPECT_EQ(g.resized_w, 256);
  EXPECT_EQ(g.resized_h, 1194);  // int(1194.67)
  EXPECT_EQ(g.top, 485);
  g = resizeCropGeometry(300, 300, p);
  EXPECT_EQ(g.resized_h, 256);
  EXPECT_EQ(g.resized_w, 256);
  // Smaller than the crop: negative starts, the padding before.
  g = resizeCropGeometry(50, 60, identity(100, 225, 224));
  EXPECT_EQ(g.resized_w, 120);
  EXPECT_EQ(g.top, -62);   // -(125 // 2)
  EXPECT_EQ(g.left, -52);  // -(104 // 2)
}

TEST(BilinearWindows, DownscaleWidensTheTriangle) {
  ResampleWindows w;
  bilinearWindows(512, 256, 150, 152, w);
  EXPECT_EQ(w.stride, 5);  // support 2: ceil(2) * 2 + 1
  ASSERT_EQ(w.first.size(), 2u);
  EXPECT_EQ(w.first[0], 299);
  EXPECT_EQ(w.count[0], 4);
  const double expected[] = {0.125, 0.375, 0.375, 0.125, 0.0};
  for (int j = 0; j < 5; ++j) EXPECT_DOUBLE_EQ(w.weights[j], expected[j]) << j;
  EXPECT_EQ(w.first[1], 301);
  // A window at the border is cut and renormalised: output 0 reads 0..2 with 3/7 3/7 1/7.
  bilinearWindows(512, 256, 0, 1, w);
  EXPECT_EQ(w.first[0], 0);
  EXPECT_EQ(w.count[0], 3);
  EXPECT_DOUBLE_EQ(w.weights[0], 0.75 / 1.75);
  EXPECT_DOUBLE_EQ(w.weights[2], 0.25 / 1.75);
}

TEST(BilinearWindows, UpscaleAndIdentity) {
  ResampleWindows w;
  bilinearWindows(100, 256, 0, 256, w);  // scale 0.390625: plain bilinear, support 1
  EXPECT_EQ(w.stride, 3);
  EXPECT_EQ(w.first[0], 0);  // centre 0.195: one tap
  EXPECT_EQ(w.count[0], 1);
  EXPECT_DOUBLE_EQ(w.weights[0], 1.0);
  EXPECT_EQ(w.first[10], 3);  // centre 4.1015625: inputs 3 and 4
  EXPECT_EQ(w.count[10], 2);
  EXPECT_DOUBLE_EQ(w.weights[10 * 3 + 0], 0.3984375);
  EXPECT_DOUBLE_EQ(w.weights[10 * 3 + 1], 0.6015625);
  bilinearWindows(37, 37, 0, 37, w);  // same size: each output copies its input
  for (int i = 0; i < 37; ++i) {
    EXPECT_EQ(w.first[i], i);
    EXPECT_DOUBLE_EQ(w.weights[i * 3], 1.0);
    EXPECT_DOUBLE_EQ(w.weights[i * 3 + 1], 0.0);
  }
}

TEST(BilinearWindows, SubrangeEqualsFullAndWeightsSumToOne) {
  for (auto [in, out] : {std::pair<int64_t, int64_t>{500, 341}, {375, 256}, {30, 384}, {1000, 7}}) {
    ResampleWindows full, part;
    bilinearWindows(in, out, 0, out, full);
    bilinearWindows(in, out, out / 3, out / 2 + 1, part);
    for (size_t i = 0; i < part.first.size(); ++i) {
      const size_t f = i + static_cast<size_t>(out / 3);
      EXPECT_EQ(part.first[i], full.first[f]);
      EXPECT_EQ(part.count[i], full.count[f]);
    }
    for (size_t i = 0; i < full.first.size(); ++i) {
      EXPECT_GE(full.first[i], 0);
      EXPECT_LE(full.first[i] + full.count[i], in);
      double sum = 0;
      for (int j = 0; j < full.stride; ++j) sum += full.weights[i * full.stride + j];
      EXPECT_NEAR(sum, 1.0, 1e-12) << in << "->" << out << " at " << i;
    }
  }
}

TEST(DecodeImage, RefusesEmptyAndForeignContent) {
  EXPECT_TRUE(contains(errorOf("", "empty.jpg"), "image 'empty.jpg': the file is empty"));
  const std::string text = errorOf("Hello, this is not a picture.\n", "notes.jpg");
  EXPECT_TRUE(contains(text, "image 'notes.jpg': not a decodable image")) << text;
  EXPECT_TRUE(contains(text, "48 65 6c 6c")) << text;  // "Hell"
}

TEST(DecodeImage, RefusesTruncatedJpegAndPng) {
  const std::string jpeg = encode(photo(120, 160), ".jpg");
  const std::string cut = errorOf(jpeg.substr(0, jpeg.size() / 2), "half.jpg");
  const std::string cut_size = std::to_string(jpeg.size() / 2);
  EXPECT_TRUE(contains(cut, "image 'half.jpg' (" + cut_size + " bytes): truncated JPEG")) << cut;
  // Only the EOI marker missing: still truncated; padding or data after EOI is fine.
  EXPECT_TRUE(contains(errorOf(jpeg.substr(0, jpeg.size() - 2), "noeoi.jpg"), "truncated JPEG"));
  EXPECT_NO_THROW(decode(jpeg + std::string(100, '\0'), identity(64, 32, 32)));
  EXPECT_NO_THROW(decode(jpeg + "appended trailer", identity(64, 32, 32)));

  const std::string png = encode(photo(120, 160), ".png");
  const std::string half = errorOf(png.substr(0, png.size() / 2), "half.png");
  const std::string half_size = std::to_string(png.size() / 2);
  EXPECT_TRUE(contains(half, "image 'half.png' (" + half_size + " bytes): truncated PNG")) << half;
  EXPECT_TRUE(contains(errorOf(png.substr(0, 20), "head.png"), "truncated PNG"));
  EXPECT_TRUE(contains(errorOf(png.substr(0, png.size() - 12), "noiend.png"), "truncated PNG"));
}

TEST(DecodeImage, RefusesCorruptJpegData) {
  // A complete JPEG structure whose compressed data is garbage: the decoder's verdict.
  std::string jpeg = encode(photo(64, 64), ".jpg");
  const size_t sos = jpeg.find("\xFF\xDA");
  ASSERT_NE(sos, std::string::npos);
  jpeg = jpeg.substr(0, sos) + "\xFF\xD9";  // headers, then EOI: no scan at all
  const std::string msg = errorOf(jpeg, "noscan.jpg");
  EXPECT_TRUE(contains(msg, "image 'noscan.jpg'")) << msg;
}

TEST(DecodeImage, RefusesTooManyPixels) {
  ImagePreprocess p;
  p.max_pixels = 100 * 100;
  for (const char* ext : {".jpg", ".png", ".bmp"}) {
    const std::string bytes = encode(cv::Mat(101, 100, CV_8UC3, cv::Scalar(1, 2, 3)), ext);
    const std::string msg = errorOf(bytes, std::string("big") + ext, p);
    EXPECT_TRUE(contains(msg, "100x101 = 10100 pixels exceeds the limit of 10000")) << msg;
    // JPEG and PNG are refused from their headers, before decoding: truncation is not reached.
    if (std::string(ext) != ".bmp") {
      const size_t header_end = std::string(ext) == ".png" ? 33 : bytes.find("\xFF\xC0") + 12;
      EXPECT_TRUE(contains(errorOf(bytes.substr(0, header_end), "cut", p), "exceeds the limit"))
          << ext;
    }
    EXPECT_NO_THROW(decode(encode(cv::Mat(100, 100, CV_8UC3), ext), p));
  }
  // Headers claiming the largest sizes their fields hold, against the default limit.
  std::string png = encode(cv::Mat(8, 8, CV_8UC3, cv::Scalar(0)), ".png");
  png.replace(16, 8, std::string(8, '\xFF'));  // IHDR width and height: 2^32 - 1
  const std::string png_msg = errorOf(png, "huge.png");
  EXPECT_TRUE(contains(png_msg, "4294967295x4294967295 = 18446744065119617025 pixels exceeds"))
      << png_msg;
  std::string jpeg = encode(cv::Mat(8, 8, CV_8UC3, cv::Scalar(0)), ".jpg");
  jpeg.replace(jpeg.find("\xFF\xC0") + 5, 4, std::string(4, '\xFF'));  // SOF0: 65535 x 65535
  EXPECT_TRUE(contains(errorOf(jpeg, "huge.jpg"), "65535x65535 = 4294836225 pixels exceeds"));
}

TEST(DecodeImage, DamagedFilesDecodeOrGiveDataErrors) {
  // Cut or bit-flipped copies: a clean Error(kData) or an image, never a crash. (libjpeg
  // prints its warnings about corrupt data to stderr.)
  std::mt19937 rng(5);
  for (const char* ext : {".jpg", ".png", ".bmp"}) {
    const std::string good = encode(photo(48, 64), ext);
    int decoded = 0, rejected = 0;
    for (int i = 0; i < 60; ++i) {
      std::string bad = good;
      if (i % 2 == 0) {
        bad.resize(rng() % bad.size());
      } else {
        for (int k = 0; k < 1 + int(rng() % 4); ++k) {
          bad[rng() % bad.size()] ^= char(1u << (rng() % 8));
        }
      }
      std::vector<float> out(3 * 32 * 32);
      try {
        decodeImage(bad, "fuzz", identity(40, 32, 32), out.data());
        ++decoded;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ExitCode::kData) << e.what();
        ++rejected;
      }
    }
    EXPECT_GE(rejected, 30) << ext;  // at least every cut copy
    EXPECT_EQ(decoded + rejected, 60);
  }
}

TEST(DecodeImage, RefusesInvalidSettings) {
  const std::string png = encode(cv::Mat(8, 8, CV_8UC3, cv::Scalar(0)), ".png");
  ImagePreprocess p = identity(8, 0, 8);
  std::vector<float> out(3 * 64);
  EXPECT_THROW(decodeImage(png, "x.png", p, out.data()), Error);
  p = identity(8, 8, 8);
  p.std[1] = 0.0f;
  try {
    decodeImage(png, "x.png", p, out.data());
    ADD_FAILURE() << "std 0 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kUsage);
  }
}

// Against torchvision: tests/fixtures/make_images.py writes images and torchvision's
// Resize + CenterCrop + ToTensor of each; ctest sets BNADAPT_IMAGE_FIXTURES to its OUTDIR.
TEST(DecodeImage, MatchesTorchvision) {
  const char* dir = std::getenv("BNADAPT_IMAGE_FIXTURES");
  if (dir == nullptr || *dir == '\0') {
    GTEST_SKIP() << "BNADAPT_IMAGE_FIXTURES is not set (the OUTDIR of "
                    "tests/fixtures/make_images.py)";
  }
  auto slurp = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    EXPECT_TRUE(f.good()) << path;
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  };
  std::istringstream manifest(slurp(std::string(dir) + "/images_manifest.txt"));
  std::string case_name, image;
  int64_t resize = 0, h = 0, w = 0;
  int cases = 0;
  float worst = 0.0f;
  while (manifest >> case_name >> image >> resize >> h >> w) {
    const std::string ref_bytes = slurp(std::string(dir) + "/images_ref/" + case_name + ".f32");
    ASSERT_EQ(ref_bytes.size(), static_cast<size_t>(3 * h * w) * sizeof(float)) << case_name;
    std::vector<float> ref(static_cast<size_t>(3 * h * w));
    std::memcpy(ref.data(), ref_bytes.data(), ref_bytes.size());  // little-endian host
    const std::vector<float> out =
        decode(slurp(std::string(dir) + "/images/" + image), identity(resize, h, w));
    float diff = 0.0f;
    size_t differing = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      diff = std::max(diff, std::abs(out[i] - ref[i]));
      differing += out[i] != ref[i];
    }
    std::cout << "[ image    ] " << case_name << ": max |diff| = " << diff * 255.0f
              << "/255, " << differing << " of " << ref.size() << " values differ\n";
    // Bit-identical: a pass order or rounding unlike PIL's shows as 1/255 here and there.
    EXPECT_EQ(differing, 0u) << case_name << ": max |diff| = " << diff * 255.0f << "/255";
    worst = std::max(worst, diff);
    ++cases;
  }
  EXPECT_GT(cases, 20) << "manifest incomplete";
  std::cout << "[ image    ] " << cases << " cases, worst max |diff| = " << worst * 255.0f
            << "/255\n";
}

}  // namespace
}  // namespace bnadapt::data
