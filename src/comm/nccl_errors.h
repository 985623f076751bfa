// NCCL result codes as messages a user can act on.
//
// No NCCL header: the codes are ncclResult_t's numeric values (nccl.h of NCCL 2.14 to 2.28:
// 0 ncclSuccess, 1 ncclUnhandledCudaError, 2 ncclSystemError, 3 ncclInternalError,
// 4 ncclInvalidArgument, 5 ncclInvalidUsage, 6 ncclRemoteError, 7 ncclInProgress), so that
// the CPU-only build compiles and tests it too.
#pragma once

#include <string>

namespace bnadapt::comm {

// "<name>: <what it means>; <what to do>", then "; NCCL says: <last_error>" when
// last_error (ncclGetLastError's text) is not empty. Unknown codes are named as such.
std::string ncclErrorMessage(int nccl_result, const std::string& last_error);

}  // namespace bnadapt::comm
