#include "checkpoint/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <new>

#include <ATen/ATen.h>

#include "checkpoint/safetensors.h"
#include "checkpoint/tensor_bytes.h"
#include "checkpoint/torch_zip_checkpoint.h"
#include "checkpoint/weights.h"
#include "common/error.h"
#include "io/file_names.h"
#include "io/files.h"

namespace bnadapt::checkpoint {
namespace {

c10::ScalarType safetensorsDtype(const std::string& dtype) {
  if (dtype == "F32") return c10::kFloat;
  if (dtype == "F64") return c10::kDouble;
  if (dtype == "F16") return c10::kHalf;
  if (dtype == "BF16") return c10::kBFloat16;
  if (dtype == "I64") return c10::kLong;
  if (dtype == "I32") return c10::kInt;
  return c10::ScalarType::Undefined;
}

// safetensors: one flat dict of tensors; only the BN byte ranges change.
class SafetensorsCheckpoint final : public Checkpoint {
 public:
  SafetensorsCheckpoint(std::string path, std::vector<char> bytes)
      : path_(std::move(path)),
        file_(SafetensorsFile::parse(std::string(bytes.begin(), bytes.end()), path_)) {}

  void plan(const std::vector<ExpectedBuffer>& buffers, const std::string& key_choice) override {
    KeyedDict dict{"", {}, {}};
    for (const auto& e : file_.entries()) {
      dict.keys.push_back(e.key);
      dict.sizes.push_back(e.shape);
    }
    match_ = matchKeys({dict}, buffers, key_choice, path_);
    targets_.clear();
    for (const ExpectedBuffer& b : buffers) {
      const std::string key = match_.prefix + b.name;
      const SafetensorsEntry* e = file_.find(key);
      if (e == nullptr) continue;  // optional buffer
      checkCompatible(path_, key, b, e->shape, safetensorsDtype(e->dtype), e->dtype);
      targets_.emplace_back(b.name, key);
    }
  }

  void write(const std::string& path, const io::NamedTensors& updates,
             int64_t batches_added) const override {
    SafetensorsFile out = file_;
    for (const auto& [name, values] : updates) {
      for (const auto& [buffer, key] : targets_) {
        if (buffer != name) continue;
        const SafetensorsEntry* e = out.find(key);
        const c10::ScalarType dtype = safetensorsDtype(e->dtype);
        if (isBatchCounter(name)) {  // the file's own count + batches now
          std::string bytes = out.bytes().substr(e->begin, e->end - e->begin);
          writeCounter(bytes, dtype, {0}, batches_added, key, path_);
          out.patch(key, at::from_blob(bytes.data(), {1}, dtype).clone().view(values.sizes()));
        } else {
          out.patch(key, convertChecked(values, dtype, key, path_));
        }
      }
    }
    io::bytesWriter(out.bytes())(path);
  }

  const KeyMatch& match() const override { return match_; }
  const std::string& path() const override { return path_; }

  std::string describe() const override {
    return "safetensors file " + path_ + ": key prefix '" + match_.prefix + "', " +
           std::to_string(targets_.size()) + " BN buffer(s) to patch, " +
           std::to_string(file_.entries().size()) + " tensor(s) in all";
  }

 private:
  uint64_t stateDictBytes() const override {
    uint64_t bytes = 0;
    for (const auto& e : file_.entries()) {
      if (e.key.starts_with(match_.prefix)) bytes += e.end - e.begin;
    }
    return bytes;
  }

  io::NamedTensors readTensors() const override {
    io::NamedTensors out;
    for (const auto& e : file_.entries()) {
      if (!e.key.starts_with(match_.prefix)) continue;
      const c10::ScalarType dtype = safetensorsDtype(e.dtype);
      BNA_CHECK(dtype != c10::ScalarType::Undefined, ExitCode::kCheckpoint, path_, ": key '",
                e.key, "' is stored as ", e.dtype, ", which the tool cannot load");
      at::Tensor t = at::empty(e.shape, dtype);
      BNA_CHECK(static_cast<uint64_t>(t.nbytes()) == e.end - e.begin, ExitCode::kCheckpoint,
                path_, ": key '", e.key, "' holds ", e.end - e.begin, " bytes, its shape needs ",
                t.nbytes());
      std::memcpy(t.data_ptr(), file_.bytes().data() + e.begin, t.nbytes());
      out.emplace_back(e.key.substr(match_.prefix.size()), std::move(t));
    }
    return out;
  }

  std::string path_;
  SafetensorsFile file_;
  KeyMatch match_;
  std::vector<std::pair<std::string, std::string>> targets_;  // model buffer -> file key
};

}  // namespace

io::NamedTensors Checkpoint::readStateDict(int readers) const {
  const uint64_t bytes = stateDictBytes();
  checkMemoryFor(bytes, path(), readers);
  try {
    return readTensors();
  } catch (const std::bad_alloc&) {
    failAllocation(bytes, path());
  } catch (const c10::OutOfMemoryError&) {
    failAllocation(bytes, path());
  }
}

std::unique_ptr<Checkpoint> openCheckpoint(const std::string& path, int readers) {
  const std::string head = io::readHead(path, 512, "checkpoint", ExitCode::kCheckpoint);
  auto startsWith = [&](std::string_view magic) {
    return head.size() >= magic.size() && std::string_view(head.data(), magic.size()) == magic;
  };
  if (startsWith("PK\x03\x04") || startsWith("PK\x05\x06")) return openTorchZip(path);
  if (io::isSafetensorsFileName(path) || (head.size() > 8 && head[8] == '{')) {
    std::error_code error;  // read whole, then parsed: a file larger than memory is refused
    const uintmax_t size = std::filesystem::file_size(path, error);
    if (!error) checkMemoryFor(size, path, readers);
    return std::make_unique<SafetensorsCheckpoint>(
        path, io::readFile(path, "checkpoint", ExitCode::kCheckpoint));
  }
  if (startsWith("\x80\x02") || startsWith("\x80\x03") || startsWith("\x80\x04") ||
      (head.size() > 262 && head.compare(257, 5, "ustar") == 0)) {
    fail(ExitCode::kCheckpoint, "checkpoint '", path,
         "' is in the legacy torch.save format (PyTorch < 1.6, or "
         "_use_new_zipfile_serialization=False); re-save it in the zip format: python -c "
         "\"import torch; torch.save(torch.load('", path, "'), '", path, ".zip')\"");
  }
  fail(ExitCode::kCheckpoint, "checkpoint '", path,
       "' is neither a torch.save zip archive nor a safetensors file");
}

}  // namespace bnadapt::checkpoint
