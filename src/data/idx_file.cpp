#include "data/idx_file.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "common/error.h"
#include "io/file_names.h"
#include "io/files.h"

namespace bnadapt::data {
namespace {

constexpr const char* kWhat = "IDX file";

uint32_t bigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

uint64_t bigEndian64(const uint8_t* p) {
  return (uint64_t{bigEndian32(p)} << 32) | bigEndian32(p + 4);
}

bool isGzip(const std::vector<char>& file) {
  return file.size() >= 2 && static_cast<uint8_t>(file[0]) == 0x1f &&
         static_cast<uint8_t>(file[1]) == 0x8b;
}

// The file's decompressed bytes, read in order. Raw files are served from the buffer; gzip
// files are inflated on demand, so only what the header has been checked to need is ever
// allocated. Errors name the file.
class ByteSource {
 public:
  ByteSource(std::string path, std::vector<char> file)
      : path_(std::move(path)), file_(std::move(file)), gzip_(isGzip(file_)) {
    if (!gzip_) return;
    std::memset(&zs_, 0, sizeof(zs_));
    // 16 + MAX_WBITS: gzip wrapper only, with its CRC-32 and length checked at stream end.
    const int rc = inflateInit2(&zs_, 16 + MAX_WBITS);
    BNA_CHECK(rc == Z_OK, ExitCode::kInternal, "zlib inflateInit2 failed (", rc, ") for ",
              path_);
    inflating_ = true;
  }
  ~ByteSource() noexcept {
    if (inflating_) inflateEnd(&zs_);
  }
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  bool gzip() const { return gzip_; }
  uint64_t fileBytes() const { return file_.size(); }

  // Reads up to n bytes into dst; fewer only at the end of the data.
  size_t read(uint8_t* dst, size_t n) {
    if (!gzip_) {
      const size_t got = std::min<uint64_t>(n, file_.size() - raw_pos_);
      std::memcpy(dst, file_.data() + raw_pos_, got);
      raw_pos_ += got;
      return got;
    }
    size_t got = 0;
    while (got < n && !ended_) {
      refillInput();
      const size_t want = std::min<size_t>(n - got, UINT_MAX);
      zs_.next_out = dst + got;
      zs_.avail_out = static_cast<uInt>(want);
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      got += want - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        memberEnded();
      } else if (rc == Z_BUF_ERROR) {  // no progress: out of input before the stream end
        BNA_ASSERT(inputExhausted(), "inflate made no progress on ", path_);
        fail(ExitCode::kData, kWhat, " '", path_,
             "': gzip data ends early (truncated file?) after ", decompressed(),
             " decompressed bytes");
      } else if (rc != Z_OK) {
        fail(ExitCode::kData, kWhat, " '", path_, "': corrupt gzip data (",
             zs_.msg != nullptr ? zs_.msg : zError(rc), ") after ", decompressed(),
             " decompressed bytes");
      }
    }
    return got;
  }

  // Counts the bytes left, stopping once more than `limit` are seen.
  uint64_t countRest(uint64_t limit) {
    uint8_t scratch[1 << 16];
    uint64_t rest = 0;
    size_t got = 0;
    while (rest <= limit && (got = read(scratch, sizeof(scratch))) > 0) rest += got;
    return rest;
  }

 private:
  bool inputExhausted() const { return zs_.avail_in == 0 && in_pos_ == file_.size(); }
  uint64_t decompressed() const { return total_out_ + zs_.total_out; }

  void refillInput() {
    if (zs_.avail_in > 0 || in_pos_ == file_.size()) return;
    const size_t chunk = std::min<uint64_t>(file_.size() - in_pos_, uint64_t{1} << 30);
    zs_.next_in = reinterpret_cast<Bytef*>(file_.data() + in_pos_);
    zs_.avail_in = static_cast<uInt>(chunk);
    in_pos_ += chunk;
  }

