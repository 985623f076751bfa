#include "config/config_loader.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <system_error>
#include <unordered_set>
#include <utility>
#include <variant>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace bnadapt::config {
namespace {

// Object keys iterate in sorted order (std::map), so ignored keys are listed sorted by path.
using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kMaxSamples = 1000000000000ULL;  // 1e12
constexpr uint64_t kMaxBatchSize = 1000000;
constexpr int64_t kDefaultBatchSize = 32;
constexpr uint64_t kMaxThreads = 65536;
constexpr uint64_t kMaxTimeout = 10000000;
constexpr uint64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr uint64_t kMaxSeed = std::numeric_limits<uint64_t>::max();
constexpr int kMaxDepth = 64;
constexpr std::uintmax_t kMaxConfigBytes = 16u << 20;
constexpr std::size_t kMaxShown = 60;  // longest found value quoted in a message

const char* const kSection = "bnadapt_dist";
const char* const kBnAdaptationPath = "initializer.batchnorm_adaptation";
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

std::string joinQuoted(const std::vector<std::string>& items, const std::string& quote) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out.append(quote).append(items[i]).append(quote);
  }
  return out;
}

// Length of the UTF-8 sequence starting at s[i] (2 to 4), or 0 when s[i] does not start a
// well-formed one (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
std::size_t utf8Length(const std::string& s, std::size_t i) {
  const auto byte = [&s](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return n;
}

// `s` made safe for one line of a message, at most about `max` bytes of it shown ("..." after
// a cut): control characters and DEL become \n, \t, \r or \u00XX; U+0085, U+2028 and U+2029
// (line breaks to some readers) and U+FEFF (invisible) \uXXXX; bytes that are not UTF-8 \xXX.
// Config text is hostile input: a key may hold a newline, a NUL or megabytes, and a message
// echoes it.
std::string shorten(const std::string& s, std::size_t max = kMaxShown) {
  static const char* const kHex = "0123456789abcdef";
  std::string out;
  const auto escape = [&out](const char* prefix, unsigned char c) {  // prefix + 2 hex digits
    out += prefix;
    out += kHex[c >> 4];
    out += kHex[c & 15];
  };
  std::size_t shown = 0;  // bytes of `s` consumed
  for (std::size_t i = 0; i < s.size(); i += shown) {
    if (out.size() >= max) return out + "...";
    const auto c = static_cast<unsigned char>(s[i]);
    shown = 1;
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      escape("\\u00", c);
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else if ((shown = utf8Length(s, i)) == 0) {
      shown = 1;
      escape("\\x", c);
    } else {
      const std::string seq = s.substr(i, shown);
      if (seq == "\xC2\x85") {
        out += "\\u0085";
      } else if (seq == "\xE2\x80\xA8") {
        out += "\\u2028";
      } else if (seq == "\xE2\x80\xA9") {
        out += "\\u2029";
      } else if (seq == "\xEF\xBB\xBF") {
        out += "\\ufeff";
      } else {
        out += seq;
      }
    }
  }
  return out;
}

// "string \"64\"", "number 64.5", "boolean true", "null", "object", "array".
std::string describe(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean:
      return std::string("boolean ") + (v.get<bool>() ? "true" : "false");
    case Json::value_t::string: return "string " + shorten(v.dump());
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "number " + shorten(v.dump());
    case Json::value_t::object: return "object";
    case Json::value_t::array: return "array";
    default: return v.type_name();
  }
}

// JSON paths are for messages: keys are shown as shorten() shows them.
std::string child(const std::string& path, const std::string& key) {
  return path.empty() ? shorten(key) : path + "." + shorten(key);
}

