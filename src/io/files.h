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

// A file written to a temp beside its target and fsynced; commit() renames it into place
// and fsyncs the folder. Destroyed uncommitted, it removes the temp: the target is either
// untouched or complete. Stage every output first, then commit them all.
class StagedFile {
 public:
  // `mode`: the file's permission bits; -1 for the usual 0666 & ~umask.
  StagedFile(std::string path, const std::function<void(const std::string& tmp_path)>& write_tmp,
             int mode = -1);
  ~StagedFile() noexcept;
  StagedFile(StagedFile&& other) noexcept;
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;
  StagedFile& operator=(StagedFile&&) = delete;

  const std::string& path() const { return path_; }
  const std::string& tmpPath() const { return tmp_; }
  void commit();

 private:
  std::string path_;
  std::string tmp_;
};

// A write_tmp function that writes `bytes`.
std::function<void(const std::string&)> bytesWriter(std::string bytes);

// Fails (kOutput, naming the path) unless `path` could be staged and committed: its folder
// exists and is writable, and `path` is not a folder.
void checkWritable(const std::string& path);

}  // namespace bnadapt::io
