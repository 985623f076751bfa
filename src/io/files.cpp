#include "io/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#include "common/log.h"

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

namespace {

std::atomic<FaultHook> g_fault_hook{nullptr};
std::atomic<bool> g_force_named_temps{false};

void faultPoint(const char* point) {
  if (FaultHook hook = g_fault_hook.load()) hook(point);
}

constexpr char kTempTag[] = ".bnadapt-tmp-";
constexpr size_t kSuffixLength = 6;  // as mkstemp's XXXXXX
constexpr char kSuffixChars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

std::string baseOf(const std::string& path) { return path.substr(path.find_last_of('/') + 1); }

// ".<name>.bnadapt-tmp-": the temps of `target`, beside it, start with this.
std::string tempPrefix(const std::string& target) {
  return dirOf(target) + "/." + baseOf(target) + kTempTag;
}

bool isTempSuffix(const std::string& suffix) {
  return suffix.size() == kSuffixLength &&
         suffix.find_first_not_of(kSuffixChars) == std::string::npos;
}

std::string randomSuffix() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  std::string s(kSuffixLength, 'X');
  for (char& c : s) c = kSuffixChars[gen() % (sizeof kSuffixChars - 1)];
  return s;
}

bool sameInode(int fd, const std::string& path) {
  struct stat a {}, b {};
  return ::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

// An unnamed file in `dir` (O_TMPFILE), reachable by path as /proc/self/fd/N; -1 where the
// filesystem or kernel cannot make one, or /proc is missing. Other errors fail.
int openUnnamed(const std::string& dir, const std::string& target, std::string& proc_path) {
  if (g_force_named_temps.load()) return -1;
  const int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    // EISDIR: a kernel without O_TMPFILE; EOPNOTSUPP: a filesystem without it (NFS, ...).
    if (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL) return -1;
    fail(ExitCode::kOutput, "cannot write '", target, "': cannot create a file in '", dir,
         "': ", std::strerror(errno));
  }
  proc_path = "/proc/self/fd/" + std::to_string(fd);
  if (::access(proc_path.c_str(), W_OK) != 0) {
    ::close(fd);
    return -1;
  }
  ::flock(fd, LOCK_EX);  // where locks are unsupported, only a concurrent cleanup could err
  return fd;
}

// A fresh named temp beside `target`, locked; its name goes to `tmp`.
int openNamed(const std::string& target, std::string& tmp) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string templ = tempPrefix(target) + "XXXXXX";
    const int fd = ::mkostemp(templ.data(), O_CLOEXEC);
    BNA_CHECK(fd >= 0, ExitCode::kOutput, "cannot write '", target,
              "': cannot create a temp file beside it: ", std::strerror(errno));
    // Another process's removeStaleTemps may have taken the name between mkostemp and
    // flock (it removes unlocked temps): then the name is no longer ours; take another.
    ::flock(fd, LOCK_EX);  // where locks are unsupported, only a concurrent cleanup could err
    if (sameInode(fd, templ)) {
      tmp = templ;
      return fd;
    }
    ::close(fd);
  }
  fail(ExitCode::kOutput, "cannot write '", target, "': no temp name beside it stayed ours");
}

// Links the unnamed file `fd` (reachable as `proc_path`) to `dest`; false with errno set.
bool linkUnnamed(int fd, const std::string& proc_path, const std::string& dest) {
  if (::linkat(AT_FDCWD, proc_path.c_str(), AT_FDCWD, dest.c_str(), AT_SYMLINK_FOLLOW) == 0) {
    return true;
  }
  if (errno == EEXIST) return false;
  const int err = errno;  // e.g. /proc gone since: AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH)
  if (::linkat(fd, "", AT_FDCWD, dest.c_str(), AT_EMPTY_PATH) == 0) return true;
  if (errno != EEXIST) errno = err;
  return false;
}

}  // namespace

void setFaultHook(FaultHook hook) { g_fault_hook.store(hook); }

void forceNamedTempsForTesting(bool force) { g_force_named_temps.store(force); }

size_t removeStaleTemps(const std::string& target) {
  const std::string dir = dirOf(target);
  const std::string prefix = "." + baseOf(target) + kTempTag;
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.compare(0, prefix.size(), prefix) == 0 && isTempSuffix(name.substr(prefix.size()))) {
        names.push_back(name);
      }
    }
    ::closedir(d);
  }
  size_t removed = 0;
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    // Unlocked: its writer is gone (a lock dies with its process, SIGKILL included).
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ::flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        sameInode(fd, path) && ::unlink(path.c_str()) == 0) {
      ++removed;
      log::warn("removed '", path, "', a temp file an interrupted earlier run left beside '",
                target, "'");
    }
    ::close(fd);
  }
  return removed;
}

