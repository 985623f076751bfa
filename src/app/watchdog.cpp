#include "app/watchdog.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "common/log.h"

namespace bnadapt::app {

Watchdog::Watchdog(double timeout_seconds)
    : Watchdog(timeout_seconds, [this](const std::string& phase, double idle) {
        double timeout = 0;
        {
          std::lock_guard<std::mutex> lock(mu_);
          timeout = timeout_;
        }
        log::error("no progress for ", static_cast<int64_t>(idle), " s during ", phase,
                   " (--timeout ", static_cast<int64_t>(timeout), "); ending the job");
        std::_Exit(static_cast<int>(ExitCode::kTimeout));
      }) {}

Watchdog::Watchdog(double timeout_seconds, Handler on_timeout)
    : timeout_(timeout_seconds), on_timeout_(std::move(on_timeout)) {
  if (timeout_ > 0) thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::enter(const std::string& phase) {
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = phase;
  last_ = std::chrono::steady_clock::now();
}

void Watchdog::setTimeout(double timeout_seconds) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    timeout_ = timeout_seconds;
    last_ = std::chrono::steady_clock::now();
  }
  cv_.notify_all();
}

void Watchdog::kick() {
  std::lock_guard<std::mutex> lock(mu_);
  last_ = std::chrono::steady_clock::now();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const auto tick =
        std::chrono::milliseconds(std::min<long>(1000, long(std::max(0.0, timeout_) * 250) + 1));
    cv_.wait_for(lock, tick, [this] { return stop_; });
    if (stop_) break;
    const double idle =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_).count();
    if (timeout_ > 0 && idle >= timeout_) {
      const std::string phase = phase_;
      lock.unlock();
      on_timeout_(phase, idle);  // does not return
      lock.lock();
    }
  }
}

}  // namespace bnadapt::app
