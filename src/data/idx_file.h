// Reader of IDX files, the MNIST format: a 4-byte magic (0, 0, type code, number of
// dimensions), one big-endian uint32 per dimension, then the elements, big-endian, row-major.
// Raw or gzip-compressed (detected by the gzip magic 1f 8b, not by the name), e.g. Debian's
// dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bnadapt::data {

// IDX element type codes (the third byte of the magic).
enum IdxType : uint8_t {
  kIdxUInt8 = 0x08,
  kIdxInt8 = 0x09,
  kIdxInt16 = 0x0B,
  kIdxInt32 = 0x0C,
  kIdxFloat32 = 0x0D,
  kIdxFloat64 = 0x0E,
};

// Bytes per element of a type code; 0 for a code that is not an IDX type.
size_t idxElementSize(uint8_t type_code);
// "ubyte", "byte", "short", "int", "float", "double", or "unknown".
const char* idxTypeName(uint8_t type_code);

// Largest payload readIdx accepts by default: a header may claim any size, and the
// allocation follows the header only after this check.
inline constexpr uint64_t kMaxIdxPayloadBytes = uint64_t{4} << 30;  // 4 GiB

// A whole IDX file: its type, dimensions and the element bytes as stored (big-endian).
struct IdxArray {
  uint8_t type_code = kIdxUInt8;
  std::vector<int64_t> dims;   // 1 to 4 dimensions, each >= 1
  std::vector<uint8_t> bytes;  // numel() * elementSize() bytes, big-endian, row-major

  size_t elementSize() const { return idxElementSize(type_code); }
  int64_t numel() const;
  // Size of dimension 0 (images or labels), and the elements of one such item.
  int64_t items() const { return dims.empty() ? 0 : dims[0]; }
  int64_t itemNumel() const;
  // Element `i` (flat, row-major index), decoded from big-endian. Unchecked index.
  double value(int64_t i) const;
  // Items [begin_item, end_item) decoded into dst[(end_item - begin_item) * itemNumel()],
  // converted to float (no scaling). Unchecked range.
  void toFloat(int64_t begin_item, int64_t end_item, float* dst) const;
  // Every element as float.
  std::vector<float> toFloat() const;
};

// Reads and validates a whole IDX file, raw or gzip. Fails with ExitCode::kData, naming the
// file, when it is missing or empty, the magic or type or number of dimensions is wrong, a
// dimension is 0, the payload would exceed `max_payload_bytes`, the payload is shorter or
// longer than the dimensions say (expected and actual bytes), or the gzip data is corrupt,
// truncated or followed by other bytes. Concatenated gzip members are read as one stream.
IdxArray readIdx(const std::string& path, uint64_t max_payload_bytes = kMaxIdxPayloadBytes);

// True when the file name ends with "-idx3-ubyte" or "-idx3-ubyte.gz" ('.' instead of the
// '-' is accepted too: "train-images.idx3-ubyte", as some mirrors name it).
bool looksLikeIdxImages(const std::string& path);

// The labels file beside an images file "<dir>/<prefix>-idx3-ubyte[.gz]": the first existing
// regular file among "<dir>/<prefix'>-idx1-ubyte[.gz]", where prefix' is the prefix with its
// last "images" replaced by "labels" (train-images -> train-labels), then the prefix itself;
// the images' own compression first, then the other. "" when none exists or the name does
// not look like IDX images.
std::string matchingIdxLabels(const std::string& images_path);

}  // namespace bnadapt::data
