// io::StagedFile's crash safety: what is on disk at each fault point, modes, writers that
// open the temp by path (ofstream, fopen, open with O_TRUNC, LibTorch's save), cleanup of
// the temps a killed run left. Every case runs on the unnamed (O_TMPFILE) path and on the
// named-temp fallback.
#include "io/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/script.h>

#include "common/error.h"
#include "io/sha256.h"

namespace bnadapt::io {
namespace {

// A fresh folder, removed with its files at scope exit.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    path_ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/files_crash_XXXXXX";
    if (::mkdtemp(path_.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  }
  ~TempDir() {
    for (const auto& name : list()) std::remove((path_ + "/" + name).c_str());
    ::rmdir(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // Every entry but . and .., sorted.
  std::vector<std::string> list() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// Open file descriptors of this process.
size_t openFds() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

mode_t currentUmask() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return mask;
}

// The fault hook records each point and what the folder held then (a crash at that point
// leaves exactly that).
struct Snapshot {
  std::string point;
  std::vector<std::string> names;
};
std::vector<Snapshot>* g_snapshots = nullptr;
const TempDir* g_dir = nullptr;
void recordPoint(const char* point) {
  if (g_snapshots != nullptr) g_snapshots->push_back({point, g_dir->list()});
}

class StagedFileCrash : public ::testing::TestWithParam<bool> {  // param: named fallback
 protected:
  void SetUp() override { forceNamedTempsForTesting(GetParam()); }
  void TearDown() override {
    forceNamedTempsForTesting(false);
    setFaultHook(nullptr);
    g_snapshots = nullptr;
    g_dir = nullptr;
  }
  bool named() const { return GetParam(); }
};

bool isTempOf(const std::string& name, const std::string& target) {
  const std::string prefix = "." + target + ".bnadapt-tmp-";
  return name.size() == prefix.size() + 6 && name.compare(0, prefix.size(), prefix) == 0;
}

TEST_P(StagedFileCrash, TakesThePathItIsAskedTo) {
  TempDir dir;
  StagedFile f(dir.file("out.bin"), bytesWriter("x"));
  EXPECT_EQ(f.unnamed(), !named());  // O_TMPFILE works in the test's temp folder (ext4, tmpfs)
  if (named()) {
    EXPECT_TRUE(isTempOf(f.tmpPath().substr(f.tmpPath().find_last_of('/') + 1), "out.bin"))
        << f.tmpPath();
  } else {
    EXPECT_EQ(f.tmpPath().rfind("/proc/self/fd/", 0), 0u) << f.tmpPath();
  }
}

TEST_P(StagedFileCrash, CommitWritesTheFileWithTheRightMode) {
  TempDir dir;
  {
    StagedFile f(dir.file("default.bin"), bytesWriter("default mode"));
    f.commit();
    EXPECT_TRUE(f.tmpPath().empty());
  }
  StagedFile g(dir.file("explicit.bin"), bytesWriter("explicit mode"), 0640);
  g.commit();
  // A read-only mode is applied after writing, so the writer can still write.
  StagedFile h(dir.file("readonly.bin"), bytesWriter("read-only"), 0444);
  h.commit();
  EXPECT_EQ(slurp(dir.file("default.bin")), "default mode");
  EXPECT_EQ(fileMode(dir.file("default.bin")), static_cast<int>(0666 & ~currentUmask()));
  EXPECT_EQ(slurp(dir.file("explicit.bin")), "explicit mode");
  EXPECT_EQ(fileMode(dir.file("explicit.bin")), 0640);
  EXPECT_EQ(slurp(dir.file("readonly.bin")), "read-only");
  EXPECT_EQ(fileMode(dir.file("readonly.bin")), 0444);
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"default.bin", "explicit.bin", "readonly.bin"}));
  EXPECT_THROW(g.commit(), Error);  // twice
}

TEST_P(StagedFileCrash, CommitReplacesAnExistingTargetAndItsMode) {
  TempDir dir;
  spit(dir.file("out.bin"), "old");
  ::chmod(dir.file("out.bin").c_str(), 0600);
  StagedFile f(dir.file("out.bin"), bytesWriter("new contents"), 0644);
  EXPECT_EQ(slurp(dir.file("out.bin")), "old");
  f.commit();
  EXPECT_EQ(slurp(dir.file("out.bin")), "new contents");
  EXPECT_EQ(fileMode(dir.file("out.bin")), 0644);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.bin"});
}

TEST_P(StagedFileCrash, DestroyedUncommittedLeavesNothing) {
  TempDir dir;
  const size_t fds = openFds();
  { StagedFile f(dir.file("new.bin"), bytesWriter("never committed")); }
  EXPECT_TRUE(dir.list().empty());
  spit(dir.file("old.bin"), "previous");
  { StagedFile f(dir.file("old.bin"), bytesWriter("never committed")); }
  EXPECT_EQ(dir.list(), std::vector<std::string>{"old.bin"});
  EXPECT_EQ(slurp(dir.file("old.bin")), "previous");
  // Moved (as std::vector does): only the last owner removes it, once.
  {
    std::vector<StagedFile> staged;
    for (int i = 0; i < 8; ++i) {
      staged.emplace_back(dir.file("v" + std::to_string(i)), bytesWriter(std::to_string(i)));
    }
    staged[3].commit();
  }
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"old.bin", "v3"}));
  EXPECT_EQ(slurp(dir.file("v3")), "3");
  EXPECT_EQ(openFds(), fds);  // committed or not, no descriptor is left open
}

