#include "config/config_file.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <system_error>

#include "common/error.h"
#include "io/json_reader.h"

namespace bnadapt::config {
namespace {

// Object keys iterate in sorted order (std::map), so ignored keys are listed sorted by path.
using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr int kMaxDepth = 64;
constexpr std::uintmax_t kMaxConfigBytes = 16u << 20;
const char* const kNncfSamplesKey = "num_bn_adaptation_samples";

// Keys of compression[*].initializer.batchnorm_adaptation. num_bn_forget_samples (NNCF 2.0)
// is accepted and recorded as ignored.
const std::vector<std::string>& bnAdaptationKeys() {
  static const std::vector<std::string> keys = {kNncfSamplesKey, "num_bn_forget_samples"};
  return keys;
}

// Top-level sections we read; a near miss of one of them is an error, not an ignored key.
const std::vector<std::string>& usedTopLevelKeys() {
  static const std::vector<std::string> keys = {kSection, "input_info", "compression",
                                                "batch_size"};
  return keys;
}

// Keys of the "bnadapt_dist" section, in usage() order.
std::vector<std::string> sectionKeys() {
  std::vector<std::string> keys;
  for (const Option& o : options()) {
    if (!o.key.empty()) keys.push_back(o.key);
  }
  return keys;
}

std::string joinQuoted(const std::vector<std::string>& items, const std::string& quote) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out.append(quote).append(items[i]).append(quote);
  }
  return out;
}

class ConfigReader {
 public:
  explicit ConfigReader(std::string file) : file_(std::move(file)) {}

  FileValues read(const Json& root) {
    for (const auto& [key, value] : root.items()) {
      if (key == kSection) {
        readSection(value, key);
      } else if (key == "input_info") {
        readInputInfo(value, key);
      } else if (key == "compression") {
        readCompression(value, key);
      } else if (key == "batch_size") {
        out_.batch_size =
            static_cast<int64_t>(readRanged(value, key, *optionByKey("batch_size")));
      } else {
        checkNotNearMiss(key, usedTopLevelKeys(), io::jsonChild("", key));
        out_.ignored_keys.push_back(io::jsonChild("", key));
      }
    }
    return std::move(out_);
  }

 private:
  [[noreturn]] void typeError(const std::string& path, const std::string& expected,
                              const Json& found) const {
    fail(ExitCode::kUsage, file_, ": ", path, ": expected ", expected, ", found ", io::describeJson(found));
  }

  [[noreturn]] void unknownKey(const std::string& path, const std::string& key,
                               const std::vector<std::string>& valid) const {
    const std::string near = nearestKey(key, valid);
    if (!near.empty()) {
      fail(ExitCode::kUsage, file_, ": unknown key '", path, "'; did you mean '", near, "'?");
    }
    fail(ExitCode::kUsage, file_, ": unknown key '", path,
         "'; valid keys: ", joinQuoted(valid, "'"));
  }

  // A key that is not one of `used` but nearly is (a typo of a section we read, which would
  // otherwise be silently ignored).
  void checkNotNearMiss(const std::string& key, const std::vector<std::string>& used,
                        const std::string& path) const {
    for (const std::string& u : used) {
      if (key.size() <= u.size() + 2 && u.size() <= key.size() + 2 && editDistance(key, u) <= 2) {
        fail(ExitCode::kUsage, file_, ": unknown key '", path, "'; did you mean '", u, "'?");
      }
    }
  }

  const Json& requireObject(const Json& v, const std::string& path) const {
    if (!v.is_object()) typeError(path, "an object", v);
    return v;
  }

  uint64_t readUnsigned(const Json& v, const std::string& path, uint64_t min, uint64_t max,
                        const std::string& expected) const {
    uint64_t value = 0;
    if (v.is_number_unsigned()) {
      value = v.get<uint64_t>();
    } else if (v.is_number_integer() && v.get<int64_t>() >= 0) {
      value = static_cast<uint64_t>(v.get<int64_t>());
    } else {
      typeError(path, expected, v);
    }
    if (value < min || value > max) typeError(path, expected, v);
    return value;
  }

  // An NNCF key that takes the values of option `o` (its range and wording).
  uint64_t readRanged(const Json& v, const std::string& path, const Option& o) const {
    return readUnsigned(v, path, o.min, o.max, o.expected);
  }

  // Relative paths in the file are relative to the file's directory.
  std::string resolve(const std::string& p) const {
    const fs::path path(p);
    const fs::path dir = fs::path(file_).parent_path();
    if (path.is_absolute() || dir.empty() || p == "synthetic") return p;
    return (dir / path).lexically_normal().string();
  }

