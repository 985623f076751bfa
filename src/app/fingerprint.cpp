#include "app/fingerprint.h"

#include "common/error.h"

namespace bnadapt::app {
namespace {

std::string describeForCheck(const char* what, const data::Dataset& data) {
  return std::string(what) + " samples=" + std::to_string(data.size()) +
         " shape=" + data::shapeString(data.sampleShape()) +
         " dtype=" + c10::toString(data.dtype()) + " labels=" + (data.hasLabels() ? "yes" : "no") +
         " hash=" + std::to_string(data.contentHash());
}

std::string floats(const std::vector<float>& v) {
  std::string s;
  for (float x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s.empty() ? "default" : s;
}

}  // namespace

std::vector<std::string> fingerprint(const config::Settings& st, const data::Dataset& data,
                                     const data::BatchPlan& plan, const data::Dataset* eval,
                                     const data::BatchPlan& eval_plan,
                                     const model::AdaptableModel& model) {
  std::vector<std::string> lines = {
      std::string("weighting=") + stats::weightingName(st.weighting) +
          " seed=" + std::to_string(st.seed) + " shuffle=" + (st.shuffle ? "yes" : "no"),
      "samples requested=" + std::to_string(plan.requested) + " used=" +
          std::to_string(plan.used) + " batch_size=" + std::to_string(plan.batch_size),
      "preprocessing mean=" + floats(st.mean) + " std=" + floats(st.std) +
          " resize=" + std::to_string(st.resize_shorter),
      "skip_corrupt=" + std::string(st.skip_corrupt ? "yes" : "no") +
          " max_skip_fraction=" + std::to_string(st.max_skip_fraction),
      describeForCheck("data", data)};
  if (eval) {
    lines.push_back(describeForCheck("eval data", *eval) +
                    " evaluated=" + std::to_string(eval_plan.used));
  }
  for (auto& l : model.describeLayers()) lines.push_back(std::move(l));
  return lines;
}

std::string joinLines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

void checkSameAsRankZero(int rank, const std::vector<std::string>& lines,
                         const std::string& theirs) {
  if (theirs == joinLines(lines)) return;
  std::vector<std::string> zero;
  size_t start = 0;
  for (size_t nl; (nl = theirs.find('\n', start)) != std::string::npos; start = nl + 1) {
    zero.push_back(theirs.substr(start, nl - start));
  }
  size_t i = 0;
  while (i < lines.size() && i < zero.size() && lines[i] == zero[i]) ++i;
  fail(ExitCode::kCommunication, "rank ", rank, " differs from rank 0 before any data ",
       "moved: rank 0 has ", i < zero.size() ? "'" + zero[i] + "'" : "nothing more", ", rank ",
       rank, " has ", i < lines.size() ? "'" + lines[i] + "'" : "nothing more",
       " (same model, data and config on every rank?)");
}

}  // namespace bnadapt::app
