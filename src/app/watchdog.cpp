#include "app/watchdog.h"

namespace bnadapt::app {

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

void Watchdog::kick() {
  std::lock_guard<std::mutex> lock(mu_);
  last_ = std::chrono::steady_clock::now();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  const auto tick = std::chrono::milliseconds(std::min<long>(1000, long(timeout_ * 250) + 1));
  while (!stop_) {
    cv_.wait_for(lock, tick, [this] { return stop_; });
    if (stop_) break;
    const double idle =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_).count();
    if (idle >= timeout_) {
      const std::string phase = phase_;
      lock.unlock();
      on_timeout_(phase, idle);  // does not return
      lock.lock();
    }
  }
}

}  // namespace bnadapt::app