TEST_P(StagedFileCrash, AFailingWriterLeavesNothingAndNamesTheTarget) {
  TempDir dir;
  try {
    StagedFile f(dir.file("out.bin"), [](const std::string& tmp) {
      spit(tmp, "half");
      throw std::runtime_error("disk on fire");
    });
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kOutput);
    const std::string expected = "cannot write '" + dir.file("out.bin") + "': disk on fire";
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(dir.list().empty());
}

TEST_P(StagedFileCrash, WritersThatOpenTheTempByPathWriteIntoIt) {
  TempDir dir;
  // std::ofstream with trunc (bytesWriter), fopen "wb" (the checkpoint writer), open with
  // O_CREAT | O_TRUNC, and reading it back by path (the checkpoint's SHA-256 is taken so).
  StagedFile a(dir.file("a"), [](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << "ofstream";
    ASSERT_TRUE(out.good());
  });
  StagedFile b(dir.file("b"), [](const std::string& tmp) {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    ASSERT_NE(f, nullptr) << std::strerror(errno);
    std::fputs("fopen", f);
    std::fclose(f);
  });
  StagedFile c(dir.file("c"), [](const std::string& tmp) {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    ASSERT_EQ(::write(fd, "open then truncate", 18), 18);
    ::close(fd);
    const int again = ::open(tmp.c_str(), O_WRONLY | O_TRUNC);  // a second truncating open
    ASSERT_GE(again, 0);
    ASSERT_EQ(::write(again, "open", 4), 4);
    ::close(again);
  });
  EXPECT_EQ(sha256FileHex(b.tmpPath()), sha256Hex("fopen", 5));
  for (StagedFile* f : {&a, &b, &c}) f->commit();
  EXPECT_EQ(slurp(dir.file("a")), "ofstream");
  EXPECT_EQ(slurp(dir.file("b")), "fopen");
  EXPECT_EQ(slurp(dir.file("c")), "open");
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_P(StagedFileCrash, LibTorchSavesIntoTheTempPath) {
  TempDir dir;
  torch::jit::Module m("Holder");
  m.register_buffer("running_mean", torch::arange(5, torch::kFloat32));
  StagedFile f(dir.file("model.pt"), [&](const std::string& tmp) { m.save(tmp); });
  f.commit();
  torch::jit::Module back = torch::jit::load(dir.file("model.pt"));
  EXPECT_TRUE(back.attr("running_mean").toTensor().equal(torch::arange(5, torch::kFloat32)));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"model.pt"});
}

TEST_P(StagedFileCrash, NoTempIsVisibleAtTheFaultPointsOfANewTarget) {
  TempDir dir;
  std::vector<Snapshot> seen;
  g_snapshots = &seen;
  g_dir = &dir;
  setFaultHook(&recordPoint);
  StagedFile f(dir.file("out.bin"), bytesWriter("0123456789"));
  f.commit();
  setFaultHook(nullptr);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].point, "write-mid");  // bytesWriter, half written
  EXPECT_EQ(seen[1].point, "write-mid");  // StagedFile, before fsync
  EXPECT_EQ(seen[2].point, "write-fsynced");
  for (const Snapshot& s : seen) {
    if (named()) {  // the fallback: a named temp, cleaned up by the next run if killed here
      ASSERT_EQ(s.names.size(), 1u) << s.point;
      EXPECT_TRUE(isTempOf(s.names[0], "out.bin")) << s.point << ": " << s.names[0];
    } else {
      EXPECT_TRUE(s.names.empty()) << s.point << ": " << s.names[0];
    }
  }
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.bin"});
}

