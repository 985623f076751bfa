#include "checkpoint/torch_zip_checkpoint.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string_view>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include "torchfile/pickle_walker.h"
#include "checkpoint/tensor_bytes.h"
#include "checkpoint/zip_patch.h"
#include "common/error.h"
#include "common/torch_compat.h"

namespace bnadapt::checkpoint {
namespace {

using torchfile::DictNode;
using torchfile::DtypeInfo;
using torchfile::TensorRecord;
using torchfile::UnpickleResult;
using torchfile::tensorDicts;
using torchfile::unpickle;

std::string firstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

// torch.save (2.7+) states the alignment of its records' data in this record, "64" by default.
constexpr const char* kAlignmentRecord = ".storage_alignment";
// torch.save (2.x) identifies the file in this record: 40 decimal digits.
constexpr const char* kSerializationIdRecord = ".data/serialization_id";

class TorchZipCheckpoint final : public Checkpoint {
 public:
  explicit TorchZipCheckpoint(std::string path) : path_(std::move(path)) {
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path_);
    } catch (const c10::Error& e) {
      fail(ExitCode::kCheckpoint, path_, ": not a readable torch.save zip archive: ",
           firstLine(e.what_without_backtrace()));
    }
    BNA_CHECK(reader_->hasRecord("data.pkl"), ExitCode::kCheckpoint, path_,
              ": a zip archive without data.pkl: not a torch.save checkpoint (a TorchScript "
              "model? pass it with --model)");
    // Every record is read (and CRC-checked) now, before any forward pass, so a damaged
    // archive fails at once rather than at write time.
    std::vector<std::string> all;
    try {
      all = reader_->getAllRecords();
    } catch (const c10::Error& e) {
      fail(ExitCode::kCheckpoint, path_, ": damaged archive: ",
           firstLine(e.what_without_backtrace()));
    }
    std::set<std::string> names;
    for (const std::string& name : all) {
      BNA_CHECK(names.insert(name).second, ExitCode::kCheckpoint, path_, ": record '", name,
                "' appears twice in the archive");
      readRecord(name);
    }
    if (reader_->hasRecord("byteorder")) {
      auto [ptr, size] = readRecord("byteorder");
      const std::string order(static_cast<const char*>(ptr.get()), size);
      BNA_CHECK(order == "little", ExitCode::kCheckpoint, path_, ": byte order '", order,
                "' is not supported (little-endian only)");
    }
    if (reader_->hasRecord(kAlignmentRecord)) alignment_ = readAlignment();
    auto [ptr, size] = readRecord("data.pkl");
    pickle_ = unpickle(std::string_view(static_cast<const char*>(ptr.get()), size),
                       path_ + " (data.pkl)");
  }

  void plan(const std::vector<ExpectedBuffer>& buffers, const std::string& key_choice) override {
    dicts_ = tensorDicts(pickle_);
    std::vector<KeyedDict> keyed;
    for (const auto& d : dicts_) {
      KeyedDict k{d.path, {}, {}};
      for (const auto& [key, rec] : d.tensors) {
        k.keys.push_back(key);
        k.sizes.push_back(rec->sizes);
      }
      keyed.push_back(std::move(k));
    }
    match_ = matchKeys(keyed, buffers, key_choice, path_);
    const DictNode& dict = dicts_.at(match_.dict_index);
    std::map<std::string, const TensorRecord*> byKey(dict.tensors.begin(), dict.tensors.end());
    targets_.clear();
    for (const ExpectedBuffer& b : buffers) {
      const std::string key = match_.prefix + b.name;
      auto it = byKey.find(key);
      if (it == byKey.end()) {
        BNA_CHECK(!b.required, ExitCode::kCheckpoint, path_, ": key '", key, "' is missing");
        continue;  // num_batches_tracked of a very old checkpoint
      }
      const TensorRecord& rec = *it->second;
      checkCompatible(path_, key, b, rec.sizes, rec.dtype, rec.type_name);
      const std::string record = "data/" + rec.storage_key;
      BNA_CHECK(reader_->hasRecord(record), ExitCode::kCheckpoint, path_, ": key '", key,
                "' refers to storage record '", record, "', which is missing");
      auto [ptr, size] = readRecord(record);
      const int64_t elsize = static_cast<int64_t>(c10::elementSize(rec.dtype));
      BNA_CHECK(static_cast<int64_t>(size) >= rec.storage_numel * elsize, ExitCode::kCheckpoint,
                path_, ": storage record '", record, "' holds ", size, " bytes, expected ",
                rec.storage_numel * elsize);
      const std::vector<int64_t> elements = elementsOf(rec, key);
      for (int64_t e : elements) {
        BNA_CHECK(e < rec.storage_numel, ExitCode::kCheckpoint, path_, ": key '", key,
                  "' reaches beyond its storage (", rec.storage_numel, " elements)");
      }
      targets_.emplace(b.name, Target{key, &rec, elements});
    }
    checkNoSharedStorage();
  }