std::string element(const std::string& path, std::size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix, made printable.
// The message quotes the token being read ("last read: '...'"), which can be megabytes of
// the file: a long `last_token` is cut to its end, where the offending character is.
std::string jsonMessage(const std::string& what, const std::string& last_token = "") {
  const std::string prefix = "[json.exception.";
  std::string message = what;
  if (what.compare(0, prefix.size(), prefix) == 0) {
    const auto end = what.find("] ");
    if (end != std::string::npos) message = what.substr(end + 2);
  }
  const std::size_t at =
      last_token.size() > kMaxShown ? message.find(last_token) : std::string::npos;
  if (at != std::string::npos) {
    message.replace(at, last_token.size(),
                    "..." + last_token.substr(last_token.size() - kMaxShown));
  }
  return shorten(message, 400);  // nlohmann's own text is shorter
}

// ---------------------------------------------------------------------------------------------
// Reading and parsing the file.

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

// One pass over the text as a SAX handler that checks what nlohmann's parser does not and
// builds the document: syntax errors with their byte position, duplicate keys and nesting
// deeper than kMaxDepth with their JSON path. Values of top-level keys we do not read are
// checked but not kept (they become null), so megabytes of other NNCF settings cost only the
// scan. Linear in the size of the text and never recursive. (nlohmann's DOM parser with a
// callback rescans the parent container at every object end: quadratic for large arrays of
// objects.)
class ConfigParser {
 public:
  explicit ConfigParser(const std::string& file) : file_(file) {}

  bool null() { return value(nullptr); }
  bool boolean(bool v) { return value(v); }
  bool number_integer(Json::number_integer_t v) { return value(v); }
  bool number_unsigned(Json::number_unsigned_t v) { return value(v); }
  bool number_float(Json::number_float_t v, const std::string& /*unused*/) { return value(v); }
  bool string(std::string& v) { return value(std::move(v)); }
  bool binary(Json::binary_t& /*unused*/) { return value(nullptr); }  // not in JSON text
  bool start_object(std::size_t /*unused*/) { return start(Json::object()); }
  bool start_array(std::size_t /*unused*/) { return start(Json::array()); }
  bool end_object() { return end(); }
  bool end_array() { return end(); }

  bool key(std::string& key) {
    Frame& top = frames_.back();
    if (!top.keys.insert(key).second) {
      fail(ExitCode::kUsage, file_, ": duplicate key '", child(parentPath(), key), "'");
    }
    if (frames_.size() == 1) {  // a top-level key: keep its value only if we read it
      const auto& used = usedTopLevelKeys();
      skipping_ = std::find(used.begin(), used.end(), key) == used.end();
    }
    if (top.node != nullptr) slot_ = &(*top.node)[key];  // null until its value arrives
    top.key = std::move(key);
    return true;
  }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::json::exception& ex) {
    fail(ExitCode::kUsage, file_, ": invalid JSON at byte ", position, ": ",
         jsonMessage(ex.what(), last_token));
  }

  Json takeRoot() { return std::move(root_); }

 private:
  struct Frame {
    bool is_object;
    Json* node;                            // the container being built; nullptr: skipped
    std::unordered_set<std::string> keys;  // objects: keys seen so far
    std::string key;                       // objects: key of the value being parsed
    std::size_t index;                     // arrays: index of the element being parsed
    std::size_t count;                     // arrays: elements started so far
  };

  // Stores a value in the open container (or as the root); nullptr when it is not kept.
  Json* place(Json&& v) {
    if (frames_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Frame& top = frames_.back();
    if (!top.is_object) top.index = top.count++;
    if (top.node == nullptr || skipping_) return nullptr;
    if (top.is_object) {
      *slot_ = std::move(v);
      return slot_;
    }
    top.node->push_back(std::move(v));
    return &top.node->back();
  }

  template <typename T>
  bool value(T&& v) {
    place(Json(std::forward<T>(v)));
    return true;
  }

  bool start(Json&& empty) {
    if (frames_.size() >= static_cast<std::size_t>(kMaxDepth)) {
      Frame& top = frames_.back();
      if (!top.is_object) top.index = top.count;  // the path names the element being opened
      fail(ExitCode::kUsage, file_, ": JSON nested deeper than ", kMaxDepth, " levels at '",
           shorten(path(frames_.size())), "'");
    }
    const bool is_object = empty.is_object();
    Json* node = place(std::move(empty));
    // The elements of a top-level array are not kept: only its type matters (an error).
    if (frames_.empty() && !is_object) node = nullptr;
    frames_.push_back(Frame{is_object, node, {}, {}, 0, 0});
    return true;
  }

  bool end() {
    frames_.pop_back();
    if (frames_.size() == 1) skipping_ = false;  // the next top-level key decides again
    return true;
  }

  // JSON path of the value being parsed inside the first `depth` open containers.
  std::string path(std::size_t depth) const {
    std::string out;
    for (std::size_t i = 0; i < depth; ++i) {
      const Frame& f = frames_[i];
      out = f.is_object ? child(out, f.key) : element(out, f.index);
    }
    return out;
  }

  // JSON path of the innermost open container.
  std::string parentPath() const { return path(frames_.empty() ? 0 : frames_.size() - 1); }

  std::string file_;
  std::vector<Frame> frames_;
  Json root_;
  Json* slot_ = nullptr;   // objects: where the value of the last key goes
  bool skipping_ = false;  // inside the value of a top-level key we do not read
};

Json parseConfigText(const std::string& text, const std::string& file) {
  BNA_CHECK(text.size() <= kMaxConfigBytes, ExitCode::kUsage, file, ": config file is ",
            text.size(), " bytes; at most ", kMaxConfigBytes, " are allowed");
  BNA_CHECK(text.find_first_not_of(" \t\r\n") != std::string::npos, ExitCode::kUsage, file,
            ": config file is empty");
  // nlohmann's lexer takes a NUL byte for the end of the input and would ignore the rest.
  if (const std::size_t nul = text.find('\0'); nul != std::string::npos) {
    const std::size_t line_start = text.rfind('\n', nul);
    fail(ExitCode::kUsage, file, ": invalid JSON at byte ", nul + 1, ": NUL byte at line ",
         std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(nul), '\n') + 1,
         ", column ", line_start == std::string::npos ? nul + 1 : nul - line_start,
         " (a config file is UTF-8 text)");
  }
  ConfigParser parser(file);
  try {
    Json::sax_parse(text, &parser, nlohmann::json::input_format_t::json, /*strict=*/true,
                    /*ignore_comments=*/true);
  } catch (const nlohmann::json::exception& e) {  // not expected: parse errors come above
    fail(ExitCode::kUsage, file, ": invalid JSON: ", jsonMessage(e.what()));
  }
  Json root = parser.takeRoot();
  BNA_CHECK(root.is_object(), ExitCode::kUsage, file,
            ": the top level must be a JSON object, found ", describe(root));
  return root;
}


