// The prefetching loader under ThreadSanitizer: many decoding threads, a small window,
// skipped and failing samples, early destruction. Built with -fsanitize=thread (the loader
// and this driver; LibTorch itself is not instrumented). Exit 0 with no TSan report.
#include <cstdio>
#include <memory>
#include <set>
#include <vector>

#include <ATen/ATen.h>

#include "common/error.h"
#include "data/dataset.h"
#include "data/loader.h"

namespace {

using namespace bnadapt;

// Sample i is the value i; listed indices are unreadable.
class Fake : public data::Dataset {
 public:
  explicit Fake(std::set<int64_t> bad) : bad_(std::move(bad)) {}
  int64_t size() const override { return 100000; }
  std::vector<int64_t> sampleShape() const override { return {16}; }
  bool hasLabels() const override { return true; }
  int64_t read(int64_t index, void* out) const override {
    if (bad_.count(index)) fail(ExitCode::kData, "sample ", index, " is corrupt");
    auto* f = static_cast<float*>(out);
    for (int i = 0; i < 16; ++i) f[i] = static_cast<float>(index);
    return index % 7;
  }
  std::string sampleName(int64_t index) const override { return std::to_string(index); }
  std::string describe() const override { return "fake"; }
  uint64_t contentHash() const override { return 0; }

 private:
  std::set<int64_t> bad_;
};

std::vector<std::vector<int64_t>> batches(int64_t n, int64_t size) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t b = 0; b < n; ++b) {
    out.emplace_back();
    for (int64_t j = 0; j < size; ++j) out.back().push_back(b * size + j);
  }
  return out;
}

}  // namespace

int main() {
  int failures = 0;
  for (int threads : {1, 4, 8}) {
    for (int window : {1, 3}) {
      Fake data({5, 77, 78, 400});
      data::LoaderOptions o;
      o.threads = threads;
      o.prefetch_batches = window;
      o.skip_corrupt = true;
      data::Loader loader(data, batches(60, 13), std::vector<int64_t>(60, 0), o);
      data::Batch b;
      int64_t rows = 0, skipped = 0;
      while (loader.next(b)) {
        rows += b.inputs.size(0);
        skipped += static_cast<int64_t>(b.skipped.size());
      }
      if (rows != 60 * 13 - 4 || skipped != 4) {
        std::printf("threads %d window %d: %lld rows, %lld skipped\n", threads, window,
                    static_cast<long long>(rows), static_cast<long long>(skipped));
        ++failures;
      }
    }
  }
  {  // an error mid-way, then destruction with work in flight
    Fake data({300});
    data::LoaderOptions o;
    o.threads = 6;
    o.prefetch_batches = 4;
    auto loader = std::make_unique<data::Loader>(data, batches(100, 10),
                                                 std::vector<int64_t>(100, 0), o);
    data::Batch b;
    try {
      while (loader->next(b)) {
      }
      ++failures;
    } catch (const Error&) {
    }
    loader.reset();
  }
  std::printf("loader under TSan: %s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
