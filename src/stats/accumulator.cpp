#include "stats/accumulator.h"

#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>

namespace bnadapt::stats {
namespace {
constexpr size_t kHeader = 2;  // count, batches
constexpr size_t kArrays = 4;  // S1, S2, BM, BE2
}  // namespace

StatsAccumulator::StatsAccumulator(std::vector<std::vector<double>> shifts, c10::Device device)
    : shifts_(std::move(shifts)) {
  size_t offset = 0;
  for (auto& shift : shifts_) {
    for (double& k : shift) {
      if (!std::isfinite(k)) k = 0.0;
    }
    shift_tensors_.push_back(
        at::tensor(shift, at::kDouble).to(device));
    offsets_.push_back(offset);
    offset += kHeader + kArrays * shift.size();
  }
  buffer_.assign(offset, 0.0);
  sums_ = at::zeros({static_cast<int64_t>(offset)}, at::TensorOptions(at::kDouble).device(device));
}

void StatsAccumulator::sync() const {
  if (!dirty_) return;
  const at::Tensor host = sums_.cpu().contiguous();
  std::copy(host.data_ptr<double>(), host.data_ptr<double>() + host.numel(), buffer_.begin());
  dirty_ = false;
}

std::vector<double>& StatsAccumulator::buffer() {
  sync();
  return buffer_;
}

int64_t StatsAccumulator::firstNonFiniteLayer() {
  sync();
  for (size_t l = 0; l < offsets_.size(); ++l) {
    const size_t end = l + 1 < offsets_.size() ? offsets_[l + 1] : buffer_.size();
    for (size_t i = offsets_[l]; i < end; ++i) {
      if (!std::isfinite(buffer_[i])) return static_cast<int64_t>(l);
    }
  }
  return -1;
}

void StatsAccumulator::observe(size_t layer, const at::Tensor& x) {
  const int64_t c = channels(layer);
  if (x.dim() < 2 || x.size(1) != c) {
    throw std::invalid_argument("expected input [N, " + std::to_string(c) + ", ...], got " +
                                std::to_string(x.dim()) + "-d input with size(1) = " +
                                (x.dim() >= 2 ? std::to_string(x.size(1)) : "n/a"));
  }
  const int64_t n = x.numel() / c;
  if (n < 2) {
    throw std::invalid_argument(
        "only " + std::to_string(n) +
        " value per channel in this batch; BatchNorm needs more than 1 in train mode "
        "(use a larger --batch-size or a --samples value that avoids a 1-sample last batch)");
  }
  // d = x - K in float64, as [C, n].
  std::vector<int64_t> view(x.dim(), 1);
  view[1] = c;
  // Out of place: x may already be float64, and it goes on to aten::batch_norm.
  at::Tensor d = at::sub(x.to(at::kDouble), shift_tensors_[layer].view(view));
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i != 1) dims.push_back(i);
  }
  const at::Tensor s1 = d.sum(dims);
  const at::Tensor s2 = d.mul_(d).sum(dims);  // d is our own copy
  if (x.is_cpu()) {  // free here; on a GPU it would synchronise every batch
    const at::Tensor bad = at::logical_not(at::isfinite(s1) & at::isfinite(s2)).nonzero();
    if (bad.numel() > 0) {
      throw std::invalid_argument("non-finite activation in channel " +
                                  std::to_string(bad[0][0].item<int64_t>()));
    }
  }
  const double nd = static_cast<double>(n);
  const at::Tensor mean_b = s1 / nd;
  const at::Tensor var_b = ((s2 - s1 * mean_b) / (nd - 1.0)).clamp_min(0.0);
  at::Tensor seg = sums_.narrow(0, static_cast<int64_t>(offsets_[layer]),
                                static_cast<int64_t>(kHeader + kArrays * c));
  seg.narrow(0, 0, 1).add_(nd);   // count
  seg.narrow(0, 1, 1).add_(1.0);  // batches
  seg.narrow(0, kHeader, c).add_(s1);
  seg.narrow(0, kHeader + c, c).add_(s2);
  seg.narrow(0, kHeader + 2 * c, c).add_(mean_b);
  seg.narrow(0, kHeader + 3 * c, c).add_(var_b + mean_b * mean_b);
  dirty_ = true;
}

LayerStats StatsAccumulator::finalize(size_t layer, Weighting weighting) const {
  sync();
  const int64_t c = channels(layer);
  const double* base = buffer_.data() + offsets_[layer];
  const double* S1 = base + kHeader;
  const double* S2 = S1 + c;
  const double* BM = S2 + c;
  const double* BE2 = BM + c;
  LayerStats out;
  out.count = base[0];
  out.batches = base[1];
  if (out.count < 2 || out.batches < 1) return out;
  out.mean.resize(c);
  out.var.resize(c);
  const auto& k = shifts_[layer];
  for (int64_t i = 0; i < c; ++i) {
    double mean_d = 0, var = 0;
    if (weighting == Weighting::kSamples) {
      mean_d = S1[i] / out.count;
      var = (S2[i] - S1[i] * mean_d) / (out.count - 1.0);
    } else {
      mean_d = BM[i] / out.batches;
      var = BE2[i] / out.batches - mean_d * mean_d;
    }
    out.mean[i] = k[i] + mean_d;
    out.var[i] = std::max(0.0, var);  // rounding can leave -1e-17 for a constant channel
  }
  return out;
}

}  // namespace bnadapt::stats
