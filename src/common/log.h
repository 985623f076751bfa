// Rank-prefixed logging: every line starts with "[host r<rank>/<size>]".
// Info goes to stdout, warnings and errors to stderr; one line per call, written whole.
#pragma once

#include <string>

#include "common/error.h"

namespace bnadapt::log {

enum class Level { kInfo, kWarn, kError };

// Sets the process's prefix; before this, lines carry "[bnadapt_dist]".
void setIdentity(const std::string& host, int rank, int size);

// The identity of the calling thread, for ranks that run as threads of one process (tests
// over ThreadCommunicator): while it lives, this thread's lines carry it and rank() is its
// rank; other threads keep theirs.
class ThreadIdentity {
 public:
  ThreadIdentity(const std::string& host, int rank, int size);
  ~ThreadIdentity();
  ThreadIdentity(const ThreadIdentity&) = delete;
  ThreadIdentity& operator=(const ThreadIdentity&) = delete;

 private:
  std::string saved_prefix_;
  int saved_rank_;
};

// The rank of this thread's identity (0 before any).
int rank();

void write(Level level, const std::string& line);

template <typename... Args>
void info(Args&&... args) { write(Level::kInfo, detail::concat(std::forward<Args>(args)...)); }
template <typename... Args>
void warn(Args&&... args) { write(Level::kWarn, detail::concat(std::forward<Args>(args)...)); }
template <typename... Args>
void error(Args&&... args) { write(Level::kError, detail::concat(std::forward<Args>(args)...)); }

// Only rank 0 writes these.
template <typename... Args>
void info0(Args&&... args) { if (rank() == 0) info(std::forward<Args>(args)...); }
template <typename... Args>
void warn0(Args&&... args) { if (rank() == 0) warn(std::forward<Args>(args)...); }

}  // namespace bnadapt::log