  Value readValue(const Option& o, const Json& v, const std::string& p) const {
    switch (o.type) {
      case OptionType::kPath:
        if (!v.is_string() || v.get<std::string>().empty()) typeError(p, "a path string", v);
        return resolve(v.get<std::string>());
      case OptionType::kText:
        if (!v.is_string()) typeError(p, o.expected, v);
        return v.get<std::string>();
      case OptionType::kUnsigned:
        return readUnsigned(v, p, o.min, o.max, o.expected);
      case OptionType::kBool:
        if (!v.is_boolean()) typeError(p, "true or false", v);
        return v.get<bool>();
      case OptionType::kChoice:
        if (!v.is_string() ||
            std::find(o.choices.begin(), o.choices.end(), v.get<std::string>()) ==
                o.choices.end()) {
          typeError(p, choiceList(o, "\""), v);
        }
        return v.get<std::string>();
      case OptionType::kFraction:
        if (!v.is_number() || !(v.get<double>() >= 0.0 && v.get<double>() <= 1.0)) {
          typeError(p, "a number from 0 to 1", v);
        }
        return v.get<double>();
      case OptionType::kFloatList: {
        const std::string expected = "a finite number or a non-empty array of them";
        std::vector<float> list;
        const Json items = v.is_array() ? v : Json::array({v});
        if (items.empty()) typeError(p, expected, v);
        for (std::size_t i = 0; i < items.size(); ++i) {
          if (!items[i].is_number() || !std::isfinite(items[i].get<double>()) ||
              std::abs(items[i].get<double>()) > 1e30) {
            typeError(v.is_array() ? io::jsonElement(p, i) : p, expected, items[i]);
          }
          list.push_back(items[i].get<float>());
        }
        return list;
      }
    }
    return false;
  }

  void readSection(const Json& section, const std::string& path) {
    requireObject(section, path);
    for (const auto& [key, v] : section.items()) {
      const std::string p = io::jsonChild(path, key);
      const Option* option = optionByKey(key);
      if (option == nullptr) unknownKey(p, key, sectionKeys());
      out_.section[key] = readValue(*option, v, p);
    }
  }

  void readInputInfo(const Json& v, const std::string& path) {
    if (v.is_array()) {
      BNA_CHECK(!v.empty(), ExitCode::kUsage, file_, ": ", path,
                ": expected one input, found an empty list");
      BNA_CHECK(v.size() == 1, ExitCode::kUsage, file_, ": ", path, ": ", v.size(),
                " entries: multiple inputs not supported");
      readOneInput(v[0], io::jsonElement(path, 0));
      return;
    }
    if (!v.is_object()) typeError(path, "an object or a list of one object", v);
    readOneInput(v, path);
  }

  void readOneInput(const Json& v, const std::string& path) {
    requireObject(v, path);
    bool have_size = false;
    for (const auto& [key, value] : v.items()) {
      const std::string p = io::jsonChild(path, key);
      if (key != "sample_size") {
        out_.ignored_keys.push_back(p);
        continue;
      }
      const std::string expected = "an array of at least 2 positive integers";
      if (!value.is_array() || value.size() < 2) typeError(p, expected, value);
      uint64_t numel = 1;  // per sample, at most kMaxDim: no size computation can overflow
      for (std::size_t i = 0; i < value.size(); ++i) {
        const uint64_t dim = readUnsigned(value[i], io::jsonElement(p, i), 1, kMaxDim,
                                          "a positive integer at most 2147483647");
        if (i == 0) continue;  // the batch dimension
        numel = dim > kMaxDim / numel ? kMaxDim + 1 : numel * dim;
        BNA_CHECK(numel <= kMaxDim, ExitCode::kUsage, file_, ": ", p, ": ", io::shorten(value.dump()),
                  " makes samples of more than 2147483647 values");
        out_.sample_shape.push_back(static_cast<int64_t>(dim));
      }
      have_size = true;
    }
    BNA_CHECK(have_size, ExitCode::kUsage, file_, ": ", path,
              ": missing \"sample_size\" (e.g. [1, 3, 224, 224], batch dimension first)");
  }

  void readCompression(const Json& v, const std::string& path) {
    if (v.is_object()) {
      readAlgorithm(v, path);
      return;
    }
    if (!v.is_array()) typeError(path, "an object or a list of objects", v);
    for (std::size_t i = 0; i < v.size(); ++i) readAlgorithm(v[i], io::jsonElement(path, i));
  }

