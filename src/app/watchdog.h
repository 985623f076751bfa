// Never wait forever: a thread per rank that ends the job when the rank makes no progress
// for `timeout` seconds, naming the phase it was stuck in. bnadapt_dist starts it before
// MPI initialisation (with --timeout from the command line, else the default) and keeps it
// until the process ends, so start-up, the settings, every phase of the Job and MPI's
// finalisation are covered.
//
// Progress is "entered a phase" or "finished a batch". A rank waiting in a collective for a
// dead, stopped or hung peer stops making progress too, so every rank exits within the
// timeout (and the launcher, seeing a rank exit non-zero, ends the rest).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace bnadapt::app {

class Watchdog {
 public:
  // on_timeout(phase, idle_seconds) runs on the watchdog thread and must not return
  // (it ends the process). timeout_seconds <= 0 disables the watchdog.
  using Handler = std::function<void(const std::string& phase, double idle_seconds)>;
  Watchdog(double timeout_seconds, Handler on_timeout);
  // A watchdog whose handler logs "no progress for N s during PHASE (--timeout T); ending
  // the job" and exits the process with ExitCode::kTimeout (the launcher ends the others).
  explicit Watchdog(double timeout_seconds);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void enter(const std::string& phase);  // a new phase; counts as progress
  void kick();                           // progress within the phase
  // Changes the timeout (the config file may set another than the command line's default);
  // <= 0 disables. It cannot start a watchdog constructed disabled.
  void setTimeout(double timeout_seconds);

 private:
  void loop();

  double timeout_;  // guarded by mu_
  Handler on_timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string phase_ = "start-up";
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace bnadapt::app