  void write(const std::string& path, const io::NamedTensors& updates,
             int64_t batches_added) const override {
    // storage record -> patched bytes
    std::map<std::string, std::string> patched;
    for (const auto& [name, values] : updates) {
      auto t = targets_.find(name);
      if (t == targets_.end()) continue;
      const TensorRecord& rec = *t->second.record;
      const std::string record = "data/" + rec.storage_key;
      auto p = patched.find(record);
      if (p == patched.end()) {
        auto [ptr, size] = readRecord(record);
        p = patched.emplace(record, std::string(static_cast<const char*>(ptr.get()), size)).first;
      }
      if (isBatchCounter(name)) {  // the checkpoint's own count, plus the batches used now
        writeCounter(p->second, rec.dtype, t->second.elements, batches_added, t->second.key, path_);
      } else {
        writeElements(p->second, rec.dtype, t->second.elements, values, t->second.key, path_);
      }
    }
    // A writer callback that never fails: LibTorch 1.13's writer throws again from its
    // destructor after a failed write, which would terminate the process. Opened for reading
    // too: keepSerializationId reads the written archive back.
    std::FILE* file = std::fopen(path.c_str(), "w+b");
    BNA_CHECK(file != nullptr, ExitCode::kOutput, "cannot open ", path, ": ", std::strerror(errno));
    int write_errno = 0;
    auto sink = [&](const void* data, size_t n) -> size_t {
      if (write_errno == 0 && std::fwrite(data, 1, n, file) != n) write_errno = errno ? errno : EIO;
      return n;
    };
    // The input's records in the input's order (torch.load's calculate_storage_offsets
    // relies on it), aligned as the input says where this LibTorch's writer can; where it
    // cannot, the alignment record states the one used. The writer adds the version record,
    // and from LibTorch 2.x on it writes its own .data/serialization_id (the copied one is
    // dropped); keepSerializationId then puts the input's back.
    const uint64_t alignment = compat::streamWriterAlignment(alignment_);
    try {
      auto writer = compat::makeStreamWriter(sink, alignment);
      writer->setMinVersion(reader_->version());
      for (const std::string& name : reader_->getAllRecords()) {
        if (name == "version" || name == ".data/version") continue;  // the writer adds it
        auto p = patched.find(name);
        if (p != patched.end()) {
          writer->writeRecord(name, p->second.data(), p->second.size());
        } else if (name == kAlignmentRecord && alignment != alignment_) {
          const std::string stated = std::to_string(alignment);
          writer->writeRecord(name, stated.data(), stated.size());
        } else {
          auto [ptr, size] = readRecord(name);
          writer->writeRecord(name, ptr.get(), size);
        }
      }
      writer->writeEndOfFile();
    } catch (const c10::Error& e) {
      std::fclose(file);
      fail(ExitCode::kOutput, "writing the checkpoint failed: ", firstLine(e.what_without_backtrace()));
    }
    if (std::fflush(file) != 0 && write_errno == 0) write_errno = errno;
    if (write_errno == 0) {
      try {
        keepSerializationId(::fileno(file), path);
      } catch (...) {
        std::fclose(file);
        throw;
      }
    }
    std::fclose(file);
    BNA_CHECK(write_errno == 0, ExitCode::kOutput, "writing ", path, " failed: ",
              std::strerror(write_errno));
  }

  const KeyMatch& match() const override { return match_; }
  const std::string& path() const override { return path_; }

  std::string describe() const override {
    return "torch.save zip archive " + path_ + ": state_dict at " +
           (match_.dict_path.empty() ? std::string("the root") : "'" + match_.dict_path + "'") +
           " with key prefix '" + match_.prefix + "', " + std::to_string(targets_.size()) +
           " BN buffer(s) to patch, " + std::to_string(pickle_.tensors.size()) +
           " tensor(s) in all";
  }

 private:
  // The matched dict's tensors under the prefix: model name -> record.
  std::vector<std::pair<std::string, const TensorRecord*>> stateDict() const {
    std::vector<std::pair<std::string, const TensorRecord*>> out;
    for (const auto& [key, rec] : dicts_.at(match_.dict_index).tensors) {
      if (key.starts_with(match_.prefix)) out.emplace_back(key.substr(match_.prefix.size()), rec);
    }
    return out;
  }

