#include "app/fault_injection.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "io/files.h"

namespace bnadapt::app {
namespace {

std::atomic<int> g_rank{-1};  // the rank io's write points report as

void ioFaultPoint(const char* point) { maybeInjectFault(point, g_rank.load()); }

// BNADAPT_FAULT_RECORD=PATH: appends "RANK PHASE ACTION" to PATH (fsynced) before the action,
// so that a test knows the fault fired even when the launcher drops the log line of a
// process it saw die (Open MPI may not drain a SIGKILLed rank's stderr).
void recordFault(const char* phase, int rank, const std::string& action) {
  const char* path = std::getenv("BNADAPT_FAULT_RECORD");
  if (path == nullptr || *path == '\0') return;
  const int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string line = std::to_string(rank) + " " + phase + " " + action + "\n";
  if (::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) ::fsync(fd);
  ::close(fd);
}

}  // namespace

std::string reportedVersion(const std::string& actual, int rank) {
  const char* spec = std::getenv("BNADAPT_FAULT");
  const std::string prefix = std::to_string(rank) + ":version:";
  if (spec == nullptr || std::string(spec).rfind(prefix, 0) != 0) return actual;
  return std::string(spec).substr(prefix.size());
}

void maybeInjectFault(const char* phase, int rank) {
  static const char* spec = std::getenv("BNADAPT_FAULT");
  if (spec == nullptr) return;
  if (rank >= 0 && g_rank.exchange(rank) < 0) io::setFaultHook(&ioFaultPoint);
  const std::string s = spec;
  const auto a = s.find(':'), b = s.find(':', a + 1);
  if (a == std::string::npos || b == std::string::npos) return;
  if (std::to_string(rank) != s.substr(0, a) || s.substr(a + 1, b - a - 1) != phase) return;
  const std::string action = s.substr(b + 1);
  log::warn("BNADAPT_FAULT: injecting '", action, "' in phase ", phase);
  recordFault(phase, rank, action);
  if (action == "sleep") std::this_thread::sleep_for(std::chrono::hours(1));
  if (action == "exit") std::_Exit(42);
  if (action == "stop") std::raise(SIGSTOP);
  if (action == "kill") std::raise(SIGKILL);
  if (action == "segv") std::raise(SIGSEGV);
  if (action == "oom") {  // what a too-large batch does on a GPU: an allocation that fails
    fail(ExitCode::kData, "injected out-of-memory: ",
         "CUDA out of memory (BNADAPT_FAULT oom in phase ", phase, ")");
  }
}

}  // namespace bnadapt::app
