// File helpers: whole-file reads, atomic writes, and the "never write over an input" check.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"

namespace bnadapt::io {

// Reads a whole file; a missing or unreadable file fails with `code`, naming `what` and path.
std::vector<char> readFile(const std::string& path, const std::string& what, ExitCode code);

// The first `n` bytes of a file (fewer if it is shorter); errors as readFile.
std::string readHead(const std::string& path, size_t n, const std::string& what, ExitCode code);

// Permission bits of an existing file, or -1.
int fileMode(const std::string& path);

// The path with symlinks resolved when it exists, else as given.
std::string resolveLinks(const std::string& path);

// True when both paths name the same existing file (symlinks and hard links included).
bool sameFile(const std::string& a, const std::string& b);

// A file written beside its target, fsynced, and put in place by commit(); a crash (even
// SIGKILL) at any point leaves the target untouched or complete. Stage every output first,
// then commit them all.
//
// On Linux the file is an unnamed O_TMPFILE inode in the target's folder: write_tmp gets
// "/proc/self/fd/N" and opens it by path like any file (ofstream, fopen "wb", LibTorch's
// save: open with O_TRUNC, in place; a writer that renames over the path cannot use it). A
// process killed before commit leaves nothing behind. commit() links it to the target when
// the target is absent, else to a temp name ".<name>.bnadapt-tmp-XXXXXX" that is renamed
// over the target (a kill between those two steps leaves that temp), then fsyncs the folder.
// Where O_TMPFILE is unsupported (some network filesystems) or /proc is missing, the file is
// that named temp from the start (the previous design). Either way the temp is flock()ed
// while this process owns it, and staging a target first removes its unlocked temps, left by
// a killed earlier run (removeStaleTemps). Destroyed uncommitted, nothing is left.
class StagedFile {
 public:
  // `mode`: the file's permission bits; -1 for the usual 0666 & ~umask. The file is 0600
  // while written (so a read-only mode never stops the writer) and gets `mode` before fsync.
  StagedFile(std::string path, const std::function<void(const std::string& tmp_path)>& write_tmp,
             int mode = -1);
  ~StagedFile() noexcept;
  StagedFile(StagedFile&& other) noexcept;
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;
  StagedFile& operator=(StagedFile&&) = delete;

  const std::string& path() const { return path_; }
  // Where the staged bytes can be read (or written) by path until commit: "/proc/self/fd/N"
  // or the named temp. Valid in this process only.
  const std::string& tmpPath() const { return tmp_; }
  // True when the staged file has no name (O_TMPFILE); false on the named-temp fallback.
  bool unnamed() const { return unnamed_; }
  void commit();

 private:
  void discard() noexcept;

  std::string path_;
  std::string tmp_;
  int fd_ = -1;  // open (and flock()ed) from construction until commit or destruction
  bool unnamed_ = false;
};

// Removes the temps that killed earlier StagedFiles of `target` left beside it: regular files
// named ".<name>.bnadapt-tmp-XXXXXX" that no live process holds locked. Returns how many;
// each is logged. StagedFile calls it before staging.
size_t removeStaleTemps(const std::string& target);

// Test-only fault points inside the write path, for the crash tests (BNADAPT_FAULT, armed by
// app/fault_injection.cpp; io knows nothing of it):
//   "write-mid"      a bytesWriter half way through its bytes, and every StagedFile after
//                    write_tmp returned, before fsync
//   "write-fsynced"  in commit(): complete and fsynced, before the link / rename
//   "write-linked"   in commit(), replacing a target: linked to its temp name, before the rename
// The hook runs on the writing thread. nullptr (the default) turns them off.
using FaultHook = void (*)(const char* point);
void setFaultHook(FaultHook hook);

// Test-only: the named-temp fallback even where O_TMPFILE works (unit tests of that path).
void forceNamedTempsForTesting(bool force);

// A write_tmp function that writes `bytes`.
std::function<void(const std::string&)> bytesWriter(std::string bytes);

// Fails (kOutput, naming the path) unless `path` could be staged and committed: its folder
// exists and is writable, and `path` is not a folder.
void checkWritable(const std::string& path);

}  // namespace bnadapt::io
