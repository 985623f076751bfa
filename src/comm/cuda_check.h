// CUDA_CHECK: a CUDA runtime error as bnadapt::Error(kCommunication), with the call, CUDA's
// own text and where. Only for files built with the CUDA toolkit (bnadapt_nccl).
#pragma once

#include <cuda_runtime_api.h>

#include <cstring>

#include "common/error.h"

namespace bnadapt::comm {

// Throws unless err is cudaSuccess. Clears CUDA's last-error state, so that a non-sticky
// error does not resurface in an unrelated later call.
inline void cudaCheck(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();
  const char* slash = std::strrchr(file, '/');
  fail(ExitCode::kCommunication, call, " failed: ", cudaGetErrorString(err), " (",
       cudaGetErrorName(err), ") at ", slash ? slash + 1 : file, ":", line);
}

}  // namespace bnadapt::comm

#define CUDA_CHECK(call) ::bnadapt::comm::cudaCheck((call), #call, __FILE__, __LINE__)
