#include "stats/accumulator.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace bnadapt::stats {
namespace {
constexpr size_t kHeader = 2;  // count, batches
constexpr size_t kArrays = 4;  // S1, S2, BM, BE2

// Σ(x - p) and Σ(x - p)² of one channel of x viewed as [N, C, S] (element (n, c, s) at
// n * sn + c * sc + s * ss), in float64 about the pivot p = the channel's first value: p lies
// inside the channel's range, so Σ(x - p)² - (Σ(x - p))² / n keeps its digits whatever the
// mean is. One pass, four independent partial sums each (summation error ~ n * 1e-16).
template <typename T>
void pivotSums(const T* x, int64_t nn, int64_t ns, int64_t sn, int64_t ss, double& a, double& b) {
  const double p = static_cast<double>(x[0]);
  double a4[4] = {0, 0, 0, 0}, b4[4] = {0, 0, 0, 0};
  for (int64_t n = 0; n < nn; ++n) {
    const T* row = x + n * sn;
    int64_t s = 0;
    if (ss == 1) {
      for (; s + 4 <= ns; s += 4) {
        for (int k = 0; k < 4; ++k) {
          const double d = static_cast<double>(row[s + k]) - p;
          a4[k] += d;
          b4[k] += d * d;
        }
      }
    }
    for (; s < ns; ++s) {
      const double d = static_cast<double>(row[s * ss]) - p;
      a4[0] += d;
      b4[0] += d * d;
    }
  }
  a = (a4[0] + a4[1]) + (a4[2] + a4[3]);
  b = (b4[0] + b4[1]) + (b4[2] + b4[3]);
}

// The four per-channel arrays of the buffer for one batch of a CPU float32/float64 input:
// S1 = Σd, S2 = Σd² (d = x - K), the batch mean of d and var_b + mean_b(d)², then the
// batch's mean and biased variance, in one fused pass parallel over channels. out: [6 * C].
template <typename T>
void batchSumsAs(const at::Tensor& x3, const std::vector<double>& shift, std::vector<double>& out) {
  const int64_t nn = x3.size(0), c = x3.size(1), ns = x3.size(2);
  const int64_t sn = x3.stride(0), sc = x3.stride(1), ss = x3.stride(2);
  const T* base = x3.data_ptr<T>();
  const double n = static_cast<double>(nn * ns);
  out.assign(6 * c, 0.0);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, nn * ns));
  at::parallel_for(0, c, grain, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      const T* xc = base + ch * sc;
      double a = 0, b = 0;
      pivotSums(xc, nn, ns, sn, ss, a, b);
      const double mean_p = a / n;                      // mean - p
      const double m2 = std::max(0.0, b - a * mean_p);  // Σ(x - mean)²
      const double pk = static_cast<double>(xc[0]) - shift[ch];  // p - K
      const double delta = pk + mean_p;                 // mean - K
      out[ch] = a + n * pk;                             // S1 = Σ(x - K)
      out[c + ch] = b + pk * (2.0 * a + n * pk);        // S2 = Σ(x - K)²
      out[2 * c + ch] = delta;                          // BM
      out[3 * c + ch] = m2 / (n - 1.0) + delta * delta; // BE2
      out[4 * c + ch] = shift[ch] + delta;              // batch mean
      out[5 * c + ch] = m2 / n;                         // biased batch variance
    }
  });
}

// The CPU fast path applies to float32 and float64 inputs whose dims from 2 on flatten to
// one stride (contiguous and channels-last layouts).
bool cpuBatchSums(const at::Tensor& x, const std::vector<double>& shift, std::vector<double>& out) {
  if (!x.is_cpu() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble)) {
    return false;
  }
  at::Tensor x3 = x.dim() == 2 ? x.unsqueeze(2) : x.flatten(2);
  if (x3.data_ptr() != x.data_ptr()) return false;  // flatten copied: not one stride
  if (x.scalar_type() == at::kFloat) {
    batchSumsAs<float>(x3, shift, out);
  } else {
    batchSumsAs<double>(x3, shift, out);
  }
  return true;
}

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

BatchMoments StatsAccumulator::observe(size_t layer, const at::Tensor& x,
                                       c10::optional<at::ScalarType> dtype) {
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
  const double nd = static_cast<double>(n);
  at::Tensor seg = sums_.narrow(0, static_cast<int64_t>(offsets_[layer]),
                                static_cast<int64_t>(kHeader + kArrays * c));
  std::vector<double> arrays;
  if (cpuBatchSums(x, shifts_[layer], arrays)) {
    for (int64_t i = 0; i < 2 * c; ++i) {
      if (!std::isfinite(arrays[i])) {
        throw std::invalid_argument("non-finite activation in channel " + std::to_string(i % c));
      }
    }
    double* out = seg.data_ptr<double>();
    out[0] += nd;   // count
    out[1] += 1.0;  // batches
    for (size_t i = 0; i < kArrays * static_cast<size_t>(c); ++i) out[kHeader + i] += arrays[i];
    dirty_ = true;
    const at::Tensor moments = at::tensor(arrays, at::kDouble).narrow(0, kArrays * c, 2 * c);
    const at::Tensor cast = moments.to(dtype.value_or(x.scalar_type()));
    return {cast.narrow(0, 0, c), cast.narrow(0, c, c)};
  }
  // Elsewhere (a GPU, bfloat16): d = x - K in float64, as [C, n].
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
  const at::Tensor mean_b = s1 / nd;
  const at::Tensor var_b = ((s2 - s1 * mean_b) / (nd - 1.0)).clamp_min(0.0);
  seg.narrow(0, 0, 1).add_(nd);   // count
  seg.narrow(0, 1, 1).add_(1.0);  // batches
  seg.narrow(0, kHeader, c).add_(s1);
  seg.narrow(0, kHeader + c, c).add_(s2);
  seg.narrow(0, kHeader + 2 * c, c).add_(mean_b);
  seg.narrow(0, kHeader + 3 * c, c).add_(var_b + mean_b * mean_b);
  dirty_ = true;
  const at::ScalarType type = dtype.value_or(x.scalar_type());
  return {(mean_b + shift_tensors_[layer]).to(type), (var_b * ((nd - 1.0) / nd)).to(type)};
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
