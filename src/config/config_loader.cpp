#include "config/config_loader.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "common/error.h"
#include "config/config_file.h"
#include "config/options.h"
#include "io/json_reader.h"

namespace bnadapt::config {
namespace {

const char* const kNncfSamples =
    "compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples";

using Values = std::map<std::string, Value>;  // option key ("config" for --config) -> value

// ---------------------------------------------------------------------------------------------
// Command line.

// Strict decimal parse: digits only, no sign, no spaces; nullopt on overflow.
std::optional<uint64_t> parseDecimal(const std::string& s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t value = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

// Strict number parse (the whole string, finite); nullopt otherwise.
std::optional<double> parseNumber(const std::string& s) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  return v;
}

Value flagValue(const Option& o, const std::string& flag, const std::string& value) {
  const auto bad = [&](const std::string& expected) {
    fail(ExitCode::kUsage, "option '", flag, "': expected ", expected, ", found '",
         io::shorten(value), "'");
  };
  switch (o.type) {
    case OptionType::kPath:
    case OptionType::kText:
      return value;
    case OptionType::kBool:
      return true;
    case OptionType::kUnsigned: {
      const std::optional<uint64_t> v = parseDecimal(value);
      if (!v || *v < o.min || *v > o.max) bad(o.expected);
      return *v;
    }
    case OptionType::kChoice:
      if (std::find(o.choices.begin(), o.choices.end(), value) == o.choices.end()) {
        bad(choiceList(o, "'"));
      }
      return value;
    case OptionType::kFraction: {
      const std::optional<double> v = parseNumber(value);
      if (!v || *v < 0.0 || *v > 1.0) bad("a number from 0 to 1");
      return *v;
    }
    case OptionType::kFloatList: {
      std::vector<float> list;
      std::size_t start = 0;
      for (;;) {
        const std::size_t comma = value.find(',', start);
        const std::optional<double> v = parseNumber(value.substr(start, comma - start));
        if (!v || std::abs(*v) > 1e30) bad("numbers separated by commas, e.g. 0.485,0.456,0.406");
        list.push_back(static_cast<float>(*v));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      return list;
    }
  }
  return false;
}

[[noreturn]] void unknownOption(const std::string& flag) {
  std::vector<std::string> names;
  for (const Option& o : options()) names.push_back(o.flag);
  names.emplace_back("help");
  std::string bare = flag;
  bare.erase(0, bare.find_first_not_of('-'));
  const std::string near = nearestKey(bare, names);
  if (!near.empty()) {
    fail(ExitCode::kUsage, "unknown option '", io::shorten(flag), "'; did you mean '--", near, "'?");
  }
  fail(ExitCode::kUsage, "unknown option '", io::shorten(flag), "'; valid options: --", [&names] {
    std::string all;
    for (std::size_t i = 0; i < names.size(); ++i) all += (i ? ", --" : "") + names[i];
    return all;
  }());
}

// Flag values by option key ("config" for --config).
Values parseFlags(const std::vector<std::string>& args) {
  Values out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg[0] != '-' || arg == "--") {
      fail(ExitCode::kUsage, "unexpected argument '", io::shorten(arg),
           "': options are --name VALUE or --name=VALUE (see --help)");
    }
    const std::size_t eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);
    const Option* spec = flag.starts_with("--") ? optionByFlag(flag.substr(2)) : nullptr;
    if (spec == nullptr) unknownOption(flag);
    const std::string& key = spec->key.empty() ? spec->flag : spec->key;
    // A switch given twice means the same; a value given twice is ambiguous.
    BNA_CHECK(out.count(key) == 0 || spec->type == OptionType::kBool, ExitCode::kUsage, "option '",
              flag, "' given more than once");
    if (spec->type == OptionType::kBool) {
      BNA_CHECK(eq == std::string::npos, ExitCode::kUsage, "option '", flag, "' takes no value");
      out[key] = true;
      continue;
    }
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      BNA_CHECK(i + 1 < args.size(), ExitCode::kUsage, "option '", flag, "' needs a value");
      const std::string& next = args[i + 1];
      BNA_CHECK(next.compare(0, 2, "--") != 0 || next.size() == 2, ExitCode::kUsage, "option '",
                flag, "' needs a value, found option '", io::shorten(next), "'");
      value = next;
      ++i;
    }
    BNA_CHECK(!value.empty(), ExitCode::kUsage, "option '", flag, "' needs a non-empty value");
    out[key] = flagValue(*spec, flag, value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Merging: built-in defaults (Settings' initialisers), then the NNCF keys, then the
// "bnadapt_dist" section, then the command line.

bool given(const Values& flags, const Values& file, const std::string& key) {
  return flags.count(key) > 0 || file.count(key) > 0;
}

std::string inConfig(const std::string& config) {
  return config.empty() ? std::string("in a --config file") : "in " + config;
}

// The NNCF sample count, when neither a flag nor the section sets one.
int64_t nncfSamples(const FileValues& file, const std::string& config) {
  const auto& nncf = file.nncf_samples;
  if (nncf.empty()) {
    fail(ExitCode::kUsage, "no sample count given: pass --samples N or set ", kSection,
         ".samples or ", kNncfSamples, " ", inConfig(config));
  }
  for (const auto& [path, value] : nncf) {
    if (value != nncf.front().second) {
      fail(ExitCode::kUsage, config, ": ", nncf.front().first, " = ", nncf.front().second, " and ",
           path, " = ", value, " disagree; pass --samples N or set ", kSection,
           ".samples to choose");
    }
  }
  return nncf.front().second;
}

// Options that need each other. A message starts with the option that is set: "--flag" when
// the command line set it, else the config file and the key's JSON path.
void checkCombinations(const Settings& s, const Values& flags, const Values& sec) {
  const auto named = [&](const std::string& key) {
    return flags.count(key) ? "--" + optionByKey(key)->flag
                            : s.config_path + ": " + kSection + "." + key;
  };
  const auto missing = [&](const std::string& key, const std::string& metavar) {
    return "--" + optionByKey(key)->flag + (metavar.empty() ? "" : " " + metavar) +
           (s.config_path.empty() ? "" : std::string(" or ") + kSection + "." + key);
  };
  BNA_CHECK(s.checkpoint_path.empty() == s.checkpoint_output_path.empty(), ExitCode::kUsage,
            s.checkpoint_path.empty()
                ? named("checkpoint_output") + " needs " + missing("checkpoint", "IN") +
                      " (the checkpoint to patch)"
                : named("checkpoint") + " needs " + missing("checkpoint_output", "OUT") +
                      " (where the patched copy goes)");
  BNA_CHECK(!s.in_place || !s.checkpoint_path.empty(), ExitCode::kUsage, named("in_place"),
            " applies to ", missing("checkpoint", ""), ", which is not given");
  BNA_CHECK(!given(flags, sec, "weights_from") || !s.checkpoint_path.empty(), ExitCode::kUsage,
            named("weights_from"), " applies to ", missing("checkpoint", ""),
            ", which is not given");
  BNA_CHECK(s.eval || (s.eval_data_path.empty() && s.eval_samples == 0), ExitCode::kUsage,
            named(s.eval_data_path.empty() ? "eval_samples" : "eval_data"), " applies to ",
            missing("eval", ""), ", which is not given");
  BNA_CHECK(!s.eval || !s.eval_data_path.empty(), ExitCode::kUsage, named("eval"), " needs ",
            missing("eval_data", "PATH"),
            ": labelled data (class folders, IDX labels or a tensor file with \"labels\") to "
            "measure top-1 on");
  BNA_CHECK(s.skip_corrupt || !given(flags, sec, "max_skip_fraction"), ExitCode::kUsage,
            named("max_skip_fraction"), " applies to ", missing("skip_corrupt", ""),
            ", which is not given");
}

// parseSettings() once the flags are parsed; `config_text` is the text of the --config file.
Settings settingsFrom(const Values& flags, const std::optional<std::string>& config_text) {
  Settings s;
  if (const auto it = flags.find("config"); it != flags.end()) {
    s.config_path = std::get<std::string>(it->second);
  }
  FileValues file;
  if (config_text) file = readConfigFile(*config_text, s.config_path);
  const Values& sec = file.section;
  const std::string where = inConfig(s.config_path);
  BNA_CHECK(given(flags, sec, "model"), ExitCode::kUsage,
            "no model given: pass --model PATH or set ", kSection, ".model ", where);
  BNA_CHECK(given(flags, sec, "data"), ExitCode::kUsage,
            "no data given: pass --data PATH (or --data synthetic) or set ", kSection, ".data ",
            where);
  if (file.batch_size) s.batch_size = *file.batch_size;
  if (!given(flags, sec, "samples")) s.samples = nncfSamples(file, s.config_path);
  for (const Values* values : {&sec, &flags}) {  // the command line last: it wins
    for (const auto& [key, value] : *values) {
      if (const Option* o = optionByKey(key)) o->apply(s, value);
    }
  }
  s.sample_shape = file.sample_shape;
  checkCombinations(s, flags, sec);
  s.compression_algorithms = std::move(file.algorithms);
  s.ignored_keys = std::move(file.ignored_keys);
  return s;
}

void throwIfHelp(const std::vector<std::string>& args) {
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") throw HelpRequested();
  }
}

}  // namespace

Settings parseSettings(const std::vector<std::string>& args) {
  throwIfHelp(args);
  const Values flags = parseFlags(args);
  const auto config = flags.find("config");
  return settingsFrom(flags, config == flags.end() ? std::nullopt
                                                   : std::optional<std::string>(readConfigText(
                                                         std::get<std::string>(config->second))));
}

int64_t startupTimeout(const std::vector<std::string>& args) {
  const Option& timeout = *optionByFlag("timeout");
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string value;
    if (args[i] == "--timeout" && i + 1 < args.size()) {
      value = args[i + 1];
    } else if (args[i].starts_with("--timeout=")) {
      value = args[i].substr(10);
    } else {
      continue;
    }
    const std::optional<uint64_t> seconds = parseDecimal(value);
    if (seconds && *seconds >= timeout.min && *seconds <= timeout.max) {
      return static_cast<int64_t>(*seconds);
    }
  }
  return Settings{}.timeout_seconds;
}

Settings parseSettingsFromText(const std::string& config_text,
                               const std::vector<std::string>& args) {
  throwIfHelp(args);
  Values flags = parseFlags(args);
  if (flags.count("config") == 0) flags["config"] = std::string("<config>");
  return settingsFrom(flags, config_text);
}

}  // namespace bnadapt::config
