// The malformed-config corpus (tests/configs/malformed/EXPECTED.tsv) in-process: every file
// through parseSettings, as `bnadapt_dist --config FILE --model m --data synthetic` would,
// must fail with the config class (exit 2) and a message that begins with the file's path
// and matches the manifest's regex. run_malformed.py runs a sample of the same files through
// the real binary (one error line, nothing written) and, in the long tier, all of them.
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "config/config_loader.h"

namespace bnadapt::config {
namespace {

struct Case {
  std::string file;
  std::string regex;
};

std::vector<Case> manifest(const std::string& corpus) {
  std::ifstream in(corpus + "/EXPECTED.tsv");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    Case c;
    std::getline(fields, c.file, '\t');
    std::getline(fields, c.regex, '\t');
    cases.push_back(c);
  }
  return cases;
}

TEST(MalformedConfigs, EveryFileFailsWithItsMessage) {
  const std::string corpus = std::string(BNADAPT_TESTS_DIR) + "/configs/malformed";
  const std::vector<Case> cases = manifest(corpus);
  ASSERT_GT(cases.size(), 100u) << "cannot read " << corpus << "/EXPECTED.tsv";
  int checked = 0;
  for (const Case& c : cases) {
    if (c.file[0] == '@') continue;  // made at test time by run_malformed.py (huge, /dev/zero, ...)
    const std::string path = corpus + "/" + c.file;
    SCOPED_TRACE(c.file);
    try {
      parseSettings({"--config", path, "--model", "m", "--data", "synthetic"});
      ADD_FAILURE() << "parsed without an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage) << e.what();
      const std::string msg = e.what();
      ASSERT_EQ(msg.rfind(path + ": ", 0), 0u) << "does not begin with the path: " << msg;
      EXPECT_TRUE(std::regex_search(msg.substr(path.size() + 2), std::regex(c.regex)))
          << "/" << c.regex << "/ does not match: " << msg;
    }
    ++checked;
  }
  EXPECT_GT(checked, 150);
}

}  // namespace
}  // namespace bnadapt::config
