#include "app/output_paths.h"

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "io/file_names.h"
#include "io/files.h"

namespace bnadapt::app {

void checkOutputPaths(const config::Settings& st) {
  const std::vector<std::pair<const char*, std::string>> outputs = {
      {"--output", st.output_path},
      {"--stats-output", st.stats_output_path},
      {"--report", st.report_path},
      {"--checkpoint-output", st.checkpoint_output_path},
      {"--checkpoint-output's .sha256",
       st.checkpoint_output_path.empty() ? "" : io::sidecarPath(st.checkpoint_output_path)}};
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& [flag, path] = outputs[i];
    if (path.empty()) continue;
    for (const auto& [what, input] : {std::pair<const char*, std::string>{"--model", st.model_path},
                                      {"--data", st.data_path},
                                      {"--config", st.config_path},
                                      {"--checkpoint", st.checkpoint_path}}) {
      if (input.empty()) continue;
      // --in-place: the checkpoint output may replace its input (still via temp + rename).
      if (st.in_place && outputs[i].first == std::string("--checkpoint-output") &&
          what == std::string("--checkpoint")) {
        continue;
      }
      BNA_CHECK(path != input && !io::sameFile(path, input), ExitCode::kOutput, flag, " '", path,
                "' is the same file as the input ", what, " '", input,
                "'; inputs are never overwritten: choose another output path",
                what == std::string("--checkpoint") ? " (or pass --in-place)" : "");
    }
    for (size_t j = i + 1; j < outputs.size(); ++j) {
      BNA_CHECK(outputs[j].second.empty() || (path != outputs[j].second &&
                                              !io::sameFile(path, outputs[j].second)),
                ExitCode::kUsage, flag, " and ", outputs[j].first, " name the same file '", path,
                "'");
    }
    io::checkWritable(path);
    // In place, the checkpoint and its sidecar replace the input's by design.
    const bool replaces_input =
        st.in_place && std::string(flag).rfind("--checkpoint-output", 0) == 0;
    const bool exists = std::filesystem::exists(std::filesystem::symlink_status(path));
    BNA_CHECK(st.overwrite || replaces_input || !exists, ExitCode::kOutput, flag,
              " '", path, "' exists; pass --overwrite to replace it (the new file is written "
              "beside it and renamed over it only when every rank succeeded)");
  }
}

}  // namespace bnadapt::app
