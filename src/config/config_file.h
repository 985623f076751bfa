// Reading an NNCF-style JSON config file: its "bnadapt_dist" section (the option table's
// keys), the NNCF keys the tool uses (top-level batch_size, input_info.sample_size,
// compression[*].initializer.batchnorm_adaptation.num_bn_adaptation_samples) and every other
// key recorded as ignored. Errors are Error(kUsage) starting with the file name and naming
// the key's JSON path.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/options.h"

namespace bnadapt::config {

// What the file says; absent things stay empty.
struct FileValues {
  std::map<std::string, Value> section;  // the "bnadapt_dist" section, by option key
  std::optional<int64_t> batch_size;     // top-level batch_size (NNCF)
  // compression[*].initializer.batchnorm_adaptation.num_bn_adaptation_samples: (path, value).
  std::vector<std::pair<std::string, int64_t>> nncf_samples;
  std::vector<int64_t> sample_shape;
  std::vector<std::string> algorithms;
  std::vector<std::string> ignored_keys;
};

// The file's text, refused when it is not a readable regular file of at most 16 MiB.
std::string readConfigText(const std::string& path);

// Parses and checks `text` (the file `path`, which also anchors relative paths).
FileValues readConfigFile(const std::string& text, const std::string& path);

}  // namespace bnadapt::config
