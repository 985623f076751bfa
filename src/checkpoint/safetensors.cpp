#include "checkpoint/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_reader.h"

namespace bnadapt::checkpoint {
namespace {

using OrderedJson = nlohmann::ordered_json;  // tensors in header order

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
};

// Reads a header document (io::parseJson: duplicate keys, syntax and depth already checked)
// into its entries and metadata, checking the structure safetensors defines. Throws Error
// on the first problem.
class HeaderReader {
 public:
  explicit HeaderReader(const std::string& path) : path_(path) {}

  void read(const OrderedJson& header) {
    if (!header.is_object()) {
      fail(ExitCode::kCheckpoint, path_, ": header is not a JSON object (found ",
           typeText(header), ")");
    }
    for (const auto& [key, value] : header.items()) {
      if (key == kMetadataKey) {
        readMetadata(value);
      } else {
        readEntry(key, value);
      }
    }
  }

  std::vector<RawEntry>& entries() { return entries_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }

 private:
  static std::string typeText(const OrderedJson& v) {
    switch (v.type()) {
      case OrderedJson::value_t::null: return "null";
      case OrderedJson::value_t::boolean: return "a boolean";
      case OrderedJson::value_t::string: return "a string";
      case OrderedJson::value_t::number_integer:
      case OrderedJson::value_t::number_unsigned: return "an integer";
      case OrderedJson::value_t::number_float: return "a floating-point number";
      case OrderedJson::value_t::object: return "an object";
      case OrderedJson::value_t::array: return "an array";
      default: return v.type_name();
    }
  }

  void readMetadata(const OrderedJson& v) {
    if (v.is_null()) return;
    const std::string where = path_ + ": \"__metadata__\"";
    BNA_CHECK(v.is_object(), ExitCode::kCheckpoint, where, " must be an object, found ",
              typeText(v));
    for (const auto& [key, value] : v.items()) {
      BNA_CHECK(value.is_string(), ExitCode::kCheckpoint, where, ": value of '", key,
                "' must be a string, found ", typeText(value));
      metadata_[key] = value.get<std::string>();
    }
  }

  // Non-negative integers of the array `field` of an entry (other fields are ignored).
  std::vector<uint64_t> integers(const OrderedJson& v, const char* field,
                                 const std::string& where) const {
    BNA_CHECK(v.is_array(), ExitCode::kCheckpoint, where, ": \"", field,
              "\" must be an array of integers, found ", typeText(v));
    std::vector<uint64_t> out;
    for (const OrderedJson& item : v) {
      BNA_CHECK(!(item.is_number_integer() && !item.is_number_unsigned() && item.get<int64_t>() < 0),
                ExitCode::kCheckpoint, where, ": negative ",
                std::strcmp(field, "shape") == 0 ? "dimension in \"shape\"" : "\"data_offsets\"");
      BNA_CHECK(item.is_number_integer(), ExitCode::kCheckpoint, where, ": \"", field,
                "\" must hold non-negative integers, found ", typeText(item));
      out.push_back(item.get<uint64_t>());
    }
    return out;
  }

  void readEntry(const std::string& key, const OrderedJson& v) {
    const std::string where = path_ + ": tensor '" + key + "'";
    BNA_CHECK(v.is_object(), ExitCode::kCheckpoint, where, " must be an object, found ",
              typeText(v));
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      BNA_CHECK(v.contains(field), ExitCode::kCheckpoint, where, " has no \"", field, "\"");
    }
    RawEntry e;
    e.key = key;
    BNA_CHECK(v["dtype"].is_string(), ExitCode::kCheckpoint, where,
              ": \"dtype\" must be a string, found ", typeText(v["dtype"]));
    e.dtype = v["dtype"].get<std::string>();
    for (const uint64_t d : integers(v["shape"], "shape", where)) {
      BNA_CHECK(d <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                ExitCode::kCheckpoint, where, ": dimension ", d, " is too large");
      e.shape.push_back(static_cast<int64_t>(d));
    }
    e.offsets = integers(v["data_offsets"], "data_offsets", where);
    BNA_CHECK(e.offsets.size() == 2, ExitCode::kCheckpoint, where,
              ": \"data_offsets\" must hold 2 integers, found ", e.offsets.size());
    entries_.push_back(std::move(e));
  }

  const std::string& path_;
  std::vector<RawEntry> entries_;
  std::map<std::string, std::string> metadata_;
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

  io::JsonSource source;
  source.name = path + ": header";
  source.code = ExitCode::kCheckpoint;
  source.text_kind = "a safetensors header";
  // Only what safetensors defines is stored: the metadata and each entry's three fields
  // (other fields, however large, are checked for syntax only).
  source.keep = [](const std::vector<std::string>& keys) {
    return keys.size() <= 1 || keys[0] == kMetadataKey ||
           (keys.size() == 2 &&
            (keys[1] == "dtype" || keys[1] == "shape" || keys[1] == "data_offsets"));
  };
  HeaderReader handler(path);
  handler.read(io::parseJson<OrderedJson>(std::string_view(b).substr(8, header_len), source));

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
