// A background loader: decoding threads fill a bounded window of batches ahead of the
// forward passes, which take them in order.
//
// Work is handed out per sample, in batch order, to `threads` threads; at most
// `prefetch_batches` batches (being filled or ready) exist at once, so memory is bounded and
// the forward passes never wait when reading keeps up. Samples land directly in each batch's
// tensor (page-locked when the device is CUDA, for non-blocking copies).
//
// An unreadable sample ends the job naming its file, or, with skip_corrupt, is left out of
// its batch and reported. Which samples a batch asks for never depends on what was skipped,
// so other batches and other ranks see the same samples either way.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "data/dataset.h"

namespace bnadapt::data {

struct LoaderOptions {
  int threads = 1;           // decoding threads (>= 1)
  int prefetch_batches = 4;  // batches in flight (>= 1)
  bool skip_corrupt = false;
  bool pin_memory = false;   // page-locked batch tensors (needs a CUDA build of LibTorch)
};

struct Batch {
  int64_t id = -1;         // the caller's batch id (a global batch index)
  at::Tensor inputs;       // [kept, ...sample shape] in the data's dtype
  at::Tensor labels;       // int64 [kept]; undefined when the data has no labels
  int64_t requested = 0;   // samples the batch asked for
  std::vector<std::string> skipped;  // why each skipped sample was unreadable, in order
};

class Loader {
 public:
  // `samples[k]` are the sample indices of the k-th batch to deliver; `ids[k]` its id.
  Loader(const Dataset& data, std::vector<std::vector<int64_t>> samples,
         std::vector<int64_t> ids, const LoaderOptions& options);
  ~Loader();  // stops and joins the threads; batches not taken are dropped
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch, in order; false after the last. Throws the error of the batch's first
  // unreadable sample unless skipping (a batch whose samples were all skipped is delivered
  // with zero rows).
  bool next(Batch& out);

  // Seconds next() spent waiting for batches to be ready.
  double waitSeconds() const { return wait_seconds_; }

 private:
  struct Slot {
    at::Tensor inputs;
    std::vector<int64_t> labels;
    std::vector<std::exception_ptr> errors;  // per sample; null when read
    int64_t remaining = 0;                   // samples not yet read
  };
  void work();

  const Dataset& data_;
  const std::vector<std::vector<int64_t>> samples_;
  const std::vector<int64_t> ids_;
  const LoaderOptions options_;
  const size_t sample_bytes_;

  std::mutex mutex_;
  std::condition_variable ready_;   // a batch completed
  std::condition_variable window_;  // the consumer took a batch, or stop
  std::deque<Slot> slots_;          // batches [taken_, taken_ + slots_.size())
  size_t taken_ = 0;                // batches delivered
  size_t claim_batch_ = 0;          // next sample to hand out: (batch, position)
  size_t claim_pos_ = 0;
  bool stop_ = false;
  double wait_seconds_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace bnadapt::data