StagedFile::StagedFile(std::string path,
                       const std::function<void(const std::string& tmp_path)>& write_tmp, int mode)
    : path_(std::move(path)) {
  checkWritable(path_);
  removeStaleTemps(path_);
  fd_ = openUnnamed(dirOf(path_), path_, tmp_);
  unnamed_ = fd_ >= 0;
  if (!unnamed_) fd_ = openNamed(path_, tmp_);
  const mode_t mask = ::umask(0);  // outputs get the usual 0666 & ~umask
  ::umask(mask);
  const mode_t final_mode = mode >= 0 ? static_cast<mode_t>(mode) : (0666 & ~mask);
  try {
    write_tmp(tmp_);
    faultPoint("write-mid");
    BNA_CHECK(unnamed_ || sameInode(fd_, tmp_), ExitCode::kInternal, "the writer replaced ",
              tmp_, " instead of writing into it");
    BNA_CHECK(::fchmod(fd_, final_mode) == 0, ExitCode::kOutput, "chmod failed: ",
              std::strerror(errno));
    BNA_CHECK(::fsync(fd_) == 0, ExitCode::kOutput, "fsync failed: ", std::strerror(errno));
  } catch (const std::exception& e) {
    discard();
    fail(ExitCode::kOutput, "cannot write '", path_, "': ", e.what());
  }
}

StagedFile::StagedFile(StagedFile&& other) noexcept
    : path_(std::move(other.path_)),
      tmp_(std::move(other.tmp_)),
      fd_(other.fd_),
      unnamed_(other.unnamed_) {
  other.tmp_.clear();
  other.fd_ = -1;
}

StagedFile::~StagedFile() noexcept { discard(); }

void StagedFile::discard() noexcept {
  if (fd_ < 0) return;
  if (!unnamed_) ::unlink(tmp_.c_str());  // while still locked: never another run's file
  ::close(fd_);                            // an unnamed file vanishes here
  fd_ = -1;
  tmp_.clear();
}

void StagedFile::commit() {
  BNA_ASSERT(fd_ >= 0, "commit of ", path_, " twice");
  faultPoint("write-fsynced");
  if (!unnamed_) {
    BNA_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, ExitCode::kOutput, "cannot rename ",
              tmp_, " to ", path_, ": ", std::strerror(errno));
    ::close(fd_);
  } else if (!linkUnnamed(fd_, tmp_, path_)) {
    // The target exists: link to a fresh temp name, rename that over the target (atomic).
    BNA_CHECK(errno == EEXIST, ExitCode::kOutput, "cannot create ", path_, ": ",
              std::strerror(errno));
    std::string named;
    for (int attempt = 0; named.empty(); ++attempt) {
      const std::string candidate = tempPrefix(path_) + randomSuffix();
      if (linkUnnamed(fd_, tmp_, candidate)) {
        named = candidate;
      } else {
        BNA_CHECK(errno == EEXIST && attempt < 100, ExitCode::kOutput, "cannot create a temp ",
                  "name beside ", path_, ": ", std::strerror(errno));
      }
    }
    faultPoint("write-linked");
    if (std::rename(named.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      ::unlink(named.c_str());
      fail(ExitCode::kOutput, "cannot rename ", named, " to ", path_, ": ", std::strerror(err));
    }
    ::close(fd_);
  } else {
    ::close(fd_);
  }
  fd_ = -1;
  tmp_.clear();
  fsyncPath(dirOf(path_), true);
}

std::function<void(const std::string&)> bytesWriter(std::string bytes) {
  return [bytes = std::move(bytes)](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    BNA_CHECK(out.good(), ExitCode::kOutput, "cannot create ", tmp, ": ", std::strerror(errno));
    // In two halves, with the "write-mid" fault point between them (a crash test kills here).
    const size_t half = bytes.size() / 2;
    out.write(bytes.data(), static_cast<std::streamsize>(half));
    out.flush();
    faultPoint("write-mid");
    out.write(bytes.data() + half, static_cast<std::streamsize>(bytes.size() - half));
    out.flush();
    BNA_CHECK(out.good(), ExitCode::kOutput, "write to ", tmp, " failed: ", std::strerror(errno));
  };
}

}  // namespace bnadapt::io
