#include "data/loader.h"

#include <chrono>

#include <ATen/ATen.h>

#include "common/error.h"

namespace bnadapt::data {

Loader::Loader(const Dataset& data, std::vector<std::vector<int64_t>> samples,
               std::vector<int64_t> ids, const LoaderOptions& options)
    : data_(data),
      samples_(std::move(samples)),
      ids_(std::move(ids)),
      options_(options),
      sample_bytes_([&] {
        size_t n = c10::elementSize(data.dtype());
        for (int64_t d : data.sampleShape()) n *= static_cast<size_t>(d);
        return n;
      }()) {
  BNA_ASSERT(samples_.size() == ids_.size(), "loader: ", samples_.size(), " batches, ",
             ids_.size(), " ids");
  BNA_ASSERT(options_.threads >= 1 && options_.prefetch_batches >= 1, "loader options");
  for (const auto& batch : samples_) BNA_ASSERT(!batch.empty(), "loader: an empty batch");
  for (int t = 0; t < options_.threads; ++t) threads_.emplace_back([this] { work(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  window_.notify_all();
  for (auto& t : threads_) t.join();
}

void Loader::work() {
  const size_t window = static_cast<size_t>(options_.prefetch_batches);
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    window_.wait(lock, [&] {
      return stop_ || claim_batch_ >= samples_.size() || claim_batch_ < taken_ + window;
    });
    if (stop_ || claim_batch_ >= samples_.size()) return;
    const size_t batch = claim_batch_;
    const size_t pos = claim_pos_;
    if (++claim_pos_ == samples_[batch].size()) {
      ++claim_batch_;
      claim_pos_ = 0;
    }
    if (batch - taken_ == slots_.size()) {  // first sample of a new batch: make its slot
      Slot slot;
      const size_t n = samples_[batch].size();
      slot.remaining = static_cast<int64_t>(n);
      slot.labels.assign(n, -1);
      slot.errors.resize(n);
      std::vector<int64_t> shape = data_.sampleShape();
      shape.insert(shape.begin(), static_cast<int64_t>(n));
      try {
        slot.inputs = at::empty(
            shape, at::TensorOptions().dtype(data_.dtype()).pinned_memory(options_.pin_memory));
      } catch (...) {  // every sample of the batch reports the allocation failure
        for (auto& e : slot.errors) e = std::current_exception();
      }
      slots_.push_back(std::move(slot));
    }
    Slot& slot = slots_[batch - taken_];  // deque: stays valid while other slots come and go
    if (!slot.inputs.defined()) {         // allocation failed: nothing to read into
      if (--slot.remaining == 0) ready_.notify_all();
      continue;
    }
    auto* dst = static_cast<char*>(slot.inputs.data_ptr()) + pos * sample_bytes_;
    lock.unlock();
    int64_t label = -1;
    std::exception_ptr error;
    try {
      label = data_.read(samples_[batch][pos], dst);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    slot.labels[pos] = label;
    slot.errors[pos] = error;
    if (--slot.remaining == 0) ready_.notify_all();
  }
}

bool Loader::next(Batch& out) {
  if (taken_ >= samples_.size()) return false;
  Slot slot;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto t0 = std::chrono::steady_clock::now();
    ready_.wait(lock, [&] { return !slots_.empty() && slots_.front().remaining == 0; });
    wait_seconds_ +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    slot = std::move(slots_.front());
    slots_.pop_front();
    ++taken_;
  }
  window_.notify_all();

  const std::vector<int64_t>& indices = samples_[taken_ - 1];
  out = Batch();
  out.id = ids_[taken_ - 1];
  out.requested = static_cast<int64_t>(indices.size());
  std::vector<int64_t> kept;
  for (size_t j = 0; j < indices.size(); ++j) {
    if (!slot.errors[j]) {
      kept.push_back(static_cast<int64_t>(j));
      continue;
    }
    try {
      std::rethrow_exception(slot.errors[j]);
    } catch (const Error& e) {
      if (!options_.skip_corrupt || e.code() != ExitCode::kData) throw;
      out.skipped.push_back(e.what());  // read() errors name the file
    }
  }
  if (kept.size() == indices.size()) {
    out.inputs = std::move(slot.inputs);
  } else {
    const at::Tensor rows = at::tensor(kept, at::kLong);
    out.inputs = slot.inputs.index_select(0, rows);
  }
  if (data_.hasLabels()) {
    std::vector<int64_t> labels;
    for (int64_t j : kept) labels.push_back(slot.labels[static_cast<size_t>(j)]);
    out.labels = at::tensor(labels, at::kLong);
  }
  return true;
}

}  // namespace bnadapt::data
