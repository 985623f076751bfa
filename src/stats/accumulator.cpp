#include "stats/accumulator.h"

#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>

namespace bnadapt::stats {
namespace {
constexpr size_t kHeader = 2;  // count, batches
constexpr size_t kArrays = 4;  // S1, S2, BM, BE2
}  // namespace

StatsAccumulator::StatsAccumulator(std::vector<std::vector<double>> shifts)
    : shifts_(std::move(shifts)) {
  size_t offset = 0;
  for (auto& shift : shifts_) {
    for (double& k : shift) {
      if (!std::isfinite(k)) k = 0.0;
    }
    offsets_.push_back(offset);
    offset += kHeader + kArrays * shift.size();
  }
  buffer_.assign(offset, 0.0);
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
  at::Tensor shift = at::from_blob(shifts_[layer].data(), {c}, at::kDouble);
  std::vector<int64_t> view(x.dim(), 1);
  view[1] = c;
  // Out of place: x may already be float64, and it goes on to aten::batch_norm.
  at::Tensor d = at::sub(x.to(at::kDouble), shift.to(x.device()).view(view));
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i != 1) dims.push_back(i);
  }
  at::Tensor s1 = d.sum(dims).cpu().contiguous();
  at::Tensor s2 = d.mul_(d).sum(dims).cpu().contiguous();  // d is our own copy
  const double* p1 = s1.data_ptr<double>();
  const double* p2 = s2.data_ptr<double>();
  for (int64_t i = 0; i < c; ++i) {
    if (!std::isfinite(p1[i]) || !std::isfinite(p2[i])) {
      throw std::invalid_argument("non-finite activation in channel " + std::to_string(i));
    }
  }
  double* base = buffer_.data() + offsets_[layer];
  double* S1 = base + kHeader;
  double* S2 = S1 + c;
  double* BM = S2 + c;
  double* BE2 = BM + c;
  const double nd = static_cast<double>(n);
  base[0] += nd;
  base[1] += 1.0;
  for (int64_t i = 0; i < c; ++i) {
    S1[i] += p1[i];
    S2[i] += p2[i];
    const double mean_b = p1[i] / nd;
    const double var_b = std::max(0.0, (p2[i] - p1[i] * mean_b) / (nd - 1.0));
    BM[i] += mean_b;
    BE2[i] += var_b + mean_b * mean_b;
  }
}

LayerStats StatsAccumulator::finalize(size_t layer, config::Weighting weighting) const {
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
    if (weighting == config::Weighting::kSamples) {
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
