#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace bnadapt::report {
namespace {

const char* const kUnreached = "never ran in the forward passes: statistics left unchanged";

nlohmann::json summarize(const std::vector<double>& v) {
  if (v.empty()) return nullptr;
  double sum = 0;
  for (double x : v) sum += x;
  return {{"avg", sum / static_cast<double>(v.size())},
          {"min", *std::min_element(v.begin(), v.end())},
          {"max", *std::max_element(v.begin(), v.end())}};
}

// max over channels of |new mean - old mean| / sqrt(new var + eps)
double maxShift(const model::BnLayer& layer, const stats::LayerStats& s) {
  double worst = 0;
  for (size_t c = 0; c < s.mean.size(); ++c) {
    worst = std::max(worst, std::fabs(s.mean[c] - layer.old_mean[c]) / std::sqrt(s.var[c] + layer.eps));
  }
  return worst;
}

}  // namespace

nlohmann::json buildReport(const RunSummary& run) {
  const config::Settings& st = *run.settings;
  nlohmann::json j;
  j["tool"] = "bnadapt_dist";
  j["version"] = BNADAPT_VERSION;
  j["model"] = st.model_path;
  j["data"] = run.data_description;
  j["world_size"] = run.world_size;
  j["threads_per_rank"] = run.threads_per_rank;
  j["data_threads_per_rank"] = run.data_threads_per_rank;
  j["data_order"] = st.shuffle ? "shuffled (seed " + std::to_string(st.seed) + ")" : "as stored";
  j["estimator"] = config::weightingName(st.weighting);
  j["device"] = run.device;
  j["backend"] = run.backend;
  j["precision"] = run.precision;
  j["compression_algorithms"] = st.compression_algorithms;
  j["samples"] = {{"requested", run.plan.requested},
                  {"rounded", run.plan.rounded},
                  {"used", run.plan.used},
                  {"truncated", run.plan.truncated}};
  j["batch_size"] = run.plan.batch_size;
  j["global_batches"] = run.plan.num_batches;
  j["num_batches_tracked_added"] = run.forwarded_batches;
  nlohmann::json ranks = nlohmann::json::array();
  for (size_t r = 0; r < run.ranks.size(); ++r) {
    ranks.push_back({{"rank", r},
                     {"batches", run.ranks[r].batches},
                     {"samples", run.ranks[r].samples},
                     {"skipped_samples", run.ranks[r].skipped},
                     {"forward_seconds", run.ranks[r].forward_seconds},
                     {"loader_wait_seconds", run.ranks[r].loader_wait_seconds},
                     {"peak_rss_mib", run.ranks[r].peak_rss_mib}});
  }
  j["ranks"] = ranks;
  j["skipped_samples"] = {{"count", run.skipped_samples},
                          {"fraction", run.plan.used > 0 ? static_cast<double>(run.skipped_samples) /
                                                               static_cast<double>(run.plan.used)
                                                         : 0.0},
                          {"skip_corrupt", st.skip_corrupt},
                          {"max_fraction", st.max_skip_fraction}};
  if (run.evaluated) {
    j["eval"] = {{"data", run.eval.data_description},
                 {"samples", run.eval.samples},
                 {"top1_before", run.eval.top1(run.eval.correct_before)},
                 {"top1_after", run.eval.top1(run.eval.correct_after)},
                 {"correct_before", run.eval.correct_before},
                 {"correct_after", run.eval.correct_after}};
  }
  nlohmann::json layers = nlohmann::json::array();
  nlohmann::json unused = nlohmann::json::array();
  for (size_t i = 0; i < run.layers->size(); ++i) {
    const model::BnLayer& l = (*run.layers)[i];
    const stats::LayerStats& s = run.results[i];
    nlohmann::json lj = {{"name", l.name},
                         {"kind", l.kind},
                         {"channels", l.channels},
                         {"eps", l.eps},
                         {"affine", l.affine},
                         {"values_per_channel", s.count},
                         {"batch_observations", s.batches},
                         {"old", {{"mean", summarize(l.old_mean)}, {"var", summarize(l.old_var)}}}};
    if (!l.aliases.empty()) lj["aliases"] = l.aliases;
    if (s.mean.empty()) {
      lj["adapted"] = false;
      lj["reason"] = kUnreached;
      unused.push_back(l.name);
    } else {
      lj["adapted"] = true;
      if (l.old_num_batches_tracked >= 0) {
        lj["num_batches_tracked"] = {{"old", l.old_num_batches_tracked},
                                     {"new", l.old_num_batches_tracked + run.forwarded_batches}};
      }
      lj["new"] = {{"mean", summarize(s.mean)}, {"var", summarize(s.var)}};
      lj["max_abs_mean_shift_over_sigma"] = maxShift(l, s);
    }
    layers.push_back(lj);
  }
  j["layers"] = layers;
  j["unused_layers"] = unused;
  nlohmann::json skipped = nlohmann::json::array();
  for (const auto& s : *run.skipped) {
    skipped.push_back(
        {{"name", s.name}, {"kind", s.kind}, {"category", s.category}, {"reason", s.reason}});
  }
  j["skipped_layers"] = skipped;
  j["layer_counts"] = {{"adapted", run.layers->size() - unused.size()},
                       {"left_alone", run.skipped->size()},
                       {"left_alone_by_reason", model::countByCategory(*run.skipped)},
                       {"unreached", unused.size()}};
  nlohmann::json& weights = j["weights"];
  weights["from"] = run.weights.from;
  if (run.weights.from == "checkpoint") {
    weights["file"] = run.weights.file;
    weights["dict"] = run.weights.dict;
    weights["prefix"] = run.weights.prefix;
    weights["tensors"] = run.weights.tensors;
    weights["sha256"] = run.weights.sha256;
    weights["kept_from_model"] = run.weights.kept_from_model;
  }
  if (!run.checkpoint_description.empty()) {
    j["checkpoint"] = {{"input", st.checkpoint_path},
                       {"output", st.checkpoint_output_path},
                       {"in_place", st.in_place},
                       {"description", run.checkpoint_description},
                       {"sha256", run.checkpoint_sha256}};
  }
  const double startup = run.process_start_seconds < 0
                            ? -1
                            : run.process_start_seconds + run.setup_seconds;
  j["timings"] = {{"process_start_to_job_seconds", run.process_start_seconds},
                  {"setup_seconds", run.setup_seconds},
                  {"startup_seconds", startup},
                  {"consistency_check_seconds", run.consistency_seconds},
                  {"forward_seconds", run.forward_seconds},
                  {"allreduce_seconds", run.allreduce_seconds},
                  {"total_seconds", run.total_seconds}};
  return j;
}

