#include "report/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/log.h"

namespace bnadapt::report {

Progress::Progress(int64_t local_batches, int64_t global_batches, bool enabled)
    : local_total_(local_batches),
      global_total_(global_batches),
      enabled_(enabled && local_batches > 0),
      // Under mpirun a rank's stdout is often a pseudo-terminal even when mpirun's own output
      // goes to a file: draw a bar only when started directly on a terminal.
      tty_(::isatty(STDOUT_FILENO) == 1 && std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr &&
           std::getenv("PMI_RANK") == nullptr && std::getenv("SLURM_PROCID") == nullptr),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

void Progress::step(int64_t samples) {
  ++done_;
  samples_ += samples;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  if ((tty_ && since >= 0.2) || since >= 5.0 || done_ == local_total_) {
    last_print_ = now;
    print(done_ == local_total_);
  }
}

void Progress::finish() {
  if (enabled_ && tty_) std::fputs("\n", stdout);
  std::fflush(stdout);
}

void Progress::print(bool final) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = static_cast<double>(done_) / static_cast<double>(local_total_);
  const double rate = elapsed > 0 ? static_cast<double>(samples_) / elapsed : 0.0;
  const double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0.0;
  char line[256];
  std::snprintf(line, sizeof line,
                "forward: %lld/%lld batches on rank 0 (%lld global), %.1f samples/s, "
                "elapsed %.1fs, ETA %.1fs",
                static_cast<long long>(done_), static_cast<long long>(local_total_),
                static_cast<long long>(global_total_), rate, elapsed, eta);
  if (tty_) {
    const int width = 30;
    const int fill = static_cast<int>(frac * width);
    std::string bar = "[" + std::string(fill, '#') + std::string(width - fill, '.') + "] ";
    std::fprintf(stdout, "\r%s%s%s", bar.c_str(), line, final ? "" : "   ");
    std::fflush(stdout);
  } else {
    log::info(line);
  }
}

}  // namespace bnadapt::report
