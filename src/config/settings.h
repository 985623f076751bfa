// The validated, immutable settings of one run: config file + command line flags.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "comm/device_binding.h"
#include "data/data_format.h"
#include "stats/weighting.h"

namespace bnadapt::config {

using stats::Weighting;
using stats::weightingName;

// Where the weights come from when a checkpoint is given (--weights-from).
enum class WeightsFrom {
  kCheckpoint,  // the checkpoint's state_dict; the model file supplies the architecture
  kModel,       // the model file's, which must equal the checkpoint's
};
constexpr const char* weightsFromName(WeightsFrom w) {
  return w == WeightsFrom::kModel ? "model" : "checkpoint";
}

// --autocast: the forward passes in the model's own precision, or bfloat16 autocast.
enum class Precision { kModel, kBf16 };
constexpr const char* precisionName(Precision p) { return p == Precision::kBf16 ? "bf16" : "off"; }

// The defaults of every option are the initialisers below, and only there: the option table
// (config/options.cpp) reads them back for --help and the README.

struct Settings {
  // Inputs.
  std::string model_path;   // --model / bnadapt_dist.model
  std::string data_path;    // --data / bnadapt_dist.data ("synthetic" for seeded normal data)
  data::DataFormat data_format = data::DataFormat::kAuto;  // --data-format
  // Sample shape without the batch dimension, from input_info.sample_size (which includes
  // the batch dimension, as NNCF writes it). Empty when not given.
  std::vector<int64_t> sample_shape;

  // Budget and batching.
  int64_t samples = 0;     // --samples / compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples
  int64_t batch_size = 32;  // --batch-size / bnadapt_dist.batch_size (else NNCF top-level batch_size)
  Weighting weighting = Weighting::kSamples;
  uint64_t seed = 0;
  bool shuffle = false;  // --shuffle: seeded random sample order

  // Preprocessing of images and IDX files (empty / 0: the source's defaults).
  std::vector<float> mean, std;  // --mean, --std
  int64_t resize_shorter = 0;    // --resize

  // Loading.
  int data_threads = 0;          // --data-threads; 0 = half the rank's cores, at least 1
  int prefetch_batches = 4;      // --prefetch-batches
  bool skip_corrupt = false;     // --skip-corrupt
  double max_skip_fraction = 0.01;  // --max-skip-fraction

  // Top-1 evaluation before and after adaptation.
  bool eval = false;             // --eval
  std::string eval_data_path;    // --eval-data
  int64_t eval_samples = 0;      // --eval-samples; 0 = all

  // Outputs (empty: not written).
  std::string output_path;        // --output: TorchScript model with new buffers
  std::string stats_output_path;  // --stats-output: dict of BN buffers
  std::string report_path;        // --report: JSON report

  int threads = 0;  // --threads; 0 = cores / local ranks
  comm::DeviceRequest device = comm::DeviceRequest::kAuto;     // --device
  comm::BackendRequest backend = comm::BackendRequest::kAuto;  // --backend
  bool allow_gpu_sharing = false;  // --allow-gpu-sharing
  bool channels_last = false;    // --channels-last
  Precision autocast = Precision::kModel;  // --autocast
  // --timeout: seconds without progress (a finished batch, a new phase) before every rank
  // ends the job with exit code 8; 0 disables.
  int64_t timeout_seconds = 900;

  // A training checkpoint to patch (empty: none), where the patched copy goes, which
  // state_dict inside it ("path:prefix" or "path"), and whether OUT may equal IN.
  std::string checkpoint_path;         // --checkpoint
  std::string checkpoint_output_path;  // --checkpoint-output
  std::string checkpoint_key;          // --checkpoint-key
  bool in_place = false;               // --in-place
  WeightsFrom weights_from = WeightsFrom::kCheckpoint;  // --weights-from checkpoint|model
  bool overwrite = false;              // --overwrite: outputs may replace existing files

  // From NNCF's compression section: algorithm names, in order ("quantization", ...).
  std::vector<std::string> compression_algorithms;
  // Top-level and nested NNCF keys we accept but do not use, as JSON paths; logged once.
  std::vector<std::string> ignored_keys;
  // Where the settings came from (config path or empty), for messages.
  std::string config_path;
};

}  // namespace bnadapt::config
