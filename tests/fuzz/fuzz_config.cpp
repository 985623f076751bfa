// libFuzzer target: bytes as the text of a --config file, through the real parsing path
// (parseSettingsFromText: the same code as parseSettings after reading the file).
//
// Expected outcomes: Settings, or bnadapt::Error(kUsage) with a one-line, printable message.
// Anything else is a finding: a crash or sanitizer report, another exception type (libFuzzer
// reports it as an uncaught exception), another exit code, or a message a terminal or a log
// parser would split (a control character, a byte that is not UTF-8).
//
// The first byte picks the command line around the text: with or without --model/--data
// (without them the settings must come from the file), and --samples given or not.
// FUZZ_VERBOSE=1 prints each input's error.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "config/config_loader.h"

namespace {

// Well-formed UTF-8 without control characters (what the message rules promise).
bool printableLine(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7F) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    const std::size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (n == 0 || c > 0xF4 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "FINDING: %s: %s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::vector<std::string> args = {"--config", "/fuzz/cfg.json"};
  if (mode & 1) args.insert(args.end(), {"--model", "m.pt", "--data", "synthetic"});
  if (mode & 2) args.insert(args.end(), {"--samples", "64"});
  try {
    const bnadapt::config::Settings s = bnadapt::config::parseSettingsFromText(text, args);
    if (s.samples <= 0 || s.batch_size <= 0 || s.model_path.empty() || s.data_path.empty()) {
      finding("accepted settings out of range", std::to_string(s.samples));
    }
  } catch (const bnadapt::Error& e) {
    if (std::getenv("FUZZ_VERBOSE") != nullptr) std::fprintf(stderr, "error: %s\n", e.what());
    if (e.code() != bnadapt::ExitCode::kUsage) finding("wrong exit code class", e.what());
    if (!printableLine(e.what())) finding("message is not one printable line", e.what());
  }
  return 0;
}
