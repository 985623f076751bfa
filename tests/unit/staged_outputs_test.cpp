#include "io/staged_outputs.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

#include "io/sha256.h"

namespace bnadapt::io {
namespace {

class Folder {
 public:
  Folder() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/staged_outputs_XXXXXX";
    path_ = mkdtemp(templ.data()) ? templ : "";
  }
  ~Folder() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(StagedOutputs, NothingInPlaceBeforeCommitAllThenEverythingInOrder) {
  Folder dir;
  StagedOutputs outputs;
  outputs.add(dir.file("a.bin"), bytesWriter("first"));
  const std::string sha = outputs.addWithSidecar(dir.file("ckpt.pt"), bytesWriter("weights"));
  outputs.add(dir.file("report.json"), bytesWriter("{}"));
  EXPECT_EQ(sha, sha256Hex("weights", 7));
  EXPECT_EQ(outputs.paths(),
            (std::vector<std::string>{dir.file("a.bin"), dir.file("ckpt.pt"),
                                      dir.file("ckpt.pt.sha256"), dir.file("report.json")}));
  for (const auto& p : outputs.paths()) EXPECT_FALSE(std::filesystem::exists(p)) << p;
  outputs.commitAll();
  EXPECT_EQ(slurp(dir.file("a.bin")), "first");
  EXPECT_EQ(slurp(dir.file("ckpt.pt")), "weights");
  EXPECT_EQ(slurp(dir.file("ckpt.pt.sha256")), sha + "  ckpt.pt\n");  // sha256sum's format
  EXPECT_EQ(slurp(dir.file("report.json")), "{}");
}

TEST(StagedOutputs, ReplacesAFileAndItsOldSidecar) {
  Folder dir;
  spit(dir.file("ckpt.pt"), "old");
  spit(dir.file("ckpt.pt.sha256"), "stale  ckpt.pt\n");
  StagedOutputs outputs;
  const std::string sha = outputs.addWithSidecar(dir.file("ckpt.pt"), bytesWriter("new"));
  EXPECT_EQ(slurp(dir.file("ckpt.pt.sha256")), "stale  ckpt.pt\n");  // untouched until commit
  outputs.commitAll();
  EXPECT_EQ(slurp(dir.file("ckpt.pt")), "new");
  EXPECT_EQ(slurp(dir.file("ckpt.pt.sha256")), sha + "  ckpt.pt\n");
}

TEST(StagedOutputs, DroppedUncommittedLeavesNothing) {
  Folder dir;
  {
    StagedOutputs outputs;
    outputs.addWithSidecar(dir.file("ckpt.pt"), bytesWriter("new"));
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("ckpt.pt")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("ckpt.pt.sha256")));
}

}  // namespace
}  // namespace bnadapt::io
