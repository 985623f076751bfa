// Builds the run's Settings from the command line and an optional NNCF-style JSON config file.
//
// Precedence, highest first: command line flag, the config file's "bnadapt_dist" section, the
// NNCF keys of the config file (top-level "batch_size";
// "compression[*].initializer.batchnorm_adaptation.num_bn_adaptation_samples"), built-in
// defaults. The config file is validated in full even where flags override it. Every problem
// is reported as bnadapt::Error(ExitCode::kUsage, one line); messages about the file begin with
// the config file path and name the JSON path of the offending key.
#pragma once

#include <cstddef>
#include <exception>
#include <string>
#include <vector>

#include "config/settings.h"

namespace bnadapt::config {

// Thrown by parseSettings() when the arguments contain --help or -h (anywhere, checked before
// anything else). The caller prints usage() to stdout and exits with ExitCode::kOk.
class HelpRequested : public std::exception {
 public:
  const char* what() const noexcept override { return "help requested"; }
};

// Parses argv[1..] (and the --config file, if given) into validated Settings.
// Throws HelpRequested for --help/-h, bnadapt::Error(ExitCode::kUsage, ...) for any problem.
Settings parseSettings(const std::vector<std::string>& args);

// For tests and fuzzing (tests/fuzz/fuzz_config.cpp): parseSettings(args) with `config_text`
// as the config file's contents, touching no file. `args` may name the file with
// --config NAME (for messages and relative paths; never opened); without it the text is
// named "<config>".
Settings parseSettingsFromText(const std::string& config_text,
                               const std::vector<std::string>& args);

// The --help text (several lines, ends with a newline).
std::string usage();

// Optimal-string-alignment edit distance (insertions, deletions, substitutions and adjacent
// transpositions each cost 1).
std::size_t editDistance(const std::string& a, const std::string& b);

// The candidate nearest to `key` by editDistance(), or "" when even the nearest one is further
// than max(2, key.size() / 3). Ties go to the earlier candidate.
std::string nearestKey(const std::string& key, const std::vector<std::string>& candidates);

}  // namespace bnadapt::config