  // A gzip member ended (its CRC and length were right): the data ends, or another member
  // follows (as `cat a.gz b.gz` makes). Anything else after it is an error.
  void memberEnded() {
    refillInput();
    if (zs_.avail_in == 0) {
      ended_ = true;
      return;
    }
    const uint64_t at = in_pos_ - zs_.avail_in;
    const bool another = zs_.avail_in >= 2 && zs_.next_in[0] == 0x1f && zs_.next_in[1] == 0x8b;
    BNA_CHECK(another, ExitCode::kData, kWhat, " '", path_, "': ", file_.size() - at,
              " bytes after the end of the gzip data (at byte ", at, " of ", file_.size(), ")");
    total_out_ += zs_.total_out;
    inflateReset(&zs_);
  }

  std::string path_;
  std::vector<char> file_;
  bool gzip_ = false;
  uint64_t raw_pos_ = 0;
  z_stream zs_{};
  bool inflating_ = false;
  bool ended_ = false;
  uint64_t in_pos_ = 0;     // bytes of file_ handed to zlib so far
  uint64_t total_out_ = 0;  // decompressed bytes of finished members
};

std::string dimsString(const std::vector<int64_t>& dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? " x " : "") + std::to_string(dims[i]);
  return s;
}

bool isRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

size_t idxElementSize(uint8_t type_code) {
  switch (type_code) {
    case kIdxUInt8:
    case kIdxInt8:
      return 1;
    case kIdxInt16:
      return 2;
    case kIdxInt32:
    case kIdxFloat32:
      return 4;
    case kIdxFloat64:
      return 8;
    default:
      return 0;
  }
}

const char* idxTypeName(uint8_t type_code) {
  switch (type_code) {
    case kIdxUInt8:
      return "ubyte";
    case kIdxInt8:
      return "byte";
    case kIdxInt16:
      return "short";
    case kIdxInt32:
      return "int";
    case kIdxFloat32:
      return "float";
    case kIdxFloat64:
      return "double";
    default:
      return "unknown";
  }
}

int64_t IdxArray::numel() const {
  int64_t n = dims.empty() ? 0 : 1;
  for (int64_t d : dims) n *= d;
  return n;
}

int64_t IdxArray::itemNumel() const {
  int64_t n = 1;
  for (size_t i = 1; i < dims.size(); ++i) n *= dims[i];
  return n;
}

double IdxArray::value(int64_t i) const {
  const uint8_t* p = bytes.data() + static_cast<size_t>(i) * elementSize();
  switch (type_code) {
    case kIdxUInt8:
      return p[0];
    case kIdxInt8:
      return static_cast<int8_t>(p[0]);
    case kIdxInt16:
      return static_cast<int16_t>(static_cast<uint16_t>((p[0] << 8) | p[1]));
    case kIdxInt32:
      return static_cast<int32_t>(bigEndian32(p));
    case kIdxFloat32: {
      const uint32_t bits = bigEndian32(p);
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      return f;
    }
    case kIdxFloat64: {
      const uint64_t bits = bigEndian64(p);
      double d;
      std::memcpy(&d, &bits, sizeof(d));
      return d;
    }
    default:
      BNA_ASSERT(false, "IDX type code ", int{type_code});
  }
  return 0;
}

void IdxArray::toFloat(int64_t begin_item, int64_t end_item, float* dst) const {
  const int64_t per_item = itemNumel();
  const int64_t begin = begin_item * per_item;
  const int64_t end = end_item * per_item;
  if (type_code == kIdxUInt8) {  // the common case, kept a plain loop
    const uint8_t* src = bytes.data() + begin;
    for (int64_t i = 0; i < end - begin; ++i) dst[i] = src[i];
    return;
  }
  for (int64_t i = begin; i < end; ++i) dst[i - begin] = static_cast<float>(value(i));
}

std::vector<float> IdxArray::toFloat() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  toFloat(0, items(), out.data());
  return out;
}

