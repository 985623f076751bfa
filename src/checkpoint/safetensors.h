// Reading and patching safetensors files in memory.
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {str: str}} (metadata optional), then the data buffer; data_offsets are
// relative to the start of the data buffer (byte 8 + N). Patching rewrites tensor bytes in
// place and never touches the header.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

namespace bnadapt::checkpoint {

struct SafetensorsEntry {
  std::string key;
  std::string dtype;  // as in the header
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // absolute byte offsets in the file
};

class SafetensorsFile {
 public:
  // Parses and validates `bytes`; `path` is only used in messages. Errors are
  // Error(kCheckpoint, "<path>: <what is wrong>"). Dtypes other than the known ones are kept
  // as opaque (their byte size is not checked, and they cannot be patched).
  static SafetensorsFile parse(std::string bytes, const std::string& path);

  // Tensors in header order ("__metadata__" excluded).
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // nullptr if absent.
  const SafetensorsEntry* find(const std::string& key) const;
  // The "__metadata__" map (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Overwrites the bytes of `key` with `values` (any dtype and layout, same numel as the
  // entry) converted to the entry's dtype: F32/F16/BF16/F64 take floating values, I64/I32
  // integral ones. Errors are kCheckpoint and name the key: unknown key, numel mismatch,
  // dtype not patchable, wrong kind of values, values out of the stored type's range.
  void patch(const std::string& key, const at::Tensor& values);

  // The whole file: header bytes untouched, patched ranges rewritten.
  const std::string& bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;

  std::string bytes_;
  std::string path_;
  std::vector<SafetensorsEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace bnadapt::checkpoint
