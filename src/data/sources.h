// The data sources behind openDataset, one file each. Used by dataset.cpp and the tests.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace bnadapt::data {

// torch.save(tensor [N, ...]) or torch.save({"inputs": tensor [N, ...], "labels": [N]}), or a
// folder of such files (sorted by name; sizes may differ, sample shapes may not). Only the
// samples read are read from disk: the storage records are stored uncompressed, so a sample
// is one positioned read at a computed offset.
std::unique_ptr<Dataset> openTensorData(const std::string& path);

// The ImageNet layout: PATH/<class>/<image>, classes and files sorted by name; labels are
// class indices. Images are decoded, resized, centre-cropped and normalised (image_decode.h).
std::unique_ptr<Dataset> openImageFolder(const std::string& path, const DataOptions& options);

// MNIST-format images "*-idx3-ubyte[.gz]" with labels from the matching "*-idx1-ubyte[.gz]"
// when present; samples [1, H, W] scaled to [0, 1], then normalised.
std::unique_ptr<Dataset> openIdxData(const std::string& path, const DataOptions& options);

// Seeded standard-normal samples of `sample_shape`; sample i depends only on (seed, i).
std::unique_ptr<Dataset> makeSynthetic(std::vector<int64_t> sample_shape, int64_t size,
                                       uint64_t seed);

// Per-channel (mean, std) for `channels` channels from the user's values (one value, or one
// per channel) or the defaults. Throws Error(kUsage) on a wrong count or std <= 0.
void channelNormalization(const DataOptions& options, size_t channels,
                          const std::vector<float>& default_mean,
                          const std::vector<float>& default_std, std::vector<float>& mean,
                          std::vector<float>& std);

}  // namespace bnadapt::data
