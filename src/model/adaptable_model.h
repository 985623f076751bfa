// A TorchScript model prepared for exact BatchNorm statistics.
//
// BN layers are found by structure, not by class name: a layer is every module that owns
// running statistics (tensor attributes, usually running_mean/running_var) which some forward
// graph of the model hands to batch normalisation (aten::batch_norm, native_batch_norm,
// _native_batch_norm_legit[_no_training], _batch_norm_impl_index), whatever the module's
// class: torch's BatchNorm1d/2d/3d, timm's BatchNormAct2d, _BatchNorm subclasses, BN inside
// fused or wrapper modules, BN calls inlined into a parent's graph. Modules that own running
// statistics but are not adapted (FrozenBatchNorm2d, track_running_stats=False, a
// normalisation done by another op) are listed with the reason (skipped()).
//
// Two copies are loaded from the same file:
//  - the calibration copy: every other module in eval mode; in every method graph (function
//    and method calls inlined) each batch normalisation node normalises with batch
//    statistics (training=true, momentum=0 so the copy's buffers never change), and a
//    bnadapt::observe node before it hands its input to the StatsAccumulator of the model
//    being calibrated, keyed by the running-mean tensor. This works the same for scripted
//    models (compiled-in momentum) and traced ones (training baked in as a constant), and
//    captures every call of a layer, even one used twice in a forward.
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
  std::string kind;  // the module's class, "BatchNorm2d", "BatchNormAct2d", ...
  std::string mean_attr = "running_mean";  // the attributes batch_norm reads
  std::string var_attr = "running_var";
  int64_t channels = 0;
  double eps = 0;
  bool affine = false;
  std::vector<double> old_mean;
  std::vector<double> old_var;
  int64_t old_num_batches_tracked = -1;  // -1: no such buffer
};

// A module that owns running statistics (or is a BatchNorm without them) and is left alone.
struct SkippedLayer {
  std::string name;
  std::string kind;
  std::string category;  // short, for counts: "track_running_stats=False", "frozen", ...
  std::string reason;    // the whole sentence
};

// "frozen x2, track_running_stats=False x1": the left-alone layers counted by category, in
// order of first appearance; "" when there are none.
std::string countByCategory(const std::vector<SkippedLayer>& skipped);

struct AppliedBn;  // what discovery learnt from a batch normalisation node

class AdaptableModel {
 public:
  // Called on each freshly loaded copy (the output copy first) before anything is derived
  // from its tensors: it may overwrite parameters and buffers in place (checkpoint weights).
  using Prepare = std::function<void(torch::jit::Module&)>;

  // Loads `path` twice, applies `prepare` (if any) to both copies and prepares the
  // calibration copy. Errors are kModel and name the file or layer (errors of `prepare`
  // pass through). A model without any adaptable BN layer is an error that names the
  // normalisation it does have ("LayerNorm x12, GroupNorm x4: no BatchNorm to adapt").
  explicit AdaptableModel(const std::string& path, const Prepare& prepare = nullptr);
  ~AdaptableModel();
  AdaptableModel(const AdaptableModel&) = delete;
  AdaptableModel& operator=(const AdaptableModel&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<BnLayer>& layers() const { return layers_; }
  const std::vector<SkippedLayer>& skipped() const { return skipped_; }

  // One line per layer (adaptable and skipped) and one with a hash of every parameter and
  // buffer (name, dtype, shape; the bytes of tensors up to 64 KiB, 256 sampled 64-byte
  // windows of larger ones): identical on ranks that loaded the same model.
  std::vector<std::string> describeLayers() const;

  // Modules whose graph calls batch normalisation with statistics that are no module's
  // tensors (the constants of a frozen graph): those calls are not observed.
  const std::vector<std::string>& unobservedBatchNormModules() const { return unobserved_; }

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
  // Throws bnadapt::Error(kData) naming the layer when a batch cannot be used. Models
  // calibrate independently: two instances may calibrate at the same time from two threads
  // (each layer's key is registered to this call's accumulator for its duration).
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
  void collectLayers(const std::unordered_map<const c10::TensorImpl*, AppliedBn>& applied);
  [[noreturn]] void failWithoutBatchNorm() const;

  std::string path_;
  torch::jit::Module calib_;
  torch::jit::Module output_;
  std::vector<BnLayer> layers_;
  std::vector<SkippedLayer> skipped_;
  std::vector<torch::jit::Module> output_modules_;  // per layer, in the output copy
  // calibration running_mean -> layer index: tells the instances of a shared type apart
  std::unordered_map<const c10::TensorImpl*, size_t> keys_;
  std::vector<std::string> unobserved_;
  at::ScalarType input_dtype_ = at::kFloat;
  c10::Device device_ = c10::Device(c10::kCPU);
  uint64_t content_hash_ = 0;
};

}  // namespace bnadapt::model