std::vector<std::string> summaryLines(const RunSummary& run) {
  std::vector<std::string> out;
  size_t adapted = 0;
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < run.layers->size(); ++i) {
    if (run.results[i].mean.empty()) continue;
    ++adapted;
    const double shift = maxShift((*run.layers)[i], run.results[i]);
    if (shift >= worst) {
      worst = shift;
      worst_name = (*run.layers)[i].name;
    }
  }
  char line[512];
  std::snprintf(line, sizeof line,
                "adapted %zu of %zu BN layers from %lld samples in %lld batches on %d rank(s), "
                "estimator '%s'; left alone %zu",
                adapted, run.layers->size(), static_cast<long long>(run.plan.used),
                static_cast<long long>(run.plan.num_batches), run.world_size,
                config::weightingName(run.settings->weighting), run.skipped->size());
  const std::string by_reason = model::countByCategory(*run.skipped);
  out.emplace_back(std::string(line) + (by_reason.empty() ? "" : " (" + by_reason + ")") +
                   "; unreached " + std::to_string(run.layers->size() - adapted));
  if (adapted > 0) {
    std::snprintf(line, sizeof line, "largest mean shift: %.3g sigma in layer '%s'", worst,
                  worst_name.c_str());
    out.emplace_back(line);
  }
  for (const auto& s : *run.skipped) {
    out.push_back("left alone: layer '" + s.name + "' (" + s.kind + "): " + s.reason);
  }
  for (size_t i = 0; i < run.layers->size(); ++i) {
    if (!run.results[i].mean.empty()) continue;
    out.push_back("unreached: layer '" + (*run.layers)[i].name + "' (" + (*run.layers)[i].kind +
                  "): " + kUnreached);
  }
  if (run.skipped_samples > 0) {
    std::snprintf(line, sizeof line, "skipped %lld unreadable sample(s) of %lld (%.3g%%)",
                  static_cast<long long>(run.skipped_samples),
                  static_cast<long long>(run.plan.used),
                  100.0 * static_cast<double>(run.skipped_samples) /
                      static_cast<double>(std::max<int64_t>(1, run.plan.used)));
    out.emplace_back(line);
  }
  if (run.evaluated) {
    std::snprintf(line, sizeof line,
                  "top-1 on %lld eval samples: %.2f%% before, %.2f%% after adaptation (%+.2f)",
                  static_cast<long long>(run.eval.samples),
                  100.0 * run.eval.top1(run.eval.correct_before),
                  100.0 * run.eval.top1(run.eval.correct_after),
                  100.0 * (run.eval.top1(run.eval.correct_after) -
                           run.eval.top1(run.eval.correct_before)));
    out.emplace_back(line);
  }
  std::snprintf(line, sizeof line,
                "time: start-up %.2fs (process start -> job %.2fs, job set-up %.2fs), forward "
                "%.2fs, all-reduce %.3fs, total %.2fs",
                run.process_start_seconds < 0 ? run.setup_seconds
                                              : run.process_start_seconds + run.setup_seconds,
                run.process_start_seconds, run.setup_seconds, run.forward_seconds,
                run.allreduce_seconds, run.total_seconds);
  out.emplace_back(line);
  return out;
}

}  // namespace bnadapt::report