TEST_P(StagedFileCrash, OnlyTheLinkedReplacementHasANameBeforeItsRename) {
  TempDir dir;
  spit(dir.file("out.bin"), "old");
  std::vector<Snapshot> seen;
  g_snapshots = &seen;
  g_dir = &dir;
  setFaultHook(&recordPoint);
  StagedFile f(dir.file("out.bin"), bytesWriter("new"));
  f.commit();
  setFaultHook(nullptr);
  std::vector<std::string> points;
  for (const Snapshot& s : seen) points.push_back(s.point);
  if (named()) {
    EXPECT_EQ(points, (std::vector<std::string>{"write-mid", "write-mid", "write-fsynced"}));
  } else {
    EXPECT_EQ(points, (std::vector<std::string>{"write-mid", "write-mid", "write-fsynced",
                                                "write-linked"}));
  }
  for (const Snapshot& s : seen) {
    const bool temp_expected = named() || s.point == "write-linked";
    ASSERT_EQ(s.names.size(), temp_expected ? 2u : 1u) << s.point;
    EXPECT_EQ(s.names.back(), "out.bin") << s.point;  // "." sorts first
    if (temp_expected) {
      EXPECT_TRUE(isTempOf(s.names[0], "out.bin")) << s.names[0];
    }
  }
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.bin"});
  EXPECT_EQ(slurp(dir.file("out.bin")), "new");
}

TEST_P(StagedFileCrash, StaleTempsOfTheTargetAreRemovedBeforeStaging) {
  TempDir dir;
  const std::vector<std::string> stale = {".out.pt.bnadapt-tmp-a1B2c3",
                                          ".out.pt.bnadapt-tmp-XXXXXX"};
  const std::vector<std::string> kept = {
      ".out.pt.bnadapt-tmp-abc",        // not 6 characters
      ".out.pt.bnadapt-tmp-abcdefg",    // 7
      ".out.pt.bnadapt-tmp-ab_de.",     // not mkstemp's characters
      ".other.pt.bnadapt-tmp-a1B2c3",   // another target's
      ".out.pt.tmp.a1B2c3",             // not this tool's pattern
      "out.pt.bnadapt-tmp-a1B2c3"};     // no leading dot
  for (const auto& n : stale) spit(dir.file(n), "left by a killed run");
  for (const auto& n : kept) spit(dir.file(n), "someone's");
  // A temp a live writer holds (locked) stays.
  const std::string live = dir.file(".out.pt.bnadapt-tmp-L1veL1");
  spit(live, "in use");
  const int live_fd = ::open(live.c_str(), O_RDONLY);
  ASSERT_EQ(::flock(live_fd, LOCK_EX), 0);
  // A symlink of that name is not a temp this tool made.
  ASSERT_EQ(::symlink("/nonexistent", dir.file(".out.pt.bnadapt-tmp-Symlnk").c_str()), 0);

  StagedFile f(dir.file("out.pt"), bytesWriter("fresh"));
  f.commit();
  std::vector<std::string> expected = kept;
  expected.push_back(".out.pt.bnadapt-tmp-L1veL1");
  expected.push_back(".out.pt.bnadapt-tmp-Symlnk");
  expected.push_back("out.pt");
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(dir.list(), expected);
  EXPECT_EQ(slurp(dir.file("out.pt")), "fresh");

  ::close(live_fd);  // its writer died: the next staging removes it
  EXPECT_EQ(removeStaleTemps(dir.file("out.pt")), 1u);
  EXPECT_EQ(removeStaleTemps(dir.file("out.pt")), 0u);
  EXPECT_EQ(removeStaleTemps(dir.file("absent-folder/out.pt")), 0u);
}

TEST_P(StagedFileCrash, ALiveStagedFileIsNeverTakenForStale) {
  TempDir dir;
  spit(dir.file("out.bin"), "old");
  StagedFile a(dir.file("out.bin"), bytesWriter("first"));
  // A second staging of the same target (another StagedFile or process) cleans up stale
  // temps only: `a` is locked and survives.
  StagedFile b(dir.file("out.bin"), bytesWriter("second"));
  EXPECT_EQ(removeStaleTemps(dir.file("out.bin")), 0u);
  a.commit();
  EXPECT_EQ(slurp(dir.file("out.bin")), "first");
  b.commit();
  EXPECT_EQ(slurp(dir.file("out.bin")), "second");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.bin"});
}

INSTANTIATE_TEST_SUITE_P(Paths, StagedFileCrash, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("NamedTemp") : std::string("Unnamed");
                         });

}  // namespace
}  // namespace bnadapt::io
