#include "config/options.h"

#include <algorithm>
#include <array>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

namespace bnadapt::config {
namespace {

constexpr uint64_t kMaxSamples = 1000000000000ULL;  // 1e12
constexpr uint64_t kMaxBatchSize = 1000000;
constexpr uint64_t kMaxThreads = 65536;
constexpr uint64_t kMaxTimeout = 10000000;
constexpr uint64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr uint64_t kMaxSeed = std::numeric_limits<uint64_t>::max();

const char* const kPositiveSamples = "a positive integer at most 1000000000000";

// What every option has: its flag, its config key (the flag with '_' for '-'), type, metavar
// and help.
Option declare(const char* flag, OptionType type, const char* metavar, const char* help) {
  Option o;
  o.flag = flag;
  o.key = flag;
  std::replace(o.key.begin(), o.key.end(), '-', '_');
  o.type = type;
  o.metavar = metavar;
  o.help = help;
  return o;
}

// An option that sets `member` of Settings from a value of its type.
template <typename T>
Option make(const char* flag, OptionType type, const char* metavar, T Settings::*member,
            const char* help) {
  Option o = declare(flag, type, metavar, help);
  o.apply = [member](Settings& s, const Value& v) {
    if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, double> ||
                  std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<float>>) {
      s.*member = std::get<T>(v);
    } else {
      s.*member = static_cast<T>(std::get<uint64_t>(v));
    }
  };
  o.show = [member](const Settings& s) -> std::string {
    const T& v = s.*member;
    if constexpr (std::is_same_v<T, bool>) {
      return v ? "true" : "";
    } else if constexpr (std::is_same_v<T, std::string>) {
      return v;
    } else if constexpr (std::is_same_v<T, std::vector<float>>) {
      std::ostringstream os;
      for (std::size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
      return os.str();
    } else {
      std::ostringstream os;
      os << v;
      return os.str();
    }
  };
  return o;
}

template <typename T>
Option number(const char* flag, const char* metavar, T Settings::*member, uint64_t min,
              uint64_t max, const char* expected, const char* help) {
  Option o = make(flag, OptionType::kUnsigned, metavar, member, help);
  o.min = min;
  o.max = max;
  o.expected = expected;
  return o;
}

// An option that sets an enum member; `values` in the order --help lists them, `name` their
// spelling.
template <typename E, std::size_t N>
Option choice(const char* flag, const char* metavar, E Settings::*member,
              std::array<E, N> values, const char* (*name)(E), const char* help) {
  Option o = declare(flag, OptionType::kChoice, metavar, help);
  for (E v : values) o.choices.emplace_back(name(v));
  o.apply = [member, values, name](Settings& s, const Value& v) {
    for (E e : values) {
      if (std::get<std::string>(v) == name(e)) s.*member = e;
    }
  };
  o.show = [member, name](const Settings& s) -> std::string { return name(s.*member); };
  return o;
}

// The choice options' spelling functions, as plain function pointers.
const char* formatName(data::DataFormat f) { return data::dataFormatName(f); }
const char* weightName(stats::Weighting w) { return stats::weightingName(w); }
const char* precisionText(Precision p) { return precisionName(p); }
const char* weightsText(WeightsFrom w) { return weightsFromName(w); }

std::vector<Option> buildTable() {
  using data::DataFormat;
  using comm::BackendRequest;
  using comm::DeviceRequest;
  std::vector<Option> t;
  Option config = make("config", OptionType::kPath, "FILE", &Settings::config_path,
                       "NNCF-style JSON config (comments allowed); its \"bnadapt_dist\" section "
                       "takes every option below as a key, with '_' for '-'");
  config.key.clear();
  t.push_back(config);
  t.push_back(make("model", OptionType::kPath, "PATH", &Settings::model_path,
                   "TorchScript model (required)"));
  t.push_back(make("data", OptionType::kPath, "PATH", &Settings::data_path,
                   "calibration data (required): a .pt file or a folder of .pt shards, a folder "
                   "of class folders of images, a *-idx3-ubyte[.gz] file, or \"synthetic\""));
  t.push_back(choice("data-format", "F", &Settings::data_format,
                     std::array{DataFormat::kAuto, DataFormat::kTensor, DataFormat::kImageFolder,
                                DataFormat::kIdx, DataFormat::kSynthetic},
                     &formatName, "how to read --data; auto: from the path"));
  Option samples = number("samples", "N", &Settings::samples, 1, kMaxSamples, kPositiveSamples,
                          "number of calibration samples (required), rounded to the nearest "
                          "multiple of the batch size");
  samples.also =
      "else compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples";
  t.push_back(samples);
  Option batch = number("batch-size", "N", &Settings::batch_size, 1, kMaxBatchSize,
                        "a positive integer at most 1000000", "batch size");
  batch.also = "else the config's top-level batch_size";
  t.push_back(batch);
  t.push_back(choice("weighting", "MODE", &Settings::weighting,
                     std::array{Weighting::kSamples, Weighting::kBatches}, &weightName,
                     "weight the batch statistics by samples or by batches"));
  t.push_back(make("shuffle", OptionType::kBool, "", &Settings::shuffle,
                   "take the samples in a seeded random order (the same on every rank)"));
  t.push_back(number("seed", "N", &Settings::seed, 0, kMaxSeed,
                     "a non-negative integer below 2^64",
                     "random seed for --shuffle and synthetic data"));
  t.push_back(make("mean", OptionType::kFloatList, "A[,B,C]", &Settings::mean,
                   "images and IDX: normalisation mean after scaling pixels to [0, 1]; "
                   "unset: ImageNet's (0.485,0.456,0.406) for images, 0 for IDX"));
  t.push_back(make("std", OptionType::kFloatList, "A[,B,C]", &Settings::std,
                   "images and IDX: normalisation std; unset: ImageNet's (0.229,0.224,0.225) "
                   "for images, 1 for IDX"));
  t.push_back(number("resize", "N", &Settings::resize_shorter, 1, kMaxDim,
                     "a positive integer (pixels)",
                     "images: shorter side before the centre crop (the crop is "
                     "input_info.sample_size's H x W); unset: crop / 0.875 (256 for 224)"));
  t.push_back(number("data-threads", "N", &Settings::data_threads, 0, kMaxThreads,
                     "a non-negative integer at most 65536",
                     "decoding threads per rank; 0: half the intra-op threads, at least 1"));
  t.push_back(number("prefetch-batches", "N", &Settings::prefetch_batches, 1, 1024,
                     "a positive integer at most 1024",
                     "batches decoded ahead of the forward passes"));
  t.push_back(make("skip-corrupt", OptionType::kBool, "", &Settings::skip_corrupt,
                   "leave unreadable samples out (counted in the report) instead of failing"));
  t.push_back(make("max-skip-fraction", OptionType::kFraction, "F", &Settings::max_skip_fraction,
                   "with --skip-corrupt, fail when more than this fraction of the samples is "
                   "skipped"));
  t.push_back(make("eval", OptionType::kBool, "", &Settings::eval,
                   "measure top-1 accuracy before and after adaptation on --eval-data"));
  t.push_back(make("eval-data", OptionType::kPath, "PATH", &Settings::eval_data_path,
                   "labelled evaluation data (any format above with labels)"));
  t.push_back(number("eval-samples", "N", &Settings::eval_samples, 1, kMaxSamples,
                     kPositiveSamples,
                     "evaluate on the first N samples of --eval-data; unset: all"));
  t.push_back(make("output", OptionType::kPath, "PATH", &Settings::output_path,
                   "write the model with the new BatchNorm buffers"));
  t.push_back(make("stats-output", OptionType::kPath, "PATH", &Settings::stats_output_path,
                   "write the BatchNorm buffers alone (a torch.save state_dict)"));
  t.push_back(make("report", OptionType::kPath, "PATH", &Settings::report_path,
                   "write a JSON report"));
  t.push_back(make("checkpoint", OptionType::kPath, "IN", &Settings::checkpoint_path,
                   "a training checkpoint (torch.save zip or .safetensors) to receive the new "
                   "BN buffers"));
  t.push_back(make("checkpoint-output", OptionType::kPath, "OUT",
                   &Settings::checkpoint_output_path,
                   "where the patched checkpoint goes, with OUT.sha256"));
  Option key = make("checkpoint-key", OptionType::kText, "K", &Settings::checkpoint_key,
                    "which state_dict in the checkpoint: \"model\" or \"model:module.\" (dict "
                    "path, then key prefix); unset: found by matching the model's buffers");
  key.expected = "a string such as \"model\" or \"model:module.\"";
  t.push_back(key);
  t.push_back(make("in-place", OptionType::kBool, "", &Settings::in_place,
                   "allow --checkpoint-output to equal --checkpoint (still atomic)"));
  t.push_back(choice("weights-from", "W", &Settings::weights_from,
                     std::array{WeightsFrom::kCheckpoint, WeightsFrom::kModel}, &weightsText,
                     "with --checkpoint, where the weights of the forward passes come from: "
                     "checkpoint: every parameter and buffer from its state_dict (the model "
                     "file gives the architecture); model: the model file's, refused unless "
                     "equal to the checkpoint's (exit 7)"));
  t.push_back(make("overwrite", OptionType::kBool, "", &Settings::overwrite,
                   "replace outputs that exist already (otherwise an error, exit 6)"));
  t.push_back(choice("device", "D", &Settings::device,
                     std::array{DeviceRequest::kAuto, DeviceRequest::kCpu, DeviceRequest::kCuda},
                     &comm::deviceRequestName,
                     "where the forward passes run; auto: a CUDA GPU when this build and "
                     "LibTorch have CUDA and one is visible, else the CPU"));
  t.push_back(choice("backend", "B", &Settings::backend,
                     std::array{BackendRequest::kAuto, BackendRequest::kNccl,
                                BackendRequest::kMpi},
                     &comm::backendRequestName,
                     "the all-reduce; auto: NCCL on CUDA when built with it, else MPI"));
  t.push_back(make("allow-gpu-sharing", OptionType::kBool, "", &Settings::allow_gpu_sharing,
                   "let more local ranks than GPUs share them (otherwise an error)"));
  t.push_back(make("channels-last", OptionType::kBool, "", &Settings::channels_last,
                   "channels-last layout for 4-d weights and inputs (faster convolutions)"));
  t.push_back(choice("autocast", "P", &Settings::autocast,
                     std::array{Precision::kModel, Precision::kBf16}, &precisionText,
                     "off: the model's precision; bf16: faster, less precise activations "
                     "(statistics still accumulate in float64)"));
  t.push_back(number("threads", "N", &Settings::threads, 0, kMaxThreads,
                     "a non-negative integer at most 65536",
                     "intra-op threads per rank; 0: min(online cores / local ranks, cores the "
                     "rank may use)"));
  t.push_back(number("timeout", "SECONDS", &Settings::timeout_seconds, 0, kMaxTimeout,
                     "a number of seconds from 0 (off) to 10000000",
                     "end the job (exit 8) when a rank makes no progress for this long; 0: "
                     "never"));
  return t;
}

// `text` wrapped to lines of at most `width` characters (words longer than that stay whole).
std::vector<std::string> wrap(const std::string& text, std::size_t width) {
  std::vector<std::string> lines(1);
  std::istringstream words(text);
  for (std::string word; words >> word;) {
    if (!lines.back().empty() && lines.back().size() + 1 + word.size() > width) {
      lines.emplace_back();
    }
    lines.back() += (lines.back().empty() ? "" : " ") + word;
  }
  return lines;
}

// The whole description of `o`: help, default, other sources.
std::string describe(const Option& o) {
  std::string text = o.help;
  if (o.type == OptionType::kChoice) text += " (" + choiceList(o, "") + ")";
  const std::string def = defaultText(o);
  if (!def.empty()) text += "; default " + def;
  if (!o.also.empty()) text += "; " + o.also;
  return text;
}

}  // namespace

const std::vector<Option>& options() {
  static const std::vector<Option> table = buildTable();
  return table;
}

const Option* optionByFlag(std::string_view flag) {
  for (const Option& o : options()) {
    if (o.flag == flag) return &o;
  }
  return nullptr;
}

const Option* optionByKey(std::string_view key) {
  for (const Option& o : options()) {
    if (!o.key.empty() && o.key == key) return &o;
  }
  return nullptr;
}

std::string defaultText(const Option& o) {
  if (o.type == OptionType::kPath || o.type == OptionType::kBool || o.flag == "samples") {
    return "";  // paths have none, switches are off, samples are required
  }
  const std::string shown = o.show(Settings{});
  return o.type == OptionType::kUnsigned && o.min > 0 && shown == "0" ? "" : shown;
}

std::string choiceList(const Option& o, const std::string& quote) {
  std::string out;
  for (std::size_t i = 0; i < o.choices.size(); ++i) {
    if (i > 0) out += i + 1 == o.choices.size() ? " or " : ", ";
    out += quote + o.choices[i] + quote;
  }
  return out;
}

std::string usage() {
  constexpr std::size_t kIndent = 24, kWidth = 94;
  std::string out =
      "Usage: bnadapt_dist [--config FILE] --model PATH --data PATH --samples N [options]\n\n"
      "Recomputes the BatchNorm statistics of a TorchScript model over calibration data, with "
      "the\nwork spread across MPI ranks.\n\n"
      "Options (each also as --name=VALUE; options override the config file):\n";
  for (const Option& o : options()) {
    std::string name = "  --" + o.flag + (o.metavar.empty() ? "" : " " + o.metavar);
    const std::vector<std::string> lines = wrap(describe(o), kWidth - kIndent);
    if (name.size() + 2 > kIndent) {
      out += name + "\n";
      name.clear();
    }
    for (const std::string& line : lines) {
      name.resize(kIndent, ' ');
      out += name + line + "\n";
      name.clear();
    }
  }
  out += "  -h, --help              print this help and exit\n\n"
         "Every option can be set in the config's \"bnadapt_dist\" section ('_' for '-'); a flag\n"
         "overrides the file. Relative paths in the config file are relative to its folder.\n"
         "The sample shape comes from the config's input_info.sample_size (batch dimension "
         "first).\nExit codes: 0 ok, 1 internal, 2 usage, 3 data, 4 model, 5 communication, 6 "
         "output,\n7 checkpoint, 8 timeout.\n";
  return out;
}

std::string optionsMarkdown() {
  std::string out = "| option | `bnadapt_dist` key | meaning |\n|---|---|---|\n";
  for (const Option& o : options()) {
    std::string text = describe(o);
    for (std::size_t at = 0; (at = text.find('|', at)) != std::string::npos; at += 2) {
      text.replace(at, 1, "\\|");
    }
    out += "| `--" + o.flag + (o.metavar.empty() ? "" : " " + o.metavar) + "` | " +
           (o.key.empty() ? "" : "`" + o.key + "`") + " | " + text + " |\n";
  }
  return out;
}

std::size_t editDistance(const std::string& a, const std::string& b) {
  const std::size_t n = a.size();
  const std::size_t m = b.size();
  // d_i[j]: distance between a[0, i) and b[0, j); three rows (i-2, i-1, i) of the table, so
  // memory is O(m) even for a key of megabytes.
  std::vector<std::size_t> before(m + 1), prev(m + 1), cur(m + 1);
  for (std::size_t j = 0; j <= m; ++j) prev[j] = j;
  for (std::size_t i = 1; i <= n; ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= m; ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      std::size_t best = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        best = std::min(best, before[j - 2] + 1);
      }
      cur[j] = best;
    }
    std::swap(before, prev);
    std::swap(prev, cur);
  }
  return prev[m];
}

std::string nearestKey(const std::string& key, const std::vector<std::string>& candidates) {
  const std::size_t limit = std::max<std::size_t>(2, key.size() / 3);
  std::string best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const std::string& c : candidates) {
    // The distance is at least the difference in length: skip what cannot be within `limit`
    // (a hostile key of megabytes would otherwise cost seconds per candidate).
    if (std::max(key.size(), c.size()) - std::min(key.size(), c.size()) > limit) continue;
    const std::size_t d = editDistance(key, c);
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best_distance <= limit ? best : std::string();
}

}  // namespace bnadapt::config
