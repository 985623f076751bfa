#include "app/placement.h"

#include <cstdint>
#include <vector>

#include <torch/cuda.h>

#include "app/agreement.h"
#include "comm/cuda_devices.h"
#include "comm/launch_check.h"
#include "common/error.h"
#include "common/log.h"
#include "common/torch_compat.h"

namespace bnadapt::app {
namespace {

// This rank's device and backend (throws for an impossible request).
Placement pickPlacement(const config::Settings& st, const comm::Communicator& comm) {
  Placement out;
  std::string reason;
  int count = -1;
  const bool torch_cuda = torch::cuda::is_available();
  if (st.device != comm::DeviceRequest::kCpu) {
    if (torch_cuda) {
      count = static_cast<int>(torch::cuda::device_count());
    } else if (comm::kBuildHasCuda) {  // a CUDA LibTorch: say why it sees no GPU
      if (comm::cudaDeviceCountOrReason(reason) >= 0 && reason.empty()) {
        reason = "LibTorch reports no usable CUDA device";
      }
    } else {
      reason = "this LibTorch has no CUDA (Debian's is CPU-only; build against a CUDA "
               "LibTorch, see README 'GPU clusters')";
    }
  }
  out.device = comm::chooseDevice(st.device, comm.localRank(), comm.localSize(), count,
                                  reason, comm::processEnv("CUDA_VISIBLE_DEVICES"),
                                  st.allow_gpu_sharing, /*build_has_cuda=*/true);
  out.backend = comm::chooseBackend(st.backend, out.device.kind, comm::kBuildHasNccl,
                                    out.device.shared);
  if (out.onGpu()) {
    out.torch_device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(out.device.device));
    if (comm::kBuildHasCuda) out.uuid = comm::cudaDeviceUuid(out.device.device);
  }
  return out;
}

// Every rank the same kind and backend (auto can differ between hosts), no GPU twice.
// Collective; returns 0 or kUsage on every rank, rank 0 logging why.
int checkSamePlacement(const config::Settings& st, comm::Communicator& comm,
                       const Placement& place) {
  std::vector<int64_t> kinds = {place.device.kind, -place.device.kind,
                                static_cast<int64_t>(place.backend),
                                -static_cast<int64_t>(place.backend)};
  comm.allreduceMax(kinds);
  if (kinds[0] != -kinds[1] || kinds[2] != -kinds[3]) {
    if (comm.rank() == 0) {
      log::error("ranks chose different devices or backends (--device ",
                 comm::deviceRequestName(st.device), ", --backend ",
                 comm::backendRequestName(st.backend), "): some hosts have a usable GPU and some do not; pass --device ",
                 "and --backend explicitly");
    }
    return static_cast<int>(ExitCode::kUsage);
  }
  const std::string shared = comm::checkDistinctDevices(
      comm, place.onGpu() ? place.uuid + "@" + comm.hostname() : "", st.allow_gpu_sharing);
  if (!shared.empty()) {
    if (comm.rank() == 0) log::error(shared);
    return static_cast<int>(ExitCode::kUsage);
  }
  return 0;
}

}  // namespace

int choosePlacement(const config::Settings& st, comm::Communicator& comm, Watchdog& watchdog,
                    Placement& out) {
  if (int code = agreedPhase(comm, &watchdog, "choosing the device",
                             [&] { out = pickPlacement(st, comm); })) {
    return code;
  }
  if (int code = checkSamePlacement(st, comm, out)) return code;
  log::info("local rank ", comm.localRank(), "/", comm.localSize(), ": ",
            comm::deviceName(out.device), out.uuid.empty() ? "" : " " + out.uuid, " (",
            out.device.reason, "), backend ", comm::backendName(out.backend));
  return 0;
}

}  // namespace bnadapt::app
