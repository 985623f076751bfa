// Calibration and evaluation data: samples addressed by global index.
//
// Every source (tensor files, image folders, IDX files, synthetic) yields sample i the same
// way on every rank, so the sharding of data/sharding.h alone decides which rank reads what,
// and results do not depend on the number of ranks. Sources are opened by openDataset, which
// infers the format from the path; each lives in its own file (tensor_source.cpp, ...).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "data/data_format.h"

namespace bnadapt::data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual std::vector<int64_t> sampleShape() const = 0;
  // The element type read() writes: float32, or the file's own floating type.
  virtual c10::ScalarType dtype() const { return c10::kFloat; }
  virtual bool hasLabels() const { return false; }

  // Writes sample `index` (0 <= index < size()) as a contiguous array of sampleShape() in
  // dtype() to `out`, and returns its class label (-1 when the data has none). Safe to call
  // from several threads at once. An unreadable sample throws Error(kData) naming its file.
  virtual int64_t read(int64_t index, void* out) const = 0;

  // Where sample `index` comes from (a file name, "file[17]"), for messages.
  virtual std::string sampleName(int64_t index) const = 0;
  virtual std::string describe() const = 0;
  // Identifies the data (names, sizes and a sample of the bytes, not every byte): ranks that
  // opened different data get different hashes. Cheap for data sets of any size.
  virtual uint64_t contentHash() const = 0;
};


struct DataOptions {
  DataFormat format = DataFormat::kAuto;
  // Sample shape without the batch dimension (input_info.sample_size); empty when not given.
  // Image folders crop to its last two dimensions; other sources must match it.
  std::vector<int64_t> sample_shape;
  int64_t synthetic_size = 0;  // samples of the synthetic source
  uint64_t seed = 0;           // synthetic values
  // Normalisation after scaling pixels to [0, 1] (image folders and IDX files); empty: the
  // source's default (ImageNet's for images, none for IDX). One value, or one per channel.
  std::vector<float> mean, std;
  int64_t resize_shorter = 0;     // images: shorter side before the crop; 0: crop / 0.875
  int64_t max_image_pixels = 0;   // images: larger ones are corrupt; 0: the default
};

// The format `path` holds: "synthetic"; a folder of class folders of images (imagefolder);
// a folder of .pt files (tensor shards); a "*-idx3-ubyte[.gz]" file (idx); a .pt file
// (tensor). Throws Error(kData / kUsage) saying what was found when none fits.
DataFormat inferFormat(const std::string& path);

// Opens `path` as `options.format` (inferred when kAuto) and checks the sample shape.
std::unique_ptr<Dataset> openDataset(const std::string& path, const DataOptions& options);

std::string shapeString(const std::vector<int64_t>& shape);

}  // namespace bnadapt::data
