#include "app/fault_injection.h"

#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/log.h"

namespace bnadapt::app {

void maybeInjectFault(const char* phase, int rank) {
  static const char* spec = std::getenv("BNADAPT_FAULT");
  if (spec == nullptr) return;
  const std::string s = spec;
  const auto a = s.find(':'), b = s.find(':', a + 1);
  if (a == std::string::npos || b == std::string::npos) return;
  if (std::to_string(rank) != s.substr(0, a) || s.substr(a + 1, b - a - 1) != phase) return;
  const std::string action = s.substr(b + 1);
  log::warn("BNADAPT_FAULT: injecting '", action, "' in phase ", phase);
  if (action == "sleep") std::this_thread::sleep_for(std::chrono::hours(1));
  if (action == "exit") std::_Exit(42);
  if (action == "stop") std::raise(SIGSTOP);
  if (action == "kill") std::raise(SIGKILL);
  if (action == "segv") std::raise(SIGSEGV);
}

}  // namespace bnadapt::app
