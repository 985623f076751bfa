#include "comm/nccl_errors.h"

#include "common/error.h"

namespace bnadapt::comm {

std::string ncclErrorMessage(int nccl_result, const std::string& last_error) {
  std::string text;
  switch (nccl_result) {
    case 0:
      text = "ncclSuccess: no error";
      break;
    case 1:
      text =
          "ncclUnhandledCudaError: a CUDA call inside NCCL failed; check the GPU and its "
          "driver (nvidia-smi, dmesg for Xid errors) and that every rank has its own GPU, "
          "and run with NCCL_DEBUG=WARN";
      break;
    case 2:
      text =
          "ncclSystemError: a system call or the network failed; check NCCL_SOCKET_IFNAME "
          "(the interface the hosts reach each other on) and the network between the hosts "
          "(firewall, InfiniBand: NCCL_IB_HCA), the size of /dev/shm in containers, and run "
          "with NCCL_DEBUG=WARN";
      break;
    case 3:
      text =
          "ncclInternalError: NCCL reached an internal error (a bug, or memory corrupted "
          "by another error); run with NCCL_DEBUG=INFO and report it";
      break;
    case 4:
      text =
          "ncclInvalidArgument: NCCL was given an invalid argument (a bug in bnadapt_dist: "
          "please report it); run with NCCL_DEBUG=WARN for details";
      break;
    case 5:
      text =
          "ncclInvalidUsage: NCCL was used in a way it does not allow, e.g. two ranks on "
          "one GPU or ranks calling different collectives; give every rank its own GPU, "
          "use the same bnadapt_dist and NCCL on every host, and run with NCCL_DEBUG=WARN";
      break;
    case 6:
      text =
          "ncclRemoteError: another rank failed or was killed, or the network to it broke; "
          "see that rank's log for the first error";
      break;
    case 7:
      text = "ncclInProgress: the NCCL operation had not completed";
      break;
    default:
      text = detail::concat("unknown NCCL result code ", nccl_result,
                            " (an NCCL newer than this code knows); run with NCCL_DEBUG=WARN");
      break;
  }
  if (!last_error.empty()) text += "; NCCL says: " + last_error;
  return text;
}

}  // namespace bnadapt::comm
