// Builds the run's Settings from the command line and an optional NNCF-style JSON config file.
//
// Precedence, highest first: command line flag, the config file's "bnadapt_dist" section, the
// NNCF keys of the config file (top-level "batch_size";
// "compression[*].initializer.batchnorm_adaptation.num_bn_adaptation_samples"), built-in
// defaults (Settings' initialisers). Every option is declared once, in config/options.h. The
// config file is validated in full even where flags override it. Every problem is reported as
// bnadapt::Error(ExitCode::kUsage, one line); messages about the file begin with the config
// file path and name the JSON path of the offending key.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "config/settings.h"

namespace bnadapt::config {

// Thrown by parseSettings() when the arguments contain --help or -h (anywhere, checked before
// anything else). The caller prints usage() (config/options.h) to stdout and exits with
// ExitCode::kOk.
class HelpRequested : public std::exception {
 public:
  const char* what() const noexcept override { return "help requested"; }
};

// Parses argv[1..] (and the --config file, if given) into validated Settings.
// Throws HelpRequested for --help/-h, bnadapt::Error(ExitCode::kUsage, ...) for any problem.
Settings parseSettings(const std::vector<std::string>& args);

// The --timeout the command line gives when it is valid, else the default: what the watchdog
// uses from before MPI starts until the settings are read (the config file may then set
// another). Never throws.
int64_t startupTimeout(const std::vector<std::string>& args);

// For tests and fuzzing (tests/fuzz/fuzz_config.cpp): parseSettings(args) with `config_text`
// as the config file's contents, touching no file. `args` may name the file with
// --config NAME (for messages and relative paths; never opened); without it the text is
// named "<config>".
Settings parseSettingsFromText(const std::string& config_text,
                               const std::vector<std::string>& args);

}  // namespace bnadapt::config
