#include "checkpoint/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100 * 1000 * 1000;  // as the reference implementation
constexpr char kMetadataKey[] = "__metadata__";

std::string shapeText(c10::ArrayRef<int64_t> sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

// Byte size of one element, 0 for dtypes we keep opaque.
uint64_t itemSize(const std::string& dtype) {
  static const std::unordered_map<std::string, uint64_t> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"U16", 2},     {"U32", 4},
      {"U64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

// The ATen type a patch converts to; false if the dtype cannot be patched.
bool patchType(const std::string& dtype, c10::ScalarType* type) {
  static const std::unordered_map<std::string, c10::ScalarType> kTypes = {
      {"F32", c10::kFloat}, {"F16", c10::kHalf}, {"BF16", c10::kBFloat16},
      {"F64", c10::kDouble}, {"I64", c10::kLong}, {"I32", c10::kInt}};
  const auto it = kTypes.find(dtype);
  if (it == kTypes.end()) return false;
  *type = it->second;
  return true;
}

bool hostIsLittleEndian() {
  const uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// A tensor as the header describes it, offsets still relative to the data buffer.
struct RawEntry {
  std::string key;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint64_t> offsets;
  bool has_dtype = false, has_shape = false, has_offsets = false;
};

// SAX handler for the header. It checks the structure as it goes and keeps only the entries,
// so it is linear in the header size, uses memory proportional to the entries, and rejects
// duplicate keys (which a DOM parser would silently merge). It throws Error on the first
// problem.
class HeaderHandler {
 public:
  explicit HeaderHandler(const std::string& path) : path_(path) {}

  std::vector<RawEntry>& entries() { return entries_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }
  bool complete() const { return done_; }

  bool null() { return scalar("null"); }
  bool boolean(bool /*unused*/) { return scalar("a boolean"); }
  bool number_integer(Json::number_integer_t v) {
    if (v < 0) return integer(true, 0);
    return integer(false, static_cast<uint64_t>(v));
  }
  bool number_unsigned(Json::number_unsigned_t v) { return integer(false, v); }
  bool number_float(Json::number_float_t /*unused*/, const std::string& /*unused*/) {
    return scalar("a floating-point number");
  }
  bool string(std::string& s) {
    if (skip_ > 0) return true;
    if (state_ == State::kMetadata) {
      metadata_[field_] = s;
      return true;
    }
    if (state_ == State::kEntry && field_ == "dtype") {
      entries_.back().dtype = s;
      entries_.back().has_dtype = true;
      return true;
    }
    return scalar("a string");
  }
  bool binary(Json::binary_t& /*unused*/) { return scalar("binary data"); }

  bool start_object(std::size_t /*unused*/) {
    if (skip_ > 0) return ++skip_, true;
    switch (state_) {
      case State::kStart:
        state_ = State::kTop;
        return true;
      case State::kTop:
        if (field_ == kMetadataKey) {
          state_ = State::kMetadata;
        } else {
          state_ = State::kEntry;
          entries_.emplace_back();
          entries_.back().key = field_;
        }
        fields_.clear();
        return true;
      case State::kEntry:
        if (isKnownField()) wrongType("an object");
        skip_ = 1;
        return true;
      default:
        return scalar("an object");
    }
  }

  bool start_array(std::size_t /*unused*/) {
    if (skip_ > 0) return ++skip_, true;
    if (state_ == State::kEntry) {
      if (field_ == "shape") {
        state_ = State::kShape;
        return true;
      }
      if (field_ == "data_offsets") {
        state_ = State::kOffsets;
        return true;
      }
      if (field_ != "dtype") {
        skip_ = 1;
        return true;
      }
    }
    return scalar("an array");
  }

  bool end_object() {
    if (skip_ > 0) return --skip_, true;
    if (state_ == State::kTop) {
      state_ = State::kDone;
      done_ = true;
    } else if (state_ == State::kMetadata) {
      state_ = State::kTop;
    } else if (state_ == State::kEntry) {
      const RawEntry& e = entries_.back();
      const char* missing = !e.has_dtype     ? "dtype"
                            : !e.has_shape   ? "shape"
                            : !e.has_offsets ? "data_offsets"
                                             : nullptr;
      if (missing != nullptr) fail(ExitCode::kCheckpoint, where(), " has no \"", missing, "\"");
      state_ = State::kTop;
    }
    return true;
  }

  bool end_array() {
    if (skip_ > 0) return --skip_, true;
    if (state_ == State::kShape) {
      entries_.back().has_shape = true;
    } else if (state_ == State::kOffsets) {
      BNA_CHECK(entries_.back().offsets.size() == 2, ExitCode::kCheckpoint, where(),
                ": \"data_offsets\" must hold 2 integers, found ",
                entries_.back().offsets.size());
      entries_.back().has_offsets = true;
    }
    state_ = State::kEntry;
    return true;
  }

  bool key(std::string& key) {
    if (skip_ > 0) return true;
    if (state_ == State::kTop) {
      BNA_CHECK(top_keys_.insert(key).second, ExitCode::kCheckpoint, path_,
                ": the header names '", key, "' twice");
    } else {
      BNA_CHECK(fields_.insert(key).second, ExitCode::kCheckpoint, where(), " has the key '",
                key, "' twice");
    }
    field_ = key;
    return true;
  }

  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const Json::exception& ex) {
    std::string what = ex.what();
    const auto end = what.find("] ");  // strip "[json.exception.parse_error.101] "
    if (what.compare(0, 16, "[json.exception.") == 0 && end != std::string::npos) {
      what = what.substr(end + 2);
    }
    fail(ExitCode::kCheckpoint, path_, ": header is not valid JSON (byte ", position,
         " of the header): ", what);
  }

 private:
  enum class State { kStart, kTop, kMetadata, kEntry, kShape, kOffsets, kDone };

  bool isKnownField() const {
    return field_ == "dtype" || field_ == "shape" || field_ == "data_offsets";
  }

  std::string where() const {
    if (state_ == State::kMetadata) return path_ + ": \"__metadata__\"";
    return path_ + ": tensor '" + entries_.back().key + "'";
  }

  [[noreturn]] void wrongType(const char* found) const {
    const char* expected = field_ == "dtype" ? "a string" : "an array of integers";
    fail(ExitCode::kCheckpoint, where(), ": \"", field_, "\" must be ", expected, ", found ",
         found);
  }

  bool integer(bool negative, uint64_t value) {
    if (skip_ > 0) return true;
    if (state_ == State::kShape) {
      BNA_CHECK(!negative, ExitCode::kCheckpoint, where(), ": negative dimension in \"shape\"");
      BNA_CHECK(value <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                ExitCode::kCheckpoint, where(), ": dimension ", value, " is too large");
      entries_.back().shape.push_back(static_cast<int64_t>(value));
      return true;
    }
    if (state_ == State::kOffsets) {
      BNA_CHECK(!negative, ExitCode::kCheckpoint, where(), ": negative \"data_offsets\"");
      BNA_CHECK(entries_.back().offsets.size() < 2, ExitCode::kCheckpoint, where(),
                ": \"data_offsets\" must hold 2 integers, found more");
      entries_.back().offsets.push_back(value);
      return true;
    }
    return scalar("an integer");
  }

  // A scalar (or an unexpected container) in the current position.
  bool scalar(const char* found) {
    if (skip_ > 0) return true;
    switch (state_) {
      case State::kStart:
        fail(ExitCode::kCheckpoint, path_, ": header is not a JSON object (found ", found, ")");
      case State::kTop:
        if (field_ == kMetadataKey && std::strcmp(found, "null") == 0) return true;
        fail(ExitCode::kCheckpoint, path_, ": ",
             field_ == kMetadataKey ? "\"__metadata__\"" : "tensor '" + field_ + "'",
             " must be an object, found ", found);
      case State::kMetadata:
        fail(ExitCode::kCheckpoint, where(), ": value of '", field_, "' must be a string, found ",
             found);
      case State::kEntry:
        if (isKnownField()) wrongType(found);
        return true;  // other fields are ignored
      case State::kShape:
      case State::kOffsets:
        fail(ExitCode::kCheckpoint, where(), ": \"",
             state_ == State::kShape ? "shape" : "data_offsets",
             "\" must hold non-negative integers, found ", found);
      case State::kDone:
        break;
    }
    fail(ExitCode::kCheckpoint, path_, ": unexpected ", found, " in the header");
  }

  const std::string& path_;
  State state_ = State::kStart;
  size_t skip_ = 0;  // open containers inside an ignored field
  std::string field_;  // the key whose value comes next
  std::unordered_set<std::string> top_keys_;
  std::unordered_set<std::string> fields_;  // keys seen in the current entry or metadata
  std::vector<RawEntry> entries_;
  std::map<std::string, std::string> metadata_;
  bool done_ = false;
};

}  // namespace

SafetensorsFile SafetensorsFile::parse(std::string bytes, const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  file.bytes_ = std::move(bytes);
  const std::string& b = file.bytes_;
  const uint64_t size = b.size();

  BNA_CHECK(size >= 8, ExitCode::kCheckpoint, path, ": not a safetensors file: ", size,
            " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(b[i]);
  BNA_CHECK(header_len <= kMaxHeaderBytes, ExitCode::kCheckpoint, path, ": header length ",
            header_len, " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  BNA_CHECK(header_len <= size - 8, ExitCode::kCheckpoint, path, ": header length ", header_len,
            " reaches beyond the end of the file (", size, " bytes)");

  HeaderHandler handler(path);
  const auto header_begin = b.begin() + 8;
  const auto header_end = header_begin + static_cast<std::ptrdiff_t>(header_len);
  // nlohmann's lexer takes a NUL byte as the end of input; valid JSON never holds a raw one.
  const auto nul = std::find(header_begin, header_end, '\0');
  BNA_CHECK(nul == header_end, ExitCode::kCheckpoint, path,
            ": header is not valid JSON (NUL byte at byte ", nul - header_begin,
            " of the header)");
  try {
    Json::sax_parse(header_begin, header_end, &handler, Json::input_format_t::json,
                    /*strict=*/true);
  } catch (const Json::exception& e) {  // not expected: parse errors go to the handler
    fail(ExitCode::kCheckpoint, path, ": header is not valid JSON: ", e.what());
  }
  BNA_CHECK(handler.complete(), ExitCode::kCheckpoint, path, ": header is not valid JSON");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  std::vector<RawEntry>& raw = handler.entries();
  file.entries_.reserve(raw.size());
  for (RawEntry& r : raw) {
    const std::string where = path + ": tensor '" + r.key + "'";
    const uint64_t begin = r.offsets[0], end = r.offsets[1];
    BNA_CHECK(begin <= end, ExitCode::kCheckpoint, where, ": data_offsets [", begin, ", ", end,
              "] end before they begin");
    BNA_CHECK(end <= data_size, ExitCode::kCheckpoint, where, ": data_offsets [", begin, ", ",
              end, "] reach beyond the data buffer (", data_size, " bytes)");
    const uint64_t item = itemSize(r.dtype);
    if (item > 0) {
      // numel * itemsize must equal the byte range; compute without overflow.
      uint64_t bytes_needed = item;
      bool zero = false, overflow = false;
      for (int64_t d : r.shape) zero = zero || d == 0;
      if (zero) {
        bytes_needed = 0;
      } else {
        for (int64_t d : r.shape) {
          const uint64_t ud = static_cast<uint64_t>(d);
          if (bytes_needed > std::numeric_limits<uint64_t>::max() / ud) {
            overflow = true;
            break;
          }
          bytes_needed *= ud;
        }
      }
      BNA_CHECK(!overflow && bytes_needed == end - begin, ExitCode::kCheckpoint, where, ": ",
                r.dtype, " of shape ", shapeText(r.shape), " needs ",
                overflow ? std::string("more than 2^64") : std::to_string(bytes_needed),
                " bytes, but data_offsets [", begin, ", ", end, "] hold ", end - begin);
    } else {
      // Opaque dtype: still require a representable element count.
      int64_t numel = 1;
      bool zero = false, overflow = false;
      for (int64_t d : r.shape) zero = zero || d == 0;
      for (int64_t d : r.shape) {
        if (zero) break;
        if (numel > std::numeric_limits<int64_t>::max() / d) {
          overflow = true;
          break;
        }
        numel *= d;
      }
      BNA_CHECK(!overflow, ExitCode::kCheckpoint, where, ": shape ", shapeText(r.shape),
                " has too many elements");
    }
    SafetensorsEntry e;
    e.key = std::move(r.key);
    e.dtype = std::move(r.dtype);
    e.shape = std::move(r.shape);
    e.begin = data_start + begin;
    e.end = data_start + end;
    file.index_.emplace(e.key, file.entries_.size());
    file.entries_.push_back(std::move(e));
  }

  // No two tensors may share a byte (empty tensors own none).
  std::vector<const SafetensorsEntry*> by_offset;
  for (const SafetensorsEntry& e : file.entries_) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsEntry* x, const SafetensorsEntry* y) {
              return x->begin != y->begin ? x->begin < y->begin : x->end < y->end;
            });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsEntry& prev = *by_offset[i - 1];
    const SafetensorsEntry& cur = *by_offset[i];
    BNA_CHECK(cur.begin >= prev.end, ExitCode::kCheckpoint, path, ": tensors '", prev.key,
              "' and '", cur.key, "' overlap (data_offsets [", prev.begin - data_start, ", ",
              prev.end - data_start, "] and [", cur.begin - data_start, ", ",
              cur.end - data_start, "])");
  }
  file.metadata_ = std::move(handler.metadata());
  return file;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& key) const {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void SafetensorsFile::patch(const std::string& key, const at::Tensor& values) {
  const SafetensorsEntry* entry = find(key);
  BNA_CHECK(entry != nullptr, ExitCode::kCheckpoint, path_, ": no tensor '", key,
            "' in the file");
  const std::string where = path_ + ": tensor '" + key + "'";
  c10::ScalarType type = c10::kFloat;
  BNA_CHECK(patchType(entry->dtype, &type), ExitCode::kCheckpoint, where, " is stored as ",
            entry->dtype, ", which cannot be written (supported: F32, F16, BF16, F64, I64, I32)");
  BNA_ASSERT(values.defined(), "patch of '", key, "' with an undefined tensor");

  int64_t numel = 1;
  for (int64_t d : entry->shape) numel *= d;  // parse checked the byte size, so no overflow
  BNA_CHECK(values.numel() == numel, ExitCode::kCheckpoint, where, ": expected shape ",
            shapeText(entry->shape), ", got ", shapeText(values.sizes()));

  const bool floating = at::isFloatingType(type);
  const c10::ScalarType given = values.scalar_type();
  BNA_CHECK(floating ? at::isFloatingType(given) : at::isIntegralType(given, false),
            ExitCode::kCheckpoint, where, " is stored as ", entry->dtype, " and needs ",
            floating ? "floating-point" : "integer", " values, got ", c10::toString(given));

  const at::Tensor source = values.detach().to(at::kCPU);
  const at::Tensor converted = source.to(type).contiguous();
  if (numel > 0 && given != type) {
    if (floating) {
      // Narrowing (e.g. to F16) must not turn finite values into infinities.
      const bool overflowed =
          at::logical_and(at::isfinite(source), at::logical_not(at::isfinite(converted)))
              .any()
              .item<bool>();
      BNA_CHECK(!overflowed, ExitCode::kCheckpoint, where, ": values out of the range of ",
                entry->dtype);
    } else {
      BNA_CHECK(at::equal(converted.to(given), source), ExitCode::kCheckpoint, where,
                ": values out of the range of ", entry->dtype);
    }
  }

  const size_t item = c10::elementSize(type);
  const uint64_t nbytes = static_cast<uint64_t>(numel) * item;
  BNA_ASSERT(nbytes == entry->end - entry->begin && entry->end <= bytes_.size(), "tensor '", key,
             "'");
  if (nbytes == 0) return;
  char* dst = &bytes_[entry->begin];
  std::memcpy(dst, converted.data_ptr(), nbytes);
  if (!hostIsLittleEndian() && item > 1) {
    for (uint64_t i = 0; i < nbytes; i += item) std::reverse(dst + i, dst + i + item);
  }
}

}  // namespace bnadapt::checkpoint