IdxArray readIdx(const std::string& path, uint64_t max_payload_bytes) {
  // Refuse an absurd file before reading it; readFile reports missing or unreadable ones.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    const uint64_t limit = max_payload_bytes + 4 + 4 * 4;
    BNA_CHECK(static_cast<uint64_t>(st.st_size) <= limit, ExitCode::kData, kWhat, " '", path,
              "' is ", st.st_size, " bytes, more than the limit of ", limit, " bytes");
  }
  ByteSource src(path, io::readFile(path, kWhat, ExitCode::kData));
  BNA_CHECK(src.fileBytes() > 0, ExitCode::kData, kWhat, " '", path, "' is empty (0 bytes)");
  const char* form = src.gzip() ? " (after gzip decompression)" : "";

  uint8_t magic[4];
  const size_t got_magic = src.read(magic, 4);
  BNA_CHECK(got_magic == 4, ExitCode::kData, kWhat, " '", path, "' holds ", got_magic,
            " bytes", form, ", too few for the 4-byte IDX magic");
  const uint8_t type = magic[2];
  const int ndims = magic[3];
  BNA_CHECK(magic[0] == 0 && magic[1] == 0 && idxElementSize(type) != 0, ExitCode::kData,
            kWhat, " '", path, "' is not an IDX file: magic bytes ", int{magic[0]}, " ",
            int{magic[1]}, " ", int{type}, " ", ndims,
            "; expected 0 0 <type> <ndims> with type 8 (ubyte), 9 (byte), 11 (short), 12 (int), "
            "13 (float) or 14 (double)");
  BNA_CHECK(ndims >= 1 && ndims <= 4, ExitCode::kData, kWhat, " '", path, "' has ", ndims,
            " dimensions; expected 1 to 4");

  uint8_t header[16];
  const size_t header_bytes = 4 * static_cast<size_t>(ndims);
  const size_t got_header = src.read(header, header_bytes);
  BNA_CHECK(got_header == header_bytes, ExitCode::kData, kWhat, " '", path, "' is truncated",
            form, ": the header needs ", 4 + header_bytes, " bytes for ", ndims,
            " dimensions, found ", 4 + got_header);

  IdxArray out;
  out.type_code = type;
  uint64_t payload = idxElementSize(type);
  for (int d = 0; d < ndims; ++d) {
    const uint32_t dim = bigEndian32(header + 4 * d);
    out.dims.push_back(dim);
    BNA_CHECK(dim > 0, ExitCode::kData, kWhat, " '", path, "': dimension ", d, " is 0");
    // payload <= max stays below 2^64 / 2^32 when max < 2^32 * 2^32; check before multiplying.
    BNA_CHECK(payload <= max_payload_bytes / dim, ExitCode::kData, kWhat, " '", path,
              "': dimensions ", dimsString(out.dims), (d + 1 < ndims ? " x ..." : ""), " of ",
              idxTypeName(type), " exceed the limit of ", max_payload_bytes, " payload bytes");
    payload *= dim;
  }

  out.bytes.resize(static_cast<size_t>(payload));
  const uint64_t got = src.read(out.bytes.data(), out.bytes.size());
  const uint64_t rest = got == payload ? src.countRest(max_payload_bytes) : 0;
  if (got != payload || rest != 0) {
    const uint64_t actual = got + rest;
    fail(ExitCode::kData, kWhat, " '", path, "' is ", (got != payload ? "truncated" : "too long"),
         form, ": dimensions ", dimsString(out.dims), " of ", idxTypeName(type), " need ",
         payload, " payload bytes, found ", (rest > max_payload_bytes ? "more than " : ""),
         actual, " (", 4 + header_bytes + payload, " vs ", 4 + header_bytes + actual,
         " bytes in all)");
  }
  return out;
}

bool looksLikeIdxImages(const std::string& path) {
  return io::splitIdxImagesName(path).has_value();
}

std::string matchingIdxLabels(const std::string& images_path) {
  for (const std::string& candidate : io::idxLabelsCandidates(images_path)) {
    if (isRegularFile(candidate)) return candidate;
  }
  return "";
}

}  // namespace bnadapt::data
