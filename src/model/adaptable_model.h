// A TorchScript model prepared for exact BatchNorm statistics.
//
// Two copies are loaded from the same file:
//  - the calibration copy: every other module in eval mode; in each BN layer's forward graph
//    aten::batch_norm is rewritten to normalise with batch statistics (training=true), and a
//    bnadapt::observe node hands the layer's input to the StatsAccumulator. This works the
//    same for scripted models (compiled-in momentum) and traced ones (training baked in as a
//    constant), and captures every call of a layer, even one used twice in a forward.
//  - the output copy: never rewritten, never run; it receives the new buffers and is what
//    gets saved, so the saved graphs are the user's own and run in eval mode as before.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <torch/script.h>

#include "stats/accumulator.h"

namespace bnadapt::model {

struct BnLayer {
  std::string name;  // module path, e.g. "layer1.0.bn1"
  std::vector<std::string> aliases;  // other paths of the same module instance
  std::string kind;  // "BatchNorm2d"
  int64_t channels = 0;
  double eps = 0;
  bool affine = false;
  std::vector<double> old_mean;
  std::vector<double> old_var;
  int64_t old_num_batches_tracked = -1;  // -1: no such buffer
};

struct SkippedLayer {
  std::string name;
  std::string kind;
  std::string reason;
};

class AdaptableModel {
 public:
  // Called on each freshly loaded copy (the output copy first) before anything is derived
  // from its tensors: it may overwrite parameters and buffers in place (checkpoint weights).
  using Prepare = std::function<void(torch::jit::Module&)>;

  // Loads `path` twice, applies `prepare` (if any) to both copies and prepares the
  // calibration copy. Errors are kModel and name the file or layer (errors of `prepare`
  // pass through). A model without any adaptable BN layer is an error.
  explicit AdaptableModel(const std::string& path, const Prepare& prepare = nullptr);
  ~AdaptableModel();
  AdaptableModel(const AdaptableModel&) = delete;
  AdaptableModel& operator=(const AdaptableModel&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<BnLayer>& layers() const { return layers_; }
  const std::vector<SkippedLayer>& skipped() const { return skipped_; }

  // One line per layer (adaptable and skipped) and one with a hash of every parameter and
  // buffer: identical on ranks that loaded the same model.
  std::vector<std::string> describeLayers() const;

  // Modules whose own forward graph calls aten::batch_norm directly (an inlined or frozen
  // graph): those calls are not observed.
  const std::vector<std::string>& inlinedBatchNormModules() const { return inlined_; }

  // The floating dtype the model's parameters use (float32 when it has none).
  at::ScalarType inputDtype() const { return input_dtype_; }

  // Moves both copies to `device` (a CUDA device, or the CPU). With channels_last, the
  // calibration copy's 4-d weights take the channels-last layout (faster convolutions on
  // some devices); the output copy keeps the file's layout. Before the first calibrate().
  void moveTo(const c10::Device& device, bool channels_last);
  const c10::Device& device() const { return device_; }

  // A StatsAccumulator laid out for these layers, shifted by the old running means, on
  // the model's device.
  stats::StatsAccumulator makeAccumulator() const;

  // Forwards one batch through the calibration copy; every BN input goes to `acc`.
  // Throws bnadapt::Error(kData) naming the layer when a batch cannot be used.
  void calibrate(const at::Tensor& batch, stats::StatsAccumulator& acc);

  // The output copy's forward on `batch` in eval mode (as the model will be used), for
  // top-1 evaluation: logits [N, classes]. Leaves the copy as it was (training flags and
  // every buffer restored). Throws Error(kModel) when the output is not [N, classes].
  at::Tensor predict(const at::Tensor& batch);

  // Writes new running_mean/var into the output copy's layer and adds `batches` to its
  // num_batches_tracked.
  void setStatistics(size_t layer, const std::vector<double>& mean,
                     const std::vector<double>& var, int64_t batches);
  // The output copy's buffers of `layer`, as they are now, on the CPU.
  std::vector<std::pair<std::string, at::Tensor>> buffers(size_t layer) const;

  // Saves the output copy (TorchScript archive, CPU tensors) to `path`.
  void save(const std::string& path) const;

 private:
  void discover();

  std::string path_;
  torch::jit::Module calib_;
  torch::jit::Module output_;
  std::vector<BnLayer> layers_;
  std::vector<SkippedLayer> skipped_;
  std::vector<torch::jit::Module> output_modules_;  // per layer, in the output copy
  // calibration running_mean -> layer index: tells the instances of a shared type apart
  std::unordered_map<const c10::TensorImpl*, size_t> keys_;
  std::vector<std::string> inlined_;
  at::ScalarType input_dtype_ = at::kFloat;
  c10::Device device_ = c10::Device(c10::kCPU);
  uint64_t content_hash_ = 0;
};

}  // namespace bnadapt::model
