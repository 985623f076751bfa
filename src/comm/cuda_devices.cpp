// cuda_devices.h for builds with CUDA (BNADAPT_WITH_NCCL=ON).
#include "comm/cuda_devices.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <array>
#include <cstdlib>

#include "comm/cuda_check.h"
#include "comm/device_binding.h"
#include "common/error.h"

namespace bnadapt::comm {

int cudaDeviceCountOrReason(std::string& reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    reason = detail::concat(cudaGetErrorString(err), " (", cudaGetErrorName(err), ")");
    if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) {
      reason += detail::concat(", CUDA_VISIBLE_DEVICES='", visible, "'");
    }
    return -1;
  }
  if (count <= 0) {
    reason = "the CUDA runtime reports no device";
    return -1;
  }
  reason.clear();
  return count;
}

std::string cudaDeviceUuid(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::array<uint8_t, 16> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(prop.uuid.bytes[i]);
  return formatGpuUuid(bytes);
}

std::string cudaLibraryVersions() {
  // CUDA encodes versions as 1000 * major + 10 * minor, NCCL (>= 2.9) as
  // 10000 * major + 100 * minor + patch.
  auto cuda = [](int v) { return detail::concat(v / 1000, ".", (v % 1000) / 10); };
  int runtime = 0, driver = 0, nccl = 0;
  std::string out = "CUDA runtime ";
  out += cudaRuntimeGetVersion(&runtime) == cudaSuccess ? cuda(runtime) : std::string("?");
  out += ", driver ";
  out += cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0 ? cuda(driver)
                                                                       : std::string("none");
  (void)cudaGetLastError();
  out += ", NCCL ";
  out += ncclGetVersion(&nccl) == ncclSuccess
             ? detail::concat(nccl / 10000, ".", (nccl % 10000) / 100, ".", nccl % 100)
             : std::string("?");
  return out;
}

}  // namespace bnadapt::comm
