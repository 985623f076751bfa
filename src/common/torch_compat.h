#pragma once
// The one place where LibTorch versions differ for bnadapt_dist. Supported: 1.13 (Debian's
// libtorch-dev, the compatibility build) to 2.x (PyPI's torch wheel, the primary build).
// Everything else in src/ is written against the API both provide.

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/version.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#define BNADAPT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||          \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#if !BNADAPT_TORCH_AT_LEAST(1, 13)
#error "bnadapt_dist needs LibTorch >= 1.13"
#endif

namespace bnadapt::compat {

// The LibTorch the tool was compiled against, e.g. "2.15.0".
inline constexpr const char* kTorchVersion = TORCH_VERSION;

// Turns autocast on or off for one device type, with the given lower-precision dtype. 2.4 replaced
// the per-device functions (set_cpu_enabled, set_autocast_gpu_dtype, ...) with ones taking
// the device type; the old ones warn at run time from 2.4 on.
inline void setAutocast(c10::DeviceType device, bool enabled, c10::ScalarType dtype) {
#if BNADAPT_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(device, enabled);
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

// Autocast to `dtype` on `device` for the calling thread (autocast state is thread-local in
// ATen) while the scope lives; the thread's previous state comes back at its end.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, c10::ScalarType dtype) : device_(device) {
#if BNADAPT_TORCH_AT_LEAST(2, 4)
    was_enabled_ = at::autocast::is_autocast_enabled(device);
    was_dtype_ = at::autocast::get_autocast_dtype(device);
#else
    const bool cuda = device == c10::DeviceType::CUDA;
    was_enabled_ = cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
    was_dtype_ =
        cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
    setAutocast(device, true, dtype);
  }
  ~AutocastScope() {
    setAutocast(device_, was_enabled_, was_dtype_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::kBFloat16;
};

// Full float32 precision for CUDA convolutions and matmuls (no TF32): the GPU's statistics
// then stay within float32 rounding of the CPU's. 2.9 replaced the allowTF32 switches with
// per-backend precisions (the old ones warn); the enum form is there from 2.10.
inline void disableTF32OnCuda() {
#if BNADAPT_TORCH_AT_LEAST(2, 10)
  at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL,
                                          at::Float32Precision::IEEE);
  at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV,
                                          at::Float32Precision::IEEE);
#else
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
#endif
}

// torch.save's zip archives. 2.7 made the alignment of record data configurable
// (torch.utils.serialization.config.save.storage_alignment, stated in a ".storage_alignment"
// record) and let PyTorchStreamWriter take it; 1.13's writer always aligns to 64 bytes.
inline constexpr uint64_t kDefaultRecordAlignment = 64;

// The alignment a writer made by makeStreamWriter(sink, wanted) uses: `wanted` where this
// LibTorch can, else 64.
inline constexpr uint64_t streamWriterAlignment(uint64_t wanted) {
#if BNADAPT_TORCH_AT_LEAST(2, 7)
  return wanted;
#else
  (void)wanted;
  return kDefaultRecordAlignment;
#endif
}

// A zip writer that passes its bytes to `sink`, aligning record data to
// streamWriterAlignment(alignment) bytes. From 2.x on it also writes a fresh
// ".data/serialization_id" record (derived from the records written) and drops a copied
// one: it cannot be told which id to write.
inline std::unique_ptr<caffe2::serialize::PyTorchStreamWriter> makeStreamWriter(
    const std::function<size_t(const void*, size_t)>& sink, uint64_t alignment) {
#if BNADAPT_TORCH_AT_LEAST(2, 7)
  return std::make_unique<caffe2::serialize::PyTorchStreamWriter>(sink, /*compute_crc32=*/true,
                                                                   alignment);
#else
  (void)alignment;
  return std::make_unique<caffe2::serialize::PyTorchStreamWriter>(sink);
#endif
}

}  // namespace bnadapt::compat
