// The option table: every option of the tool declared once — command line flag, key in the
// config's "bnadapt_dist" section, type and range, help text, and the Settings member it
// sets (whose initialiser is its default). Flag parsing, the config section, --help and the
// README's option table (checked by a unit test) all come from it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "config/settings.h"

namespace bnadapt::config {

inline constexpr const char* kSection = "bnadapt_dist";

enum class OptionType {
  kPath,       // non-empty string; relative paths in the file resolve against its folder
  kText,       // any string
  kUnsigned,   // integer in [min, max]
  kBool,       // a switch without value; true/false in the file
  kChoice,     // one of `choices` (an enum of Settings)
  kFraction,   // a number in [0, 1]
  kFloatList,  // numbers: "a,b,c" on the command line, a number or an array in the file
};

// A parsed option value; which alternative depends on the option's type (kChoice: the name).
using Value = std::variant<bool, uint64_t, double, std::string, std::vector<float>>;

struct Option {
  std::string flag;      // command line name without "--"
  std::string key;       // key in the "bnadapt_dist" section; "" for --config (a flag only)
  OptionType type;
  std::string metavar;   // "N", "PATH"; "" for switches
  std::string help;      // what it does (usage() wraps it)
  std::string also;      // other sources, lowest precedence: "else top-level batch_size"
  uint64_t min = 0, max = 0;  // kUnsigned
  std::string expected;       // kUnsigned, kText: what a valid value is
  std::vector<std::string> choices;  // kChoice
  std::function<void(Settings&, const Value&)> apply;  // sets the Settings member
  std::function<std::string(const Settings&)> show;   // the member as text ("" when unset)
};

// In usage() order.
const std::vector<Option>& options();
// nullptr when there is no such option.
const Option* optionByFlag(std::string_view flag);  // without "--"
const Option* optionByKey(std::string_view key);

// The default of `o` as --help shows it ("" when none is worth showing).
std::string defaultText(const Option& o);

// "'samples' or 'batches'", "'a', 'b' or 'c'" with the given quote.
std::string choiceList(const Option& o, const std::string& quote);

// The --help text (several lines, ends with a newline).
std::string usage();

// The README's option table (markdown, ends with a newline).
std::string optionsMarkdown();

// Optimal-string-alignment edit distance (insertions, deletions, substitutions and adjacent
// transpositions each cost 1).
std::size_t editDistance(const std::string& a, const std::string& b);

// The candidate nearest to `key` by editDistance(), or "" when even the nearest one is further
// than max(2, key.size() / 3). Ties go to the earlier candidate.
std::string nearestKey(const std::string& key, const std::vector<std::string>& candidates);

}  // namespace bnadapt::config
