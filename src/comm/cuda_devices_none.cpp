// cuda_devices.h for builds without CUDA (BNADAPT_WITH_NCCL=OFF).
#include "comm/cuda_devices.h"
#include "common/error.h"

namespace bnadapt::comm {

int cudaDeviceCountOrReason(std::string& reason) {
  reason = "this build has no CUDA (configure with -DBNADAPT_WITH_NCCL=ON)";
  return -1;
}

std::string cudaDeviceUuid(int device) {
  fail(ExitCode::kInternal, "internal error: cudaDeviceUuid(", device,
       ") in a build without CUDA (configure with -DBNADAPT_WITH_NCCL=ON)");
}

std::string cudaLibraryVersions() { return "no CUDA in this build"; }

}  // namespace bnadapt::comm