// ---------------------------------------------------------------------------------------------
// The options: one table for the command line and the config's "bnadapt_dist" section.

// A parsed option value; which alternative depends on the option's type.
using Value = std::variant<bool, uint64_t, double, std::string, std::vector<float>>;
using Values = std::map<std::string, Value>;  // option key -> value

enum class Type {
  kPath,       // non-empty string; relative paths in the file resolve against its folder
  kText,       // any string
  kUnsigned,   // integer in [min, max]
  kBool,       // a flag without value; true/false in the file
  kChoice,     // one of `choices`
  kFraction,   // a number in [0, 1]
  kFloatList,  // numbers: "a,b,c" on the command line, a number or an array in the file
};

struct Option {
  const char* flag;  // command line name without "--"
  const char* key;   // key in the "bnadapt_dist" section
  Type type;
  uint64_t min = 0;
  uint64_t max = 0;
  const char* expected = "";  // kUnsigned, kText: what a valid value is
  std::vector<std::string> choices = {};
};

const std::string kPositiveSamples = "a positive integer at most 1000000000000";
const std::string kPositiveBatch = "a positive integer at most 1000000";

// In usage() order. "config" is a flag only.
const std::vector<Option>& options() {
  static const std::vector<Option> table = {
      {"config", "", Type::kPath},
      {"model", "model", Type::kPath},
      {"data", "data", Type::kPath},
      {"data-format", "data_format", Type::kChoice, 0, 0, "",
       {"auto", "tensor", "imagefolder", "idx", "synthetic"}},
      {"samples", "samples", Type::kUnsigned, 1, kMaxSamples, kPositiveSamples.c_str()},
      {"batch-size", "batch_size", Type::kUnsigned, 1, kMaxBatchSize, kPositiveBatch.c_str()},
      {"weighting", "weighting", Type::kChoice, 0, 0, "", {"samples", "batches"}},
      {"shuffle", "shuffle", Type::kBool},
      {"seed", "seed", Type::kUnsigned, 0, kMaxSeed, "a non-negative integer below 2^64"},
      {"mean", "mean", Type::kFloatList},
      {"std", "std", Type::kFloatList},
      {"resize", "resize", Type::kUnsigned, 1, kMaxDim, "a positive integer (pixels)"},
      {"data-threads", "data_threads", Type::kUnsigned, 0, kMaxThreads,
       "a non-negative integer at most 65536"},
      {"prefetch-batches", "prefetch_batches", Type::kUnsigned, 1, 1024,
       "a positive integer at most 1024"},
      {"skip-corrupt", "skip_corrupt", Type::kBool},
      {"max-skip-fraction", "max_skip_fraction", Type::kFraction},
      {"eval", "eval", Type::kBool},
      {"eval-data", "eval_data", Type::kPath},
      {"eval-samples", "eval_samples", Type::kUnsigned, 1, kMaxSamples,
       kPositiveSamples.c_str()},
      {"output", "output", Type::kPath},
      {"stats-output", "stats_output", Type::kPath},
      {"report", "report", Type::kPath},
      {"checkpoint", "checkpoint", Type::kPath},
      {"checkpoint-output", "checkpoint_output", Type::kPath},
      {"checkpoint-key", "checkpoint_key", Type::kText, 0, 0,
       "a string such as \"model\" or \"model:module.\""},
      {"in-place", "in_place", Type::kBool},
      {"weights-from", "weights_from", Type::kChoice, 0, 0, "", {"checkpoint", "model"}},
      {"overwrite", "overwrite", Type::kBool},
      {"device", "device", Type::kChoice, 0, 0, "", {"auto", "cpu", "cuda"}},
      {"backend", "backend", Type::kChoice, 0, 0, "", {"auto", "nccl", "mpi"}},
      {"allow-gpu-sharing", "allow_gpu_sharing", Type::kBool},
      {"channels-last", "channels_last", Type::kBool},
      {"autocast", "autocast", Type::kChoice, 0, 0, "", {"off", "bf16"}},
      {"threads", "threads", Type::kUnsigned, 0, kMaxThreads,
       "a non-negative integer at most 65536"},
      {"timeout", "timeout", Type::kUnsigned, 0, kMaxTimeout,
       "a number of seconds from 0 (off) to 10000000"},
  };
  return table;
}

