// libFuzzer target for the checkpoint readers, which take hostile files by design.
//
// The first byte picks the reader; the rest is its input:
//   0  the pickle walker: unpickle(bytes) (data.pkl of a torch.save zip), then tensorDicts()
//   1  the safetensors reader: SafetensorsFile::parse(bytes), then a patch of every small
//      patchable tensor (writes inside the parsed byte ranges)
//   2  a whole torch.save zip (LibTorch's zip reader, data.pkl through the walker, plan() for
//      a model with one BatchNorm layer "bn" of 4 channels, write() to /dev/null); the bytes
//      are handed over in a memfd, so nothing touches the disk
// (other values: the same, modulo 3). tests/fuzz/corpus_checkpoint/ holds seeds of each kind.
//
// Expected outcomes: success, or bnadapt::Error (a clean "checkpoint" error). Anything else is a
// finding: a crash or sanitizer report, or another exception type (libFuzzer reports it as an
// uncaught exception) such as c10::Error or std::out_of_range escaping the readers.
// FUZZ_VERBOSE=1 prints each input's error (to see how far the seeds get).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

#include "torchfile/pickle_walker.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/torch_zip_checkpoint.h"
#include "common/error.h"

namespace {

using bnadapt::checkpoint::ExpectedBuffer;

void fuzzPickle(std::string_view bytes) {
  const bnadapt::torchfile::UnpickleResult result =
      bnadapt::torchfile::unpickle(bytes, "fuzz.pkl");
  for (const auto& dict : bnadapt::torchfile::tensorDicts(result)) {
    for (const auto& [key, tensor] : dict.tensors) {
      if (tensor == nullptr || tensor->sizes.size() != tensor->strides.size()) std::abort();
    }
  }
}

void fuzzSafetensors(std::string bytes) {
  auto file = bnadapt::checkpoint::SafetensorsFile::parse(std::move(bytes), "fuzz.safetensors");
  const std::vector<bnadapt::checkpoint::SafetensorsEntry> entries = file.entries();
  for (const auto& e : entries) {
    if (file.find(e.key) == nullptr || e.begin > e.end || e.end > file.bytes().size()) {
      std::abort();
    }
    int64_t numel = 1;
    for (int64_t d : e.shape) numel = d > 4096 ? 4097 : numel * d;
    if (numel > 4096) continue;
    const bool integral = e.dtype == "I64" || e.dtype == "I32";
    try {
      file.patch(e.key, at::ones({numel}, integral ? at::kLong : at::kFloat));
    } catch (const bnadapt::Error&) {
      // an opaque dtype, or a byte range that does not hold numel values
    }
  }
}

void fuzzTorchZip(const uint8_t* data, std::size_t size) {
  const int fd = memfd_create("fuzz_checkpoint", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<std::size_t>(n);
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  auto ckpt = bnadapt::checkpoint::openTorchZip("/proc/self/fd/" + std::to_string(fd));
  const std::vector<ExpectedBuffer> buffers = {{"bn.running_mean", {4}, true},
                                               {"bn.running_var", {4}, true},
                                               {"bn.num_batches_tracked", {}, false}};
  ckpt->plan(buffers, "");
  ckpt->describe();
  ckpt->write("/dev/null",
              {{"bn.running_mean", at::zeros({4}, at::kDouble)},
               {"bn.running_var", at::ones({4}, at::kDouble)},
               {"bn.num_batches_tracked", at::scalar_tensor(0, at::kLong)}},
              3);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 3) {
      case 0: fuzzPickle(bytes); break;
      case 1: fuzzSafetensors(std::string(bytes)); break;
      default: fuzzTorchZip(data + 1, size - 1); break;
    }
  } catch (const bnadapt::Error& e) {  // the expected outcome for malformed input
    if (std::getenv("FUZZ_VERBOSE") != nullptr) std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 0;
}
