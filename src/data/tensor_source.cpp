// Tensor data: torch.save files (one, or a folder of shards) read sample by sample.
//
// torch.save writes a zip archive whose storage records are stored, not compressed, at
// aligned offsets (64 bytes, or torch 2.x's config.save.storage_alignment). The pickle
// (data.pkl, small) is walked without running Python (torchfile/pickle_walker.h) to find
// the inputs tensor's record, shape and strides; then each sample is one pread at a
// computed offset. A rank therefore holds only the batches it
// forwards, whatever the size of the file, and the page cache is shared between ranks.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <caffe2/serialize/inline_container.h>

#include "common/error.h"
#include "common/hash.h"
#include "data/sources.h"
#include "io/file_names.h"
#include "io/files.h"
#include "torchfile/pickle_walker.h"

namespace bnadapt::data {
namespace {

namespace fs = std::filesystem;
using torchfile::PickleRef;
using torchfile::PickleValue;
using torchfile::TensorRecord;

const char* kExpected =
    "expected a file written by torch.save(tensor [N, ...]) or "
    "torch.save({\"inputs\": tensor [N, ...], \"labels\": integer tensor [N]})";

// Reads exactly `n` bytes at `offset`; false on a short file.
bool preadFully(int fd, void* buf, size_t n, uint64_t offset) {
  errno = 0;
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

// The value stored under string key `key` in a dict (or dict-like object), or null.
PickleRef dictEntry(const PickleValue& dict, const std::string& key) {
  PickleRef found;
  for (const auto& [k, v] : dict.entries) {
    if (k && k->kind == PickleValue::Kind::kString && k->text == key) found = v;  // last wins
  }
  return found;
}

bool isContiguous(const TensorRecord& t) {
  int64_t expected = 1;
  for (size_t d = t.sizes.size(); d-- > 0;) {
    if (t.sizes[d] != 1 && t.strides[d] != expected) return false;
    expected *= t.sizes[d];
  }
  return true;
}

int64_t numel(const std::vector<int64_t>& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

// One torch.save file: where its inputs' bytes start, their layout, and its labels.
struct Shard {
  std::string path;
  int fd = -1;
  int64_t samples = 0;
  std::vector<int64_t> sample_shape;
  c10::ScalarType file_dtype = c10::kFloat;
  uint64_t data_offset = 0;     // first byte of sample 0 in the file
  size_t sample_bytes = 0;      // in the file's dtype
  std::vector<int64_t> labels;  // empty: none
  uint64_t hash = 0;

  Shard() = default;
  Shard(const Shard&) = delete;
  Shard(Shard&& o) noexcept { *this = std::move(o); }
  Shard& operator=(Shard&& o) noexcept {
    std::swap(path, o.path);
    std::swap(fd, o.fd);
    samples = o.samples;
    sample_shape = std::move(o.sample_shape);
    file_dtype = o.file_dtype;
    data_offset = o.data_offset;
    sample_bytes = o.sample_bytes;
    labels = std::move(o.labels);
    hash = o.hash;
    return *this;
  }
  ~Shard() {
    if (fd >= 0) ::close(fd);
  }
};

// Checks that record `name`, whose bytes start at `data_start` (from the reader), is stored
// uncompressed: the local zip header before them must say so (method 0). The header is
// "PK\3\4", ..., method at +8, name length at +26, extra length at +28 (30 bytes), then the
// name and the extra field, where torch pads to align the data (to as much as 4096 bytes or
// more with torch 2.x's storage_alignment). The header is found by scanning back from the
// data, nearest first: both lengths are 16-bit, so it starts at most 30 + 2 * 65535 bytes
// before, whatever the alignment (and whatever the LibTorch version's reader can tell).
void checkStored(int fd, const std::string& path, const std::string& name, uint64_t data_start) {
  constexpr uint64_t kHeader = 30;
  constexpr uint64_t kMaxBack = kHeader + 2 * 0xFFFF;
  const uint64_t from = data_start > kMaxBack ? data_start - kMaxBack : 0;
  BNA_CHECK(from + kHeader <= data_start, ExitCode::kData, "data file '", path, "': record '",
            name, "' starts at offset ", data_start, ", before any zip header could");
  std::vector<unsigned char> buf(data_start - from);
  BNA_CHECK(preadFully(fd, buf.data(), buf.size(), from), ExitCode::kData, "data file '", path,
            "': cannot read the zip header of record '", name, "'");
  auto le16 = [&](size_t at) { return static_cast<uint64_t>(buf[at] | (buf[at + 1] << 8)); };
  auto isHeader = [&](size_t at) {
    return buf[at] == 'P' && buf[at + 1] == 'K' && buf[at + 2] == 3 && buf[at + 3] == 4 &&
           from + at + kHeader + le16(at + 26) + le16(at + 28) == data_start;
  };
  std::optional<size_t> found;
  for (size_t at = buf.size() - kHeader + 1; at-- > 0;) {  // the nearest one first
    if (isHeader(at)) {
      found = at;
      break;
    }
  }
  BNA_CHECK(found, ExitCode::kData, "data file '", path, "': no zip header found before record '",
            name, "'; ", kExpected);
  BNA_CHECK(le16(*found + 8) == 0, ExitCode::kData, "data file '", path, "': record '", name,
            "' is compressed (method ", le16(*found + 8),
            "); torch.save stores records uncompressed: save the data again with torch.save");
}

Shard openShard(const std::string& path) {
  const std::string head = io::readHead(path, 4, "data file", ExitCode::kData);
  BNA_CHECK(!head.empty(), ExitCode::kData, "data file '", path, "' is empty; ", kExpected);
  BNA_CHECK(head.rfind("PK\x03\x04", 0) == 0, ExitCode::kData, "data file '", path,
            "' is not a torch.save zip archive (legacy torch.save format, or not torch.save at "
            "all); ", kExpected, " with PyTorch >= 1.6");
  Shard shard;
  shard.path = path;
  shard.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  BNA_CHECK(shard.fd >= 0, ExitCode::kData, "data file '", path, "' cannot be opened: ",
            std::strerror(errno));
  struct stat st {};
  BNA_CHECK(::fstat(shard.fd, &st) == 0, ExitCode::kData, "data file '", path,
            "': ", std::strerror(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  std::string pickle;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    auto [ptr, size] = reader->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(ptr.get()), size);
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    fail(ExitCode::kData, "data file '", path, "' cannot be read as a torch.save archive: ",
         why.substr(0, why.find('\n')), "; ", kExpected);
  }
  Fnv1a hash;
  hash.update(pickle.data(), pickle.size());
  hash.update(&file_size, sizeof file_size);
  std::string source = "data file '" + path + "'";
  torchfile::UnpickleResult parsed;
  try {
    parsed = torchfile::unpickle(pickle, source);
  } catch (const Error& e) {
    fail(ExitCode::kData, e.what());  // the walker reports kCheckpoint; here it is data
  }
  // LibTorch's pickle_save wraps typed dicts in torch.jit._pickle.restore_type_tag(d, type).
  const PickleValue* top = parsed.root.get();
  if (top->kind == PickleValue::Kind::kCall && top->items.size() == 2 && top->items[0] &&
      top->items[0]->kind == PickleValue::Kind::kGlobal &&
      top->items[0]->text == "torch.jit._pickle.restore_type_tag" && top->items[1] &&
      !top->items[1]->items.empty() && top->items[1]->items[0]) {
    top = top->items[1]->items[0].get();
  }
  const PickleValue& root = *top;
  const bool is_dict = root.kind == PickleValue::Kind::kDict || !root.entries.empty();
  PickleRef inputs_value = is_dict ? dictEntry(root, "inputs") : parsed.root;
  BNA_CHECK(inputs_value, ExitCode::kData, "data file '", path,
            "' holds a dict without an \"inputs\" key; ", kExpected);
  BNA_CHECK(inputs_value->tensor, ExitCode::kData, "data file '", path, "': ",
            is_dict ? "\"inputs\" is not a tensor" : "the saved object is not a tensor or dict",
            "; ", kExpected);
  const TensorRecord& in = *inputs_value->tensor;

  // The inputs: a contiguous floating tensor [N, ...].
  static const std::vector<c10::ScalarType> kFloating = {c10::kFloat, c10::kDouble, c10::kHalf,
                                                        c10::kBFloat16};
  BNA_CHECK(std::find(kFloating.begin(), kFloating.end(), in.dtype) != kFloating.end(),
            ExitCode::kData, "data file '", path, "': inputs are ", in.type_name,
            ", expected a floating-point tensor (float32, float64, float16 or bfloat16; convert "
            "integer images with .float() and scale them as the model expects)");
  BNA_CHECK(in.sizes.size() >= 2, ExitCode::kData, "data file '", path, "': inputs have shape ",
            shapeString(in.sizes), ", expected [N, ...] with at least 2 dimensions");
  BNA_CHECK(in.sizes[0] > 0, ExitCode::kData, "data file '", path, "' holds no samples");
  BNA_CHECK(isContiguous(in), ExitCode::kData, "data file '", path,
            "': inputs are a non-contiguous view; save inputs.contiguous() instead");
  const int64_t n = numel(in.sizes);
  BNA_CHECK(in.offset >= 0 && n <= in.storage_numel - in.offset, ExitCode::kData, "data file '",
            path, "': inputs extend past their storage");
  const size_t esize = c10::elementSize(in.dtype);
  const std::string record = "data/" + in.storage_key;
  uint64_t record_start = 0;
  try {
    BNA_CHECK(reader->hasRecord(record), ExitCode::kData, "data file '", path,
              "' lacks the storage record '", record, "' its pickle names");
    record_start = reader->getRecordOffset(record);
  } catch (const c10::Error& e) {
    fail(ExitCode::kData, "data file '", path, "': record '", record,
         "': ", e.what_without_backtrace());
  }
  checkStored(shard.fd, path, record, record_start);
  const uint64_t storage_bytes = static_cast<uint64_t>(in.storage_numel) * esize;
  BNA_CHECK(record_start + storage_bytes <= file_size, ExitCode::kData, "data file '", path,
            "' is truncated: record '", record, "' needs ", storage_bytes, " bytes at offset ",
            record_start, " but the file has ", file_size);
  shard.samples = in.sizes[0];
  shard.sample_shape.assign(in.sizes.begin() + 1, in.sizes.end());
  shard.file_dtype = in.dtype;
  shard.sample_bytes = static_cast<size_t>(n / in.sizes[0]) * esize;
  shard.data_offset = record_start + static_cast<uint64_t>(in.offset) * esize;

  // A sample of the bytes: the first and last 64 KiB of the inputs.
  const uint64_t total = static_cast<uint64_t>(n) * esize;
  std::vector<char> probe(std::min<uint64_t>(total, 65536));
  for (uint64_t at : {shard.data_offset, shard.data_offset + total - probe.size()}) {
    BNA_CHECK(preadFully(shard.fd, probe.data(), probe.size(), at), ExitCode::kData,
              "data file '", path, "': read error");
    hash.update(probe.data(), probe.size());
  }
  shard.hash = hash.digest();

  // Optional labels: an integer tensor [N], read whole (small).
  if (PickleRef labels = is_dict ? dictEntry(root, "labels") : nullptr) {
    BNA_CHECK(labels->tensor, ExitCode::kData, "data file '", path,
              "': \"labels\" is not a tensor");
    const TensorRecord& lt = *labels->tensor;
    BNA_CHECK(c10::isIntegralType(lt.dtype, /*includeBool=*/false) && lt.sizes.size() == 1 &&
                  lt.sizes[0] == shard.samples && isContiguous(lt) && lt.offset >= 0 &&
                  lt.sizes[0] <= lt.storage_numel - lt.offset,
              ExitCode::kData, "data file '", path, "': \"labels\" is ", lt.type_name, " ",
              shapeString(lt.sizes), ", expected an integer tensor [", shard.samples, "]");
    at::DataPtr bytes;
    try {
      bytes = std::get<0>(reader->getRecord("data/" + lt.storage_key));
    } catch (const c10::Error& e) {
      fail(ExitCode::kData, "data file '", path, "': labels: ", e.what_without_backtrace());
    }
    const auto* base = static_cast<const char*>(bytes.get()) + lt.offset * c10::elementSize(lt.dtype);
    shard.labels.resize(static_cast<size_t>(shard.samples));
    for (int64_t i = 0; i < shard.samples; ++i) {
      int64_t v = 0;
      switch (lt.dtype) {
        case c10::kLong: std::memcpy(&v, base + 8 * i, 8); break;
        case c10::kInt: { int32_t x; std::memcpy(&x, base + 4 * i, 4); v = x; break; }
        case c10::kShort: { int16_t x; std::memcpy(&x, base + 2 * i, 2); v = x; break; }
        case c10::kChar: v = static_cast<int8_t>(base[i]); break;
        case c10::kByte: v = static_cast<uint8_t>(base[i]); break;
        default: fail(ExitCode::kData, "data file '", path, "': unsupported label dtype");
      }
      BNA_CHECK(v >= 0, ExitCode::kData, "data file '", path, "': label ", i, " is ", v,
                ", expected a class index >= 0");
      shard.labels[static_cast<size_t>(i)] = v;
    }
  }
  return shard;
}

class TensorDataset final : public Dataset {
 public:
  TensorDataset(std::string path, std::vector<Shard> shards)
      : path_(std::move(path)), shards_(std::move(shards)) {
    int64_t total = 0;
    for (const auto& s : shards_) {
      starts_.push_back(total);
      total += s.samples;
    }
    size_ = total;
    const c10::ScalarType f = shards_.front().file_dtype;
    dtype_ = (f == c10::kDouble) ? c10::kDouble : c10::kFloat;
  }
  int64_t size() const override { return size_; }
  std::vector<int64_t> sampleShape() const override { return shards_.front().sample_shape; }
  c10::ScalarType dtype() const override { return dtype_; }
  bool hasLabels() const override { return !shards_.front().labels.empty(); }

  int64_t read(int64_t index, void* out) const override {
    const auto [shard, local] = locate(index);
    const uint64_t at = shard.data_offset + static_cast<uint64_t>(local) * shard.sample_bytes;
    const c10::ScalarType f = shard.file_dtype;
    if (f == dtype_) {
      BNA_CHECK(preadFully(shard.fd, out, shard.sample_bytes, at), ExitCode::kData,
                "data file '", shard.path, "': cannot read sample ", local, " (", errnoText(),
                "); was the file changed while the job ran?");
    } else {  // float16 / bfloat16 -> float32
      thread_local std::vector<uint16_t> scratch;
      scratch.resize(shard.sample_bytes / 2);
      BNA_CHECK(preadFully(shard.fd, scratch.data(), shard.sample_bytes, at), ExitCode::kData,
                "data file '", shard.path, "': cannot read sample ", local, " (", errnoText(),
                ")");
      auto* dst = static_cast<float*>(out);
      for (size_t i = 0; i < scratch.size(); ++i) {
        dst[i] = f == c10::kHalf
                     ? static_cast<float>(c10::Half(scratch[i], c10::Half::from_bits()))
                     : static_cast<float>(c10::BFloat16(scratch[i], c10::BFloat16::from_bits()));
      }
    }
    return shard.labels.empty() ? -1 : shard.labels[static_cast<size_t>(local)];
  }

  std::string sampleName(int64_t index) const override {
    const auto [shard, local] = locate(index);
    return shard.path + "[" + std::to_string(local) + "]";
  }
  std::string describe() const override {
    std::vector<int64_t> shape = sampleShape();
    shape.insert(shape.begin(), size_);
    return "tensor " + std::string(shards_.size() > 1 ? "shards " : "file ") + path_ + " " +
           shapeString(shape) + " " + c10::toString(shards_.front().file_dtype) +
           (shards_.size() > 1 ? " in " + std::to_string(shards_.size()) + " files" : "") +
           (hasLabels() ? ", with labels" : "");
  }
  uint64_t contentHash() const override {
    Fnv1a hash;
    for (const auto& s : shards_) {
      hash.update(&s.hash, sizeof s.hash);
      hash.update(s.labels.data(), s.labels.size() * sizeof(int64_t));
    }
    return hash.digest();
  }

 private:
  static std::string errnoText() { return errno ? std::strerror(errno) : "end of file"; }
  std::pair<const Shard&, int64_t> locate(int64_t index) const {
    const auto it = std::upper_bound(starts_.begin(), starts_.end(), index) - 1;
    const size_t s = static_cast<size_t>(it - starts_.begin());
    return {shards_[s], index - *it};
  }

  std::string path_;
  std::vector<Shard> shards_;
  std::vector<int64_t> starts_;  // first global index of each shard
  int64_t size_ = 0;
  c10::ScalarType dtype_ = c10::kFloat;
};

}  // namespace

std::unique_ptr<Dataset> openTensorData(const std::string& path) {
  std::vector<Shard> shards;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_regular_file() && io::isTensorFileName(entry.path().string())) {
        files.push_back(entry.path().string());
      }
    }
    BNA_CHECK(!ec, ExitCode::kData, "data folder '", path, "' cannot be listed: ", ec.message());
    BNA_CHECK(!files.empty(), ExitCode::kData, "data folder '", path,
              "' holds no .pt files (tensor shards)");
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      shards.push_back(openShard(f));
      const Shard& first = shards.front();
      const Shard& s = shards.back();
      BNA_CHECK(s.sample_shape == first.sample_shape, ExitCode::kData, "data shard '", s.path,
                "' has samples of shape ", shapeString(s.sample_shape), " but '", first.path,
                "' has ", shapeString(first.sample_shape), "; every shard needs the same");
      BNA_CHECK((s.file_dtype == c10::kDouble) == (first.file_dtype == c10::kDouble),
                ExitCode::kData, "data shard '", s.path, "' is ", c10::toString(s.file_dtype),
                " but '", first.path, "' is ", c10::toString(first.file_dtype));
      BNA_CHECK(s.labels.empty() == first.labels.empty(), ExitCode::kData, "data shard '",
                s.path, "' ", s.labels.empty() ? "has no" : "has", " labels but '", first.path,
                "' ", first.labels.empty() ? "has none" : "has them");
    }
  } else {
    shards.push_back(openShard(path));
  }
  return std::make_unique<TensorDataset>(path, std::move(shards));
}

}  // namespace bnadapt::data