  uint64_t stateDictBytes() const override {
    uint64_t bytes = 0;
    for (const auto& [name, rec] : stateDict()) {
      int64_t numel = 1;
      for (int64_t s : rec->sizes) numel *= s;
      const DtypeInfo* info = torchfile::dtypeByName(rec->type_name);
      bytes += static_cast<uint64_t>(numel) * static_cast<uint64_t>(info ? info->size : 1);
    }
    return bytes;
  }

  io::NamedTensors readTensors() const override {
    std::map<std::string, std::pair<at::DataPtr, size_t>> storages;  // read once each
    io::NamedTensors out;
    for (const auto& [name, rec] : stateDict()) {
      const std::string key = match_.prefix + name;
      BNA_CHECK(rec->dtype != c10::ScalarType::Undefined, ExitCode::kCheckpoint, path_, ": key '",
                key, "' is stored as ", rec->type_name, ", which the tool cannot load");
      const std::string record = "data/" + rec->storage_key;
      auto it = storages.find(record);
      if (it == storages.end()) {
        BNA_CHECK(reader_->hasRecord(record), ExitCode::kCheckpoint, path_, ": key '", key,
                  "' refers to storage record '", record, "', which is missing");
        auto [ptr, size] = readRecord(record);
        it = storages.emplace(record, std::make_pair(std::move(ptr), size)).first;
      }
      const int64_t elsize = static_cast<int64_t>(c10::elementSize(rec->dtype));
      const int64_t numel = static_cast<int64_t>(it->second.second) / elsize;
      int64_t last = rec->offset;  // the view spans storage elements [offset, last]
      bool empty = false;
      for (size_t d = 0; d < rec->sizes.size(); ++d) {
        BNA_CHECK(rec->strides[d] >= 0, ExitCode::kCheckpoint, path_, ": key '", key,
                  "' has a negative stride");
        empty = empty || rec->sizes[d] == 0;
        if (rec->sizes[d] > 0) last += (rec->sizes[d] - 1) * rec->strides[d];
      }
      BNA_CHECK(empty || (rec->offset >= 0 && last < numel), ExitCode::kCheckpoint, path_,
                ": key '", key, "' reaches beyond its storage record '", record, "' (", numel,
                " elements)");
      const at::Tensor storage = at::from_blob(it->second.first.get(), {numel}, rec->dtype);
      out.emplace_back(name, empty ? at::empty(rec->sizes, rec->dtype)
                                   : storage.as_strided(rec->sizes, rec->strides, rec->offset)
                                         .clone(at::MemoryFormat::Contiguous));
    }
    return out;
  }

  struct Target {
    std::string key;               // in the checkpoint, with prefix
    const TensorRecord* record;    // owned by pickle_
    std::vector<int64_t> elements; // storage element of each value, in row-major order
  };

  // A patched checkpoint keeps the input's .data/serialization_id. LibTorch 2.x's writer
  // drops the copied record and writes an id of its own (from the records' names and CRCs)
  // in writeEndOfFile; the archive is complete and flushed to `fd` (not yet fsynced nor
  // renamed into place), so the id's bytes are replaced there, with their CRC-32 in the
  // central directory, the local header and the data descriptor. LibTorch 1.13's writer
  // copies the record as it is: the ids are equal and nothing is written.
  void keepSerializationId(int fd, const std::string& path) const {
    if (!reader_->hasRecord(kSerializationIdRecord)) return;  // a torch 1.x input: none to keep
    auto [ptr, size] = readRecord(kSerializationIdRecord);
    const std::string_view wanted(static_cast<const char*>(ptr.get()), size);
    const std::vector<zip::Member> members = zip::members(fd, path);
    const zip::Member* id = nullptr;
    for (const zip::Member& m : members) {
      const size_t slash = m.name.find('/');  // records sit in the archive's one folder
      if (slash == std::string::npos || m.name.compare(slash + 1, std::string::npos,
                                                       kSerializationIdRecord) != 0) {
        continue;
      }
      BNA_CHECK(id == nullptr, ExitCode::kInternal, "internal error: ", path, " holds '",
                kSerializationIdRecord, "' twice");
      id = &m;
    }
    // A writer that wrote no id and dropped the copy: a record cannot be added after the
    // end of the archive; the output is valid without one (torch 1.x files have none).
    if (id == nullptr) return;
    const std::string current = zip::readData(fd, path, *id);
    if (current == wanted) return;  // LibTorch 1.13: copied as it is
    // An input id of another length (torch.save writes 40 digits) would move every byte
    // after it and the central directory: the writer's own, valid id is kept.
    if (current.size() != wanted.size()) return;
    zip::overwriteData(fd, path, *id, wanted);
  }