  void readAlgorithm(const Json& v, const std::string& path) {
    requireObject(v, path);
    bool have_algorithm = false;
    for (const auto& [key, value] : v.items()) {
      const std::string p = io::jsonChild(path, key);
      if (key == "algorithm") {
        if (!value.is_string() || value.get<std::string>().empty()) {
          typeError(p, "an algorithm name string", value);
        }
        out_.algorithms.push_back(value.get<std::string>());
        have_algorithm = true;
      } else if (key == "initializer") {
        readInitializer(value, p);
      } else {
        out_.ignored_keys.push_back(p);
      }
    }
    BNA_CHECK(have_algorithm, ExitCode::kUsage, file_, ": ", path,
              ": missing \"algorithm\" (e.g. \"quantization\")");
  }

  void readInitializer(const Json& v, const std::string& path) {
    requireObject(v, path);
    for (const auto& [key, value] : v.items()) {
      const std::string p = io::jsonChild(path, key);
      if (key == "batchnorm_adaptation") {
        readBnAdaptation(value, p);
      } else {
        out_.ignored_keys.push_back(p);
      }
    }
  }

  void readBnAdaptation(const Json& v, const std::string& path) {
    requireObject(v, path);
    for (const auto& [key, value] : v.items()) {
      const std::string p = io::jsonChild(path, key);
      if (key == kNncfSamplesKey) {
        const uint64_t n = readRanged(value, p, *optionByKey("samples"));
        out_.nncf_samples.emplace_back(p, static_cast<int64_t>(n));
      } else if (key == "num_bn_forget_samples") {
        out_.ignored_keys.push_back(p);
      } else {
        unknownKey(p, key, bnAdaptationKeys());
      }
    }
  }

  std::string file_;
  FileValues out_;
};

Json parseConfigText(const std::string& text, const std::string& file) {
  BNA_CHECK(text.size() <= kMaxConfigBytes, ExitCode::kUsage, file, ": config file is ",
            text.size(), " bytes; at most ", kMaxConfigBytes, " are allowed");
  BNA_CHECK(text.find_first_not_of(" \t\r\n") != std::string::npos, ExitCode::kUsage, file,
            ": config file is empty");
  io::JsonSource source;
  source.name = file;
  source.code = ExitCode::kUsage;
  source.text_kind = "a config file";
  source.max_depth = kMaxDepth;
  source.allow_comments = true;
  // Values of top-level keys we do not read are checked but not kept, nor a top-level
  // array's elements (only its type matters: an error).
  source.keep = [](const std::vector<std::string>& keys) {
    const auto& used = usedTopLevelKeys();
    return !keys.empty() && std::find(used.begin(), used.end(), keys[0]) != used.end();
  };
  Json root = io::parseJson<Json>(text, source);
  BNA_CHECK(root.is_object(), ExitCode::kUsage, file,
            ": the top level must be a JSON object, found ", io::describeJson(root));
  return root;
}

}  // namespace

std::string readConfigText(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    fail(ExitCode::kUsage, path,
         ": cannot read config file: ", ec ? ec.message() : std::string("no such file"));
  }
  BNA_CHECK(!fs::is_directory(st), ExitCode::kUsage, path,
            ": cannot read config file: it is a directory");
  if (fs::is_regular_file(st)) {  // refused before reading
    const std::uintmax_t size = fs::file_size(path, ec);
    BNA_CHECK(ec || size <= kMaxConfigBytes, ExitCode::kUsage, path, ": config file is ", size,
              " bytes; at most ", kMaxConfigBytes, " are allowed");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    fail(ExitCode::kUsage, path,
         ": cannot read config file: ", err != 0 ? std::strerror(err) : "open failed");
  }
  // Bounded also where the size is unknown (a pipe, /dev/zero) or grows while we read.
  std::string text;
  std::vector<char> chunk(std::size_t{1} << 16);
  while (in && text.size() <= kMaxConfigBytes) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    text.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
  }
  BNA_CHECK(!in.bad(), ExitCode::kUsage, path, ": cannot read config file: read error");
  BNA_CHECK(text.size() <= kMaxConfigBytes, ExitCode::kUsage, path, ": config file is more than ",
            kMaxConfigBytes, " bytes; at most ", kMaxConfigBytes, " are allowed");
  return text;
}

FileValues readConfigFile(const std::string& text, const std::string& path) {
  return ConfigReader(path).read(parseConfigText(text, path));
}

}  // namespace bnadapt::config