// Keys of the "bnadapt_dist" section, in usage() order.
std::vector<std::string> sectionKeys() {
  std::vector<std::string> keys;
  for (const Option& o : options()) {
    if (*o.key) keys.emplace_back(o.key);
  }
  return keys;
}

// "'samples' or 'batches'", "'a', 'b' or 'c'".
std::string choiceList(const Option& o, const std::string& quote) {
  std::string out;
  for (std::size_t i = 0; i < o.choices.size(); ++i) {
    if (i > 0) out += i + 1 == o.choices.size() ? " or " : ", ";
    out += quote + o.choices[i] + quote;
  }
  return out;
}

// Values read from the config file; absent ones stay empty.
struct FileValues {
  Values section;  // the "bnadapt_dist" section, by option key
  std::optional<int64_t> batch_size;  // top-level batch_size (NNCF)
  // compression[*].initializer.batchnorm_adaptation.num_bn_adaptation_samples: (path, value).
  std::vector<std::pair<std::string, int64_t>> nncf_samples;
  std::vector<int64_t> sample_shape;
  std::vector<std::string> algorithms;
  std::vector<std::string> ignored_keys;
};

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
            static_cast<int64_t>(readUnsigned(value, key, 1, kMaxBatchSize, kPositiveBatch));
      } else {
        checkNotNearMiss(key, usedTopLevelKeys(), child("", key));
        out_.ignored_keys.push_back(child("", key));
      }
    }
    return std::move(out_);
  }

 private:
  [[noreturn]] void typeError(const std::string& path, const std::string& expected,
                              const Json& found) const {
    fail(ExitCode::kUsage, file_, ": ", path, ": expected ", expected, ", found ", describe(found));
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

  // Relative paths in the file are relative to the file's directory.
  std::string resolve(const std::string& p) const {
    const fs::path path(p);
    const fs::path dir = fs::path(file_).parent_path();
    if (path.is_absolute() || dir.empty() || p == "synthetic") return p;
    return (dir / path).lexically_normal().string();
  }

  Value readValue(const Option& o, const Json& v, const std::string& p) const {
    switch (o.type) {
      case Type::kPath:
        if (!v.is_string() || v.get<std::string>().empty()) typeError(p, "a path string", v);
        return resolve(v.get<std::string>());
      case Type::kText:
        if (!v.is_string()) typeError(p, o.expected, v);
        return v.get<std::string>();
      case Type::kUnsigned:
        return readUnsigned(v, p, o.min, o.max, o.expected);
      case Type::kBool:
        if (!v.is_boolean()) typeError(p, "true or false", v);
        return v.get<bool>();
      case Type::kChoice:
        if (!v.is_string() ||
            std::find(o.choices.begin(), o.choices.end(), v.get<std::string>()) ==
                o.choices.end()) {
          typeError(p, choiceList(o, "\""), v);
        }
        return v.get<std::string>();
      case Type::kFraction:
        if (!v.is_number() || !(v.get<double>() >= 0.0 && v.get<double>() <= 1.0)) {
          typeError(p, "a number from 0 to 1", v);
        }
        return v.get<double>();
      case Type::kFloatList: {
        const std::string expected = "a finite number or a non-empty array of them";
        std::vector<float> list;
        const Json items = v.is_array() ? v : Json::array({v});
        if (items.empty()) typeError(p, expected, v);
        for (std::size_t i = 0; i < items.size(); ++i) {
          if (!items[i].is_number() || !std::isfinite(items[i].get<double>()) ||
              std::abs(items[i].get<double>()) > 1e30) {
            typeError(v.is_array() ? element(p, i) : p, expected, items[i]);
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
      const std::string p = child(path, key);
      const std::string& name = key;  // a lambda may not capture a structured binding (C++17)
      const auto it = std::find_if(options().begin(), options().end(),
                                   [&](const Option& o) { return *o.key && name == o.key; });
      if (it == options().end()) unknownKey(p, key, sectionKeys());
      out_.section[key] = readValue(*it, v, p);
    }
  }

  void readInputInfo(const Json& v, const std::string& path) {
    if (v.is_array()) {
      BNA_CHECK(!v.empty(), ExitCode::kUsage, file_, ": ", path,
                ": expected one input, found an empty list");
      BNA_CHECK(v.size() == 1, ExitCode::kUsage, file_, ": ", path, ": ", v.size(),
                " entries: multiple inputs not supported");
      readOneInput(v[0], element(path, 0));
      return;
    }
    if (!v.is_object()) typeError(path, "an object or a list of one object", v);
    readOneInput(v, path);
  }

  void readOneInput(const Json& v, const std::string& path) {
    requireObject(v, path);
    bool have_size = false;
    for (const auto& [key, value] : v.items()) {
      const std::string p = child(path, key);
      if (key != "sample_size") {
        out_.ignored_keys.push_back(p);
        continue;
      }
      const std::string expected = "an array of at least 2 positive integers";
      if (!value.is_array() || value.size() < 2) typeError(p, expected, value);
      uint64_t numel = 1;  // per sample, at most kMaxDim: no size computation can overflow
      for (std::size_t i = 0; i < value.size(); ++i) {
        const uint64_t dim = readUnsigned(value[i], element(p, i), 1, kMaxDim,
                                          "a positive integer at most 2147483647");
        if (i == 0) continue;  // the batch dimension
        numel = dim > kMaxDim / numel ? kMaxDim + 1 : numel * dim;
        BNA_CHECK(numel <= kMaxDim, ExitCode::kUsage, file_, ": ", p, ": ", shorten(value.dump()),
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
    for (std::size_t i = 0; i < v.size(); ++i) readAlgorithm(v[i], element(path, i));
  }

  void readAlgorithm(const Json& v, const std::string& path) {
    requireObject(v, path);
    bool have_algorithm = false;
    for (const auto& [key, value] : v.items()) {
      const std::string p = child(path, key);
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
      const std::string p = child(path, key);
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
      const std::string p = child(path, key);
      if (key == kNncfSamplesKey) {
        const uint64_t n = readUnsigned(value, p, 1, kMaxSamples, kPositiveSamples);
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

// ---------------------------------------------------------------------------------------------
// Command line.

// Strict decimal parse: digits only, no sign, no spaces; nullopt on overflow.
std::optional<uint64_t> parseDecimal(const std::string& s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t value = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

// Strict number parse (the whole string, finite); nullopt otherwise.
std::optional<double> parseNumber(const std::string& s) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  return v;
}

Value flagValue(const Option& o, const std::string& flag, const std::string& value) {
  const auto bad = [&](const std::string& expected) {
    fail(ExitCode::kUsage, "option '", flag, "': expected ", expected, ", found '",
         shorten(value), "'");
  };
  switch (o.type) {
    case Type::kPath:
    case Type::kText:
      return value;
    case Type::kBool:
      return true;
    case Type::kUnsigned: {
      const std::optional<uint64_t> v = parseDecimal(value);
      if (!v || *v < o.min || *v > o.max) bad(o.expected);
      return *v;
    }
    case Type::kChoice:
      if (std::find(o.choices.begin(), o.choices.end(), value) == o.choices.end()) {
        bad(choiceList(o, "'"));
      }
      return value;
    case Type::kFraction: {
      const std::optional<double> v = parseNumber(value);
      if (!v || *v < 0.0 || *v > 1.0) bad("a number from 0 to 1");
      return *v;
    }
    case Type::kFloatList: {
      std::vector<float> list;
      std::size_t start = 0;
      for (;;) {
        const std::size_t comma = value.find(',', start);
        const std::optional<double> v = parseNumber(value.substr(start, comma - start));
        if (!v || std::abs(*v) > 1e30) bad("numbers separated by commas, e.g. 0.485,0.456,0.406");
        list.push_back(static_cast<float>(*v));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      return list;
    }
  }
  return false;
}

[[noreturn]] void unknownOption(const std::string& flag) {
  std::vector<std::string> names;
  for (const Option& o : options()) names.emplace_back(o.flag);
  names.emplace_back("help");
  std::string bare = flag;
  bare.erase(0, bare.find_first_not_of('-'));
  const std::string near = nearestKey(bare, names);
  if (!near.empty()) {
    fail(ExitCode::kUsage, "unknown option '", shorten(flag), "'; did you mean '--", near, "'?");
  }
  fail(ExitCode::kUsage, "unknown option '", shorten(flag), "'; valid options: --", [&names] {
    std::string all;
    for (std::size_t i = 0; i < names.size(); ++i) all += (i ? ", --" : "") + names[i];
    return all;
  }());
}

// Flag values by option key ("config" for --config).
Values parseFlags(const std::vector<std::string>& args) {
  Values out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg[0] != '-' || arg == "--") {
      fail(ExitCode::kUsage, "unexpected argument '", shorten(arg),
           "': options are --name VALUE or --name=VALUE (see --help)");
    }
    const std::size_t eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);
    const auto spec = std::find_if(options().begin(), options().end(), [&](const Option& o) {
      return flag == std::string("--") + o.flag;
    });
    if (spec == options().end()) unknownOption(flag);
    const std::string key = *spec->key ? spec->key : spec->flag;
    // A switch given twice means the same; a value given twice is ambiguous.
    BNA_CHECK(out.count(key) == 0 || spec->type == Type::kBool, ExitCode::kUsage, "option '",
              flag, "' given more than once");
    if (spec->type == Type::kBool) {
      BNA_CHECK(eq == std::string::npos, ExitCode::kUsage, "option '", flag, "' takes no value");
      out[key] = true;
      continue;
    }
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      BNA_CHECK(i + 1 < args.size(), ExitCode::kUsage, "option '", flag, "' needs a value");
      const std::string& next = args[i + 1];
      BNA_CHECK(next.compare(0, 2, "--") != 0 || next.size() == 2, ExitCode::kUsage, "option '",
                flag, "' needs a value, found option '", shorten(next), "'");
      value = next;
      ++i;
    }
    BNA_CHECK(!value.empty(), ExitCode::kUsage, "option '", flag, "' needs a non-empty value");
    out[key] = flagValue(*spec, flag, value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Merging.

// The flag's value, else the config section's, else `fallback`.
template <typename T>
T pick(const Values& flags, const Values& file, const std::string& key, T fallback) {
  for (const Values* values : {&flags, &file}) {
    const auto it = values->find(key);
    if (it != values->end()) return std::get<T>(it->second);
  }
  return fallback;
}

bool given(const Values& flags, const Values& file, const std::string& key) {
  return flags.count(key) > 0 || file.count(key) > 0;
}

std::string inConfig(const std::string& config) {
  return config.empty() ? std::string("in a --config file") : "in " + config;
}

int64_t pickSamples(const Values& flags, const FileValues& file, const std::string& config) {
  if (given(flags, file.section, "samples")) {
    return static_cast<int64_t>(pick<uint64_t>(flags, file.section, "samples", 0));
  }
  const auto& nncf = file.nncf_samples;
  if (nncf.empty()) {
    fail(ExitCode::kUsage, "no sample count given: pass --samples N or set ", kSection,
         ".samples or compression.", kBnAdaptationPath, ".", kNncfSamplesKey, " ",
         inConfig(config));
  }
  for (const auto& [path, value] : nncf) {
    if (value != nncf.front().second) {
      fail(ExitCode::kUsage, config, ": ", nncf.front().first, " = ", nncf.front().second, " and ",
           path, " = ", value, " disagree; pass --samples N or set ", kSection,
           ".samples to choose");
    }
  }
  return nncf.front().second;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::size_t editDistance(const std::string& a, const std::string& b) {
  const std::size_t n = a.size();
  const std::size_t m = b.size();
  // d_i[j]: distance between a[0, i) and b[0, j); three rows (i-2, i-1, i) of the table, so
  // memory is O(m) even for a key of megabytes.
  std::vector<std::size_t> before(m + 1), prev(m + 1), cur(m + 1);
  for (std::size_t j = 0; j <= m; ++j) prev[j] = j;
  for (std::size_t i = 1; i <= n; ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= m; ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      std::size_t best = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        best = std::min(best, before[j - 2] + 1);
      }
      cur[j] = best;
    }
    std::swap(before, prev);
    std::swap(prev, cur);
  }
  return prev[m];
}

std::string nearestKey(const std::string& key, const std::vector<std::string>& candidates) {
  const std::size_t limit = std::max<std::size_t>(2, key.size() / 3);
  std::string best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const std::string& c : candidates) {
    // The distance is at least the difference in length: skip what cannot be within `limit`
    // (a hostile key of megabytes would otherwise cost seconds per candidate).
    if (std::max(key.size(), c.size()) - std::min(key.size(), c.size()) > limit) continue;
    const std::size_t d = editDistance(key, c);
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best_distance <= limit ? best : std::string();
}

std::string usage() {
  return R"(Usage: bnadapt_dist [--config FILE] --model PATH --data PATH --samples N [options]

Recomputes the BatchNorm statistics of a TorchScript model over calibration data, with the
work spread across MPI ranks.

Options (each also as --name=VALUE; options override the config file):
  --config FILE        NNCF-style JSON config (comments allowed); its "bnadapt_dist"
                       section takes the options below as keys, with '_' for '-'
  --model PATH         TorchScript model                           (bnadapt_dist.model)
  --data PATH          calibration data: a .pt file or a folder of .pt shards, a folder of
                       class folders of images, a *-idx3-ubyte[.gz] file, or "synthetic"
                                                                   (bnadapt_dist.data)
  --data-format F      auto (default: from the path), tensor, imagefolder, idx, synthetic
  --samples N          number of calibration samples               (bnadapt_dist.samples, else
                       compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples)
  --batch-size N       batch size, default 32                      (bnadapt_dist.batch_size,
                                                                    else top-level batch_size)
  --weighting MODE     weight batch statistics by "samples" (default) or "batches"
  --shuffle            take the samples in a seeded random order (the same on every rank)
  --seed N             random seed for --shuffle and synthetic data, default 0
  --mean A[,B,C]       images and IDX: normalisation after scaling pixels to [0, 1]; default
  --std A[,B,C]          ImageNet's for images (0.485,0.456,0.406 / 0.229,0.224,0.225), 0 / 1
                         for IDX
  --resize N           images: shorter side before the centre crop; default crop / 0.875
                       (256 for 224); the crop is input_info.sample_size's H x W
  --data-threads N     decoding threads per rank; 0 (default) = half the rank's cores, >= 1
  --prefetch-batches N batches decoded ahead of the forward passes, default 4
  --skip-corrupt       leave unreadable samples out (counted in the report) instead of failing
  --max-skip-fraction F  with --skip-corrupt, fail when more than this fraction of the samples
                       is skipped, default 0.01
  --eval               measure top-1 accuracy before and after adaptation on --eval-data
  --eval-data PATH     labelled evaluation data (any format above with labels)
  --eval-samples N     evaluate on the first N samples of --eval-data (default: all)
  --output PATH        write the model with the new BatchNorm buffers
  --stats-output PATH  write the BatchNorm buffers alone
  --report PATH        write a JSON report
  --threads N          intra-op threads per rank; 0 (default) = cores / local ranks
  --device D           auto (default: a CUDA GPU when this build and LibTorch have CUDA and
                       one is visible, else the CPU), cpu, cuda
  --backend B          all-reduce: auto (NCCL on CUDA when built with it, else MPI), nccl, mpi
  --allow-gpu-sharing  let more local ranks than GPUs share them (default: an error)
  --channels-last      channels-last layout for 4-d weights and inputs (faster convolutions)
  --autocast P         off (default: the model's precision) or bf16 (faster, less precise
                       activations; statistics still accumulate in float64)
  --checkpoint IN      a training checkpoint (torch.save zip or .safetensors) to receive the
                       new BN buffers                              (bnadapt_dist.checkpoint)
  --checkpoint-output OUT  where the patched checkpoint goes, with OUT.sha256
                                                               (bnadapt_dist.checkpoint_output)
  --checkpoint-key K   which state_dict in the checkpoint: "model" or "model:module."
                       (dict path, then key prefix)                (bnadapt_dist.checkpoint_key)
  --in-place           allow --checkpoint-output to equal --checkpoint (still atomic)
  --weights-from W     with --checkpoint: checkpoint (default: every parameter and buffer
                       from its state_dict, the model file gives the architecture) or model
                       (the model's own, refused unless equal to the checkpoint's)
                                                                (bnadapt_dist.weights_from)
  --overwrite          replace outputs that exist already (otherwise an error, exit 6)
  --timeout SECONDS    end the job (exit 8) when a rank makes no progress for this long,
                       default 900, 0 = never                      (bnadapt_dist.timeout)
  -h, --help           print this help and exit

The sample shape comes from the config's input_info.sample_size (batch dimension first).
Every option can be set in the config's "bnadapt_dist" section ('_' for '-').
Relative paths in the config file are relative to the config file's directory.
Exit codes: 0 ok, 1 internal, 2 usage, 3 data, 4 model, 5 communication, 6 output,
7 checkpoint, 8 timeout.
)";
}

namespace {

// The command line name of the option with config key `key`.
std::string flagOf(const std::string& key) {
  for (const Option& o : options()) {
    if (key == o.key) return o.flag;
  }
  return key;
}

// parseSettings() once the flags are parsed; `config_text` is the text of the --config file.
Settings settingsFrom(const Values& flags, const std::optional<std::string>& config_text) {
  Settings s;
  FileValues file;
  s.config_path = pick<std::string>(flags, {}, "config", "");
  if (config_text) {
    const Json root = parseConfigText(*config_text, s.config_path);
    file = ConfigReader(s.config_path).read(root);
  }
  const Values& sec = file.section;
  const std::string where = inConfig(s.config_path);
  const auto text = [&](const char* key) { return pick<std::string>(flags, sec, key, ""); };
  const auto number = [&](const char* key, uint64_t fallback) {
    return pick<uint64_t>(flags, sec, key, fallback);
  };
  const auto flag = [&](const char* key) { return pick<bool>(flags, sec, key, false); };

  BNA_CHECK(given(flags, sec, "model"), ExitCode::kUsage,
            "no model given: pass --model PATH or set ", kSection, ".model ", where);
  BNA_CHECK(given(flags, sec, "data"), ExitCode::kUsage,
            "no data given: pass --data PATH (or --data synthetic) or set ", kSection, ".data ",
            where);
  s.model_path = text("model");
  s.data_path = text("data");
  s.data_format = pick<std::string>(flags, sec, "data_format", "auto");
  s.sample_shape = file.sample_shape;
  s.samples = pickSamples(flags, file, s.config_path);
  s.batch_size = static_cast<int64_t>(
      number("batch_size", static_cast<uint64_t>(file.batch_size.value_or(kDefaultBatchSize))));
  s.weighting = pick<std::string>(flags, sec, "weighting", "samples") == "batches"
                    ? Weighting::kBatches
                    : Weighting::kSamples;
  s.shuffle = flag("shuffle");
  s.seed = number("seed", 0);
  s.mean = pick<std::vector<float>>(flags, sec, "mean", {});
  s.std = pick<std::vector<float>>(flags, sec, "std", {});
  s.resize_shorter = static_cast<int64_t>(number("resize", 0));
  s.data_threads = static_cast<int>(number("data_threads", 0));
  s.prefetch_batches = static_cast<int>(number("prefetch_batches", 4));
  s.skip_corrupt = flag("skip_corrupt");
  s.max_skip_fraction = pick<double>(flags, sec, "max_skip_fraction", 0.01);
  s.eval = flag("eval");
  s.eval_data_path = text("eval_data");
  s.eval_samples = static_cast<int64_t>(number("eval_samples", 0));
  s.output_path = text("output");
  s.stats_output_path = text("stats_output");
  s.report_path = text("report");
  s.threads = static_cast<int>(number("threads", 0));
  s.device = pick<std::string>(flags, sec, "device", "auto");
  s.backend = pick<std::string>(flags, sec, "backend", "auto");
  s.allow_gpu_sharing = flag("allow_gpu_sharing");
  s.channels_last = flag("channels_last");
  s.autocast = pick<std::string>(flags, sec, "autocast", "off");
  s.checkpoint_path = text("checkpoint");
  s.checkpoint_output_path = text("checkpoint_output");
  s.checkpoint_key = text("checkpoint_key");
  s.in_place = flag("in_place");
  s.weights_from = pick<std::string>(flags, sec, "weights_from", "checkpoint") == "model"
                       ? WeightsFrom::kModel
                       : WeightsFrom::kCheckpoint;
  s.overwrite = flag("overwrite");
  s.timeout_seconds = static_cast<int64_t>(number("timeout", 900));
  // Options that need each other. A message starts with the option that is set: "--flag"
  // when the command line set it, else the config file and the key's JSON path.
  const auto named = [&](const std::string& key) {
    return flags.count(key) ? "--" + flagOf(key) : s.config_path + ": " + kSection + "." + key;
  };
  const auto missing = [&](const std::string& key, const std::string& metavar) {
    return "--" + flagOf(key) + (metavar.empty() ? "" : " " + metavar) +
           (s.config_path.empty() ? "" : std::string(" or ") + kSection + "." + key);
  };
  BNA_CHECK(s.checkpoint_path.empty() == s.checkpoint_output_path.empty(), ExitCode::kUsage,
            s.checkpoint_path.empty()
                ? named("checkpoint_output") + " needs " + missing("checkpoint", "IN") +
                      " (the checkpoint to patch)"
                : named("checkpoint") + " needs " + missing("checkpoint_output", "OUT") +
                      " (where the patched copy goes)");
  BNA_CHECK(!s.in_place || !s.checkpoint_path.empty(), ExitCode::kUsage, named("in_place"),
            " applies to ", missing("checkpoint", ""), ", which is not given");
  BNA_CHECK(!given(flags, sec, "weights_from") || !s.checkpoint_path.empty(), ExitCode::kUsage,
            named("weights_from"), " applies to ", missing("checkpoint", ""), ", which is not given");
  BNA_CHECK(s.eval || (s.eval_data_path.empty() && s.eval_samples == 0), ExitCode::kUsage,
            named(s.eval_data_path.empty() ? "eval_samples" : "eval_data"), " applies to ",
            missing("eval", ""), ", which is not given");
  BNA_CHECK(!s.eval || !s.eval_data_path.empty(), ExitCode::kUsage, named("eval"), " needs ",
            missing("eval_data", "PATH"),
            ": labelled data (class folders, IDX labels or a tensor file with \"labels\") to "
            "measure top-1 on");
  BNA_CHECK(s.skip_corrupt || !given(flags, sec, "max_skip_fraction"), ExitCode::kUsage,
            named("max_skip_fraction"), " applies to ", missing("skip_corrupt", ""),
            ", which is not given");
  s.compression_algorithms = std::move(file.algorithms);
  s.ignored_keys = std::move(file.ignored_keys);
  return s;
}

}  // namespace

Settings parseSettings(const std::vector<std::string>& args) {
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") throw HelpRequested();
  }
  const Values flags = parseFlags(args);
  const std::string config = pick<std::string>(flags, {}, "config", "");
  return settingsFrom(flags, config.empty() ? std::nullopt
                                            : std::optional<std::string>(readConfigText(config)));
}

Settings parseSettingsFromText(const std::string& config_text,
                               const std::vector<std::string>& args) {
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") throw HelpRequested();
  }
  Values flags = parseFlags(args);
  if (flags.count("config") == 0) flags["config"] = std::string("<config>");
  return settingsFrom(flags, config_text);
}

}  // namespace bnadapt::config
