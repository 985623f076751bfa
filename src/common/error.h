// Typed errors and the exit codes they map to.
//
// Every error a user can meet is a bnadapt::Error carrying an ExitCode class. The message
// names the thing (file, config key, layer, rank), what was expected and what was found.
// main() maps the class to the process exit code; README.md documents the table.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace bnadapt {

// Process exit codes. Stable: scripts and SLURM jobs test them.
enum class ExitCode : int {
  kOk = 0,
  kInternal = 1,       // a bug or an unexpected library error
  kUsage = 2,          // command line or config file
  kData = 3,           // calibration data missing, unreadable, wrong shape, non-finite
  kModel = 4,          // model missing, unreadable, no adaptable BN layer, forward failed
  kCommunication = 5,  // MPI/NCCL failure, ranks disagree, another rank failed
  kOutput = 6,         // an output cannot be written, or would overwrite an input
  kCheckpoint = 7,     // checkpoint unreadable, unsupported, or not matching the model
  kTimeout = 8,        // no progress for --timeout seconds (a hung or stopped rank)
};

const char* exitCodeName(ExitCode code);

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  ExitCode code() const noexcept { return code_; }

 private:
  ExitCode code_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Throws Error(code, message built from args).
template <typename... Args>
[[noreturn]] void fail(ExitCode code, Args&&... args) {
  throw Error(code, detail::concat(std::forward<Args>(args)...));
}

}  // namespace bnadapt

// BNA_CHECK(cond, code, msg...): throws bnadapt::Error(code, msg) when cond is false.
#define BNA_CHECK(cond, code, ...)             \
  do {                                         \
    if (!(cond)) {                             \
      ::bnadapt::fail((code), __VA_ARGS__);    \
    }                                          \
  } while (0)

// Internal invariant: a failure is a bug, reported with file and line.
#define BNA_ASSERT(cond, ...)                                                      \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      ::bnadapt::fail(::bnadapt::ExitCode::kInternal, "internal error at ", __FILE__, \
                      ":", __LINE__, ": ", #cond, " ", ##__VA_ARGS__);             \
    }                                                                              \
  } while (0)