  // Storage element indices of a view, refusing views in which two values share an element
  // (an expanded or overlapping tensor cannot hold per-channel statistics).
  std::vector<int64_t> elementsOf(const TensorRecord& rec, const std::string& key) const {
    int64_t numel = 1;
    for (int64_t s : rec.sizes) numel *= s;
    std::vector<int64_t> out;
    out.reserve(numel);
    std::vector<int64_t> index(rec.sizes.size(), 0);
    for (int64_t linear = 0; linear < numel; ++linear) {
      int64_t e = rec.offset;
      for (size_t d = 0; d < rec.sizes.size(); ++d) e += index[d] * rec.strides[d];
      out.push_back(e);
      for (size_t d = rec.sizes.size(); d-- > 0;) {
        if (++index[d] < rec.sizes[d]) break;
        index[d] = 0;
      }
    }
    std::set<int64_t> distinct(out.begin(), out.end());
    BNA_CHECK(distinct.size() == out.size(), ExitCode::kCheckpoint, path_, ": key '", key,
              "' is a view whose values share storage elements (an expanded tensor?); it "
              "cannot hold per-channel statistics");
    return out;
  }

  // A BN buffer must not share storage bytes with any other tensor, or patching it would
  // change that tensor too.
  void checkNoSharedStorage() const {
    for (const auto& [name, target] : targets_) {
      const TensorRecord& t = *target.record;
      const std::set<int64_t> mine(target.elements.begin(), target.elements.end());
      for (const auto& other : pickle_.tensors) {
        if (other.get() == &t || other->storage_key != t.storage_key) continue;
        if (other->offset == t.offset && other->sizes == t.sizes && other->strides == t.strides) {
          continue;  // the same view rebuilt twice
        }
        bool empty = false;
        int64_t last = other->offset;  // the other view spans [offset, last]
        for (size_t d = 0; d < other->sizes.size(); ++d) {
          empty = empty || other->sizes[d] == 0;
          if (other->sizes[d] > 0) last += (other->sizes[d] - 1) * other->strides[d];
        }
        auto first_mine = mine.lower_bound(other->offset);
        const bool overlaps = !empty && first_mine != mine.end() && *first_mine <= last;
        BNA_CHECK(!overlaps, ExitCode::kCheckpoint, path_, ": key '", target.key,
                  "' shares storage '", t.storage_key,
                  "' with another tensor; patching it would change that tensor too");
      }
    }
  }

  // The alignment the input's .storage_alignment record states: a decimal number of bytes
  // from 1 to 1 MiB (torch.save writes 64 unless configured otherwise).
  uint64_t readAlignment() const {
    constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;
    auto [ptr, size] = readRecord(kAlignmentRecord);
    const std::string text(static_cast<const char*>(ptr.get()), size);
    uint64_t value = 0;
    bool ok = !text.empty() && text.size() <= 8;
    for (char ch : text) {
      ok = ok && ch >= '0' && ch <= '9';
      if (ok) value = value * 10 + static_cast<uint64_t>(ch - '0');
    }
    BNA_CHECK(ok && value >= 1 && value <= kMaxAlignment, ExitCode::kCheckpoint, path_,
              ": record '", kAlignmentRecord, "' holds '", text.substr(0, 32),
              "', expected a record alignment in bytes (1 to ", kMaxAlignment, ")");
    return value;
  }

  // A record's bytes; a damaged archive (bad header, CRC) is a checkpoint error.
  std::tuple<at::DataPtr, size_t> readRecord(const std::string& name) const {
    try {
      return reader_->getRecord(name);
    } catch (const c10::Error& e) {
      fail(ExitCode::kCheckpoint, path_, ": record '", name, "' cannot be read: ",
           firstLine(e.what_without_backtrace()));
    }
  }

  std::string path_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
  uint64_t alignment_ = compat::kDefaultRecordAlignment;  // of the input's record data
  UnpickleResult pickle_;
  std::vector<DictNode> dicts_;
  KeyMatch match_;
  std::map<std::string, Target> targets_;  // model buffer name ->
};

}  // namespace

std::unique_ptr<Checkpoint> openTorchZip(const std::string& path) {
  return std::make_unique<TorchZipCheckpoint>(path);
}

}  // namespace bnadapt::checkpoint
