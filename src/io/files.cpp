#include "io/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace bnadapt::io {
namespace {

std::string dirOf(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

void fsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  BNA_CHECK(fd >= 0, ExitCode::kOutput, "cannot open ", path, " to sync it: ",
            std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  BNA_CHECK(rc == 0, ExitCode::kOutput, "fsync of ", path, " failed: ", std::strerror(err));
}

}  // namespace

namespace {

// Opens a regular file for reading; errors name `what` and the path. Returns its size.
std::ifstream openRegular(const std::string& path, const std::string& what, ExitCode code,
                          uint64_t& size) {
  struct stat st {};
  BNA_CHECK(::stat(path.c_str(), &st) == 0, code, what, " '", path,
            "' cannot be read: ", std::strerror(errno));
  BNA_CHECK(S_ISREG(st.st_mode), code, what, " '", path, "' is not a regular file");
  std::ifstream in(path, std::ios::binary);
  BNA_CHECK(in.good(), code, what, " '", path, "' cannot be opened: ", std::strerror(errno));
  size = static_cast<uint64_t>(st.st_size);
  return in;
}

}  // namespace

std::vector<char> readFile(const std::string& path, const std::string& what, ExitCode code) {
  uint64_t size = 0;
  std::ifstream in = openRegular(path, what, code, size);
  std::vector<char> bytes(static_cast<size_t>(size));
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  BNA_CHECK(in.gcount() == static_cast<std::streamsize>(bytes.size()), code, what, " '", path,
            "': short read (", in.gcount(), " of ", bytes.size(), " bytes)");
  return bytes;
}

std::string readHead(const std::string& path, size_t n, const std::string& what, ExitCode code) {
  uint64_t size = 0;
  std::ifstream in = openRegular(path, what, code, size);
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(in.gcount()));
  return head;
}

int fileMode(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int>(st.st_mode & 07777) : -1;
}

std::string resolveLinks(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : path;
}

bool sameFile(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void checkWritable(const std::string& path) {
  const std::string dir = dirOf(path);
  struct stat st {};
  BNA_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), ExitCode::kOutput,
            "cannot write '", path, "': folder '", dir, "' does not exist");
  BNA_CHECK(::access(dir.c_str(), W_OK) == 0, ExitCode::kOutput, "cannot write '", path,
            "': folder '", dir, "' is not writable");
  BNA_CHECK(::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode), ExitCode::kOutput,
            "cannot write '", path, "': it is a folder");
}

StagedFile::StagedFile(std::string path,
                       const std::function<void(const std::string& tmp_path)>& write_tmp, int mode)
    : path_(std::move(path)) {
  checkWritable(path_);
  // Reserve a fresh name beside the target (O_EXCL: never another process's file).
  std::string templ = dirOf(path_) + "/." + path_.substr(path_.find_last_of('/') + 1) +
                      ".tmp.XXXXXX";
  const int fd = ::mkstemp(templ.data());
  BNA_CHECK(fd >= 0, ExitCode::kOutput, "cannot write '", path_, "': cannot create a temp ",
            "file beside it: ", std::strerror(errno));
  const mode_t mask = ::umask(0);  // mkstemp makes 0600; outputs get the usual 0666 & ~umask
  ::umask(mask);
  ::fchmod(fd, mode >= 0 ? static_cast<mode_t>(mode) : (0666 & ~mask));
  ::close(fd);
  tmp_ = templ;
  try {
    write_tmp(tmp_);
    fsyncPath(tmp_, false);
  } catch (const std::exception& e) {
    std::remove(tmp_.c_str());
    tmp_.clear();
    fail(ExitCode::kOutput, "cannot write '", path_, "': ", e.what());
  }
}

StagedFile::StagedFile(StagedFile&& other) noexcept
    : path_(std::move(other.path_)), tmp_(std::move(other.tmp_)) {
  other.tmp_.clear();
}

StagedFile::~StagedFile() noexcept {
  if (!tmp_.empty()) std::remove(tmp_.c_str());
}

void StagedFile::commit() {
  BNA_ASSERT(!tmp_.empty(), "commit of ", path_, " twice");
  BNA_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, ExitCode::kOutput, "cannot rename ",
            tmp_, " to ", path_, ": ", std::strerror(errno));
  tmp_.clear();
  fsyncPath(dirOf(path_), true);
}

std::function<void(const std::string&)> bytesWriter(std::string bytes) {
  return [bytes = std::move(bytes)](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    BNA_CHECK(out.good(), ExitCode::kOutput, "cannot create ", tmp, ": ", std::strerror(errno));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    BNA_CHECK(out.good(), ExitCode::kOutput, "write to ", tmp, " failed: ", std::strerror(errno));
  };
}

}  // namespace bnadapt::io
