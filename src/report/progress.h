// Rank 0's progress display: a bar on a terminal, a line every few seconds otherwise.
#pragma once

#include <chrono>
#include <cstdint>

namespace bnadapt::report {

class Progress {
 public:
  // `local_batches`: batches this rank runs; `global_batches`: the whole job's.
  Progress(int64_t local_batches, int64_t global_batches, bool enabled);
  void step(int64_t samples);  // one local batch done
  void finish();

 private:
  void print(bool final);
  int64_t local_total_;
  int64_t global_total_;
  bool enabled_;
  bool tty_;
  int64_t done_ = 0;
  int64_t samples_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace bnadapt::report
