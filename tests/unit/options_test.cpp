// The option table (config/options.h) is the single source of the options: flags and keys
// are unique, every default survives a round trip through its own parser, --help lists every
// option, and the README's option table is the generated one.
#include "config/options.h"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "config/config_loader.h"

namespace bnadapt::config {
namespace {

const char* const kBegin = "<!-- options:begin (generated from src/config/options.cpp) -->\n";
const char* const kEnd = "<!-- options:end -->";

TEST(Options, FlagsAndKeysAreUnique) {
  std::set<std::string> flags, keys;
  for (const Option& o : options()) {
    EXPECT_TRUE(flags.insert(o.flag).second) << o.flag;
    if (!o.key.empty()) {
      EXPECT_TRUE(keys.insert(o.key).second) << o.key;
    }
    EXPECT_FALSE(o.help.empty()) << o.flag;
    EXPECT_EQ(o.metavar.empty(), o.type == OptionType::kBool) << o.flag;
    EXPECT_EQ(o.choices.empty(), o.type != OptionType::kChoice) << o.flag;
    EXPECT_EQ(optionByFlag(o.flag), &o);
  }
}

// Passing an option's documented default on the command line changes nothing: the help
// text and the Settings initialiser cannot drift apart.
TEST(Options, DefaultsRoundTripThroughTheirParser) {
  // Options that others need: --max-skip-fraction applies only with --skip-corrupt, and
  // --weights-from only with --checkpoint.
  const std::vector<std::string> required = {
      "--model",        "m.pt", "--data",       "synthetic", "--samples",           "8",
      "--skip-corrupt", "--checkpoint", "c.pt", "--checkpoint-output", "o.pt"};
  const Settings base = parseSettings(required);
  for (const Option& o : options()) {
    const std::string def = defaultText(o);
    if (def.empty()) continue;
    SCOPED_TRACE(o.flag + " " + def);
    std::vector<std::string> args = required;
    args.insert(args.end(), {"--" + o.flag, def});
    const Settings s = parseSettings(args);
    EXPECT_EQ(o.show(s), o.show(base));
  }
}

TEST(Options, UsageListsEveryOptionWithItsDefault) {
  std::string text = usage();
  // Wrapped lines joined, so that "default X" is found across a line break.
  for (std::size_t at; (at = text.find("\n                        ")) != std::string::npos;) {
    text.replace(at, 25, " ");
  }
  for (const Option& o : options()) {
    EXPECT_NE(text.find("  --" + o.flag + (o.metavar.empty() ? "" : " " + o.metavar)),
              std::string::npos)
        << o.flag;
    const std::string def = defaultText(o);
    if (!def.empty()) {
      EXPECT_NE(text.find("default " + def), std::string::npos) << o.flag;
    }
  }
}

// BNADAPT_UPDATE_README=1 writes the generated table into README.md instead of comparing.
TEST(Options, ReadmeTableIsTheGeneratedOne) {
  const std::string path = std::string(BNADAPT_TESTS_DIR) + "/../README.md";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::string readme((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t begin = readme.find(kBegin);
  const std::size_t end = readme.find(kEnd);
  ASSERT_NE(begin, std::string::npos) << "README.md lacks the line " << kBegin;
  ASSERT_NE(end, std::string::npos) << "README.md lacks the line " << kEnd;
  const std::size_t from = begin + std::string(kBegin).size();
  const std::string expected = optionsMarkdown();
  if (std::getenv("BNADAPT_UPDATE_README") != nullptr) {
    readme.replace(from, end - from, expected);
    std::ofstream(path) << readme;
    GTEST_SKIP() << "README.md updated";
  }
  EXPECT_EQ(readme.substr(from, end - from), expected)
      << "README.md's option table is stale; regenerate it with BNADAPT_UPDATE_README=1 "
         "build/tests/bnadapt_unit_tests --gtest_filter=Options.ReadmeTableIsTheGeneratedOne";
}

}  // namespace
}  // namespace bnadapt::config
