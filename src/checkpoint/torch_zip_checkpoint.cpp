#include "checkpoint/torch_zip_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <map>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include "checkpoint/pickle_walker.h"
#include "checkpoint/tensor_bytes.h"
#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

int64_t extent(const TensorRecord& r) {  // elements from offset to one past the last
  int64_t last = 0;
  for (size_t i = 0; i < r.sizes.size(); ++i) {
    if (r.sizes[i] == 0) return 0;
    last += (r.sizes[i] - 1) * r.strides[i];
  }
  return last + 1;
}

class TorchZipCheckpoint final : public Checkpoint {
 public:
  explicit TorchZipCheckpoint(std::string path) : path_(std::move(path)) {
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path_);
      BNA_CHECK(reader_->hasRecord("data.pkl"), ExitCode::kCheckpoint, path_,
                ": a zip archive without data.pkl: not a torch.save checkpoint (a TorchScript "
                "model? pass it with --model)");
      if (reader_->hasRecord("byteorder")) {
        auto [ptr, size] = readRecord("byteorder");
        const std::string order(static_cast<const char*>(ptr.get()), size);
        BNA_CHECK(order == "little", ExitCode::kCheckpoint, path_, ": byte order '", order,
                  "' is not supported (little-endian only)");
      }
      auto [ptr, size] = readRecord("data.pkl");
      pickle_ = unpickle(std::string_view(static_cast<const char*>(ptr.get()), size),
                         path_ + " (data.pkl)");
    } catch (const Error&) {
      throw;
    } catch (const c10::Error& e) {
      fail(ExitCode::kCheckpoint, path_, ": not a readable torch.save zip archive: ",
           firstLine(e.what_without_backtrace()));
    }
  }

  void plan(const std::vector<ExpectedBuffer>& buffers, const std::string& key_choice) override {
    const std::vector<DictNode> dicts = tensorDicts(pickle_);
    std::vector<KeyedDict> keyed;
    for (const auto& d : dicts) {
      KeyedDict k{d.path, {}, {}};
      for (const auto& [key, rec] : d.tensors) {
        k.keys.push_back(key);
        k.sizes.push_back(rec->sizes);
      }
      keyed.push_back(std::move(k));
    }
    match_ = matchKeys(keyed, buffers, key_choice, path_);
    const DictNode& dict = *std::find_if(dicts.begin(), dicts.end(), [&](const DictNode& d) {
      return d.path == match_.dict_path;
    });
    targets_.clear();
    for (const ExpectedBuffer& b : buffers) {
      const std::string key = match_.prefix + b.name;
      auto it = std::find_if(dict.tensors.begin(), dict.tensors.end(),
                             [&](const auto& kv) { return kv.first == key; });
      if (it == dict.tensors.end()) continue;  // optional (num_batches_tracked), checked above
      const TensorRecord& rec = *it->second;
      checkCompatible(path_, key, b, rec.sizes, rec.dtype, rec.storage_type);
      const std::string record = "data/" + rec.storage_key;
      BNA_CHECK(reader_->hasRecord(record), ExitCode::kCheckpoint, path_, ": key '", key,
                "' refers to storage record '", record, "', which is missing");
      const int64_t elsize = static_cast<int64_t>(c10::elementSize(rec.dtype));
      BNA_CHECK(rec.offset + extent(rec) <= rec.storage_numel, ExitCode::kCheckpoint, path_,
                ": key '", key, "' reaches beyond its storage (", rec.storage_numel,
                " elements)");
      auto [ptr, size] = readRecord(record);
      BNA_CHECK(static_cast<int64_t>(size) >= rec.storage_numel * elsize, ExitCode::kCheckpoint,
                path_, ": storage record '", record, "' holds ", size, " bytes, expected ",
                rec.storage_numel * elsize);
      targets_.emplace(b.name, Target{key, rec});
    }
    checkNoSharedStorage();
  }

  void write(const std::string& path, const io::NamedTensors& updates) const override {
    // storage record -> patched bytes
    std::map<std::string, std::string> patched;
    for (const auto& [name, values] : updates) {
      auto t = targets_.find(name);
      if (t == targets_.end()) continue;
      const TensorRecord& rec = t->second.record;
      const std::string record = "data/" + rec.storage_key;
      auto p = patched.find(record);
      if (p == patched.end()) {
        auto [ptr, size] = readRecord(record);
        p = patched.emplace(record, std::string(static_cast<const char*>(ptr.get()), size)).first;
      }
      writeElements(p->second, rec.dtype, rec.offset, rec.sizes, rec.strides, values,
                    t->second.key, path_);
    }
    try {
      caffe2::serialize::PyTorchStreamWriter writer(path);
      writer.setMinVersion(reader_->version());
      for (const std::string& name : reader_->getAllRecords()) {
        if (name == "version" || name == ".data/version") continue;  // the writer adds it
        auto p = patched.find(name);
        if (p != patched.end()) {
          writer.writeRecord(name, p->second.data(), p->second.size());
        } else {
          auto [ptr, size] = readRecord(name);
          writer.writeRecord(name, ptr.get(), size);
        }
      }
      writer.writeEndOfFile();
    } catch (const c10::Error& e) {
      fail(ExitCode::kOutput, "writing the checkpoint failed: ", firstLine(e.what_without_backtrace()));
    }
  }

  std::string describe() const override {
    return "torch.save zip archive " + path_ + ": state_dict at " +
           (match_.dict_path.empty() ? std::string("the root") : "'" + match_.dict_path + "'") +
           " with key prefix '" + match_.prefix + "', " + std::to_string(targets_.size()) +
           " BN buffer(s) to patch, " + std::to_string(pickle_.tensors.size()) +
           " tensor(s) in all";
  }

 private:
  struct Target {
    std::string key;  // in the checkpoint, with prefix
    TensorRecord record;
  };

  // A BN buffer must not share storage bytes with any other tensor, or patching it would
  // change that tensor too.
  void checkNoSharedStorage() const {
    for (const auto& [name, target] : targets_) {
      const TensorRecord& t = target.record;
      for (const auto& [node, other] : pickle_.tensors) {
        if (other.storage_key != t.storage_key) continue;
        const bool same_view = other.offset == t.offset && other.sizes == t.sizes &&
                               other.strides == t.strides;
        if (same_view) continue;  // the same tensor reached twice (memo) or its Parameter
        const int64_t a0 = t.offset, a1 = t.offset + extent(t);
        const int64_t b0 = other.offset, b1 = other.offset + extent(other);
        BNA_CHECK(a1 <= b0 || b1 <= a0, ExitCode::kCheckpoint, path_, ": key '", target.key,
                  "' shares storage '", t.storage_key,
                  "' with another tensor; patching it would change that tensor too");
      }
    }
  }

  static std::string firstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

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
  UnpickleResult pickle_;
  KeyMatch match_;
  std::map<std::string, Target> targets_;  // model buffer name ->
};

}  // namespace

std::unique_ptr<Checkpoint> openTorchZip(const std::string& path) {
  return std::make_unique<TorchZipCheckpoint>(path);
}

}  // namespace bnadapt::checkpoint
