// The calibration data formats --data-format names (no LibTorch: the config layer and its
// fuzzer include it).
#pragma once

namespace bnadapt::data {

enum class DataFormat { kAuto, kTensor, kImageFolder, kIdx, kSynthetic };
// "auto", "tensor", "imagefolder", "idx", "synthetic".
constexpr const char* dataFormatName(DataFormat f) {
  switch (f) {
    case DataFormat::kTensor: return "tensor";
    case DataFormat::kImageFolder: return "imagefolder";
    case DataFormat::kIdx: return "idx";
    case DataFormat::kSynthetic: return "synthetic";
    case DataFormat::kAuto: break;
  }
  return "auto";
}

}  // namespace bnadapt::data
