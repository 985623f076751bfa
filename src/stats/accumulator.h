// Per-layer, per-channel float64 sums of BatchNorm inputs, in one flat buffer.
//
// Layout (all float64, so one all-reduce of one buffer combines every rank):
//   for each layer l with C_l channels:
//     [count, batches, S1[C_l], S2[C_l], BM[C_l], BE2[C_l]]
//   where, with d = x - K (K: a per-channel shift, the same on every rank),
//     count   = elements per channel seen (N * spatial, summed over batches)
//     batches = number of batch observations (forward calls of the layer)
//     S1 = Σ d,  S2 = Σ d²                         -> "samples" estimator
//     BM = Σ_b mean_b(d),  BE2 = Σ_b (var_b + mean_b(d)²)  -> "batches" estimator
// Shifting by K (the layer's previous running_mean) keeps S2 - S1²/n well conditioned when
// |mean| >> σ; every estimator is shift invariant, so results do not depend on K.
// Sums are formed from float64 copies of the activations: no float32 cancellation.
// They accumulate where the activations are (a CUDA device or the CPU), in one float64
// tensor: no per-batch copy to the host. buffer() brings them to the host once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "stats/weighting.h"

namespace bnadapt::stats {

struct LayerStats {
  std::vector<double> mean;
  std::vector<double> var;  // unbiased
  double count = 0;         // elements per channel
  double batches = 0;       // batch observations
};

// One batch's per-channel mean and biased variance (what training-mode batch norm
// normalises with), from the float64 sums, in the dtype and on the device of the layer's
// shift tensor's counterpart (see observe).
struct BatchMoments {
  at::Tensor mean;
  at::Tensor var;
};

class StatsAccumulator {
 public:
  // shifts[l] holds C_l finite values (non-finite entries are replaced by 0). Inputs passed to
  // observe() must be on `device`.
  explicit StatsAccumulator(std::vector<std::vector<double>> shifts,
                            c10::Device device = c10::Device(c10::kCPU));

  size_t numLayers() const { return offsets_.size(); }
  int64_t channels(size_t layer) const { return static_cast<int64_t>(shifts_[layer].size()); }

  // Adds one batch of inputs x [N, C, *] of `layer`. Throws std::invalid_argument when
  // x has the wrong channel count or fewer than 2 values per channel (no unbiased batch
  // variance exists), and, on the CPU, when it holds non-finite values (on a GPU that check
  // would cost a synchronisation per batch: see firstNonFiniteLayer).
  // Returns the batch's moments in `dtype` (x's when undefined), so that batch norm can
  // normalise with them instead of computing them a second time. On the CPU, float32 and
  // float64 inputs take one fused float64 pass, parallel over channels.
  BatchMoments observe(size_t layer, const at::Tensor& x,
                       c10::optional<at::ScalarType> dtype = c10::nullopt);

  // The first layer whose sums are not finite, or -1; for sums kept on a GPU.
  int64_t firstNonFiniteLayer();

  // The flat buffer on the host, for the all-reduce (sum) across ranks; the first call after
  // observe() copies the device sums.
  std::vector<double>& buffer();

  // Final statistics of one layer from the (reduced) buffer. A layer with count 0 has
  // empty mean/var.
  LayerStats finalize(size_t layer, Weighting weighting) const;

 private:
  void sync() const;

  std::vector<std::vector<double>> shifts_;
  std::vector<at::Tensor> shift_tensors_;  // on the device
  std::vector<size_t> offsets_;
  at::Tensor sums_;                        // the buffer's layout, float64, on the device
  mutable bool dirty_ = false;             // sums_ changed since the last sync
  mutable std::vector<double> buffer_;
};

}  // namespace bnadapt::stats
