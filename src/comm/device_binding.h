// Which device a rank computes on and which backend combines the ranks.
//
// Pure logic: no CUDA header, no global state, every input a parameter (the caller reads
// cudaDeviceCountOrReason(), CUDA_VISIBLE_DEVICES and the flags), so that units can test
// every rule. The one collective here, checkDistinctDevices(), runs over the Communicator
// interface.
//
// Rules (--device, --backend, --allow-gpu-sharing):
//   - CUDA_VISIBLE_DEVICES leaving exactly one device (a launcher binding one GPU per rank:
//     srun --gpus-per-task=1, a wrapper script): device 0, the one this rank sees;
//     otherwise device local_rank % device_count;
//   - more ranks on a host than GPUs it shows is an error unless sharing is allowed;
//   - "cuda" without a usable GPU is an error saying why; "auto" falls back to the CPU and
//     records why;
//   - backend "auto": NCCL when the device is CUDA, not shared, and the build has NCCL,
//     else MPI; "nccl" when that is impossible is an error saying how to fix it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "comm/communicator.h"

namespace bnadapt::comm {

struct DeviceChoice {
  enum Kind { kCpu, kCuda };
  Kind kind = kCpu;
  int device = -1;      // CUDA device index as this process sees it; -1 for the CPU
  bool shared = false;  // more local ranks than GPUs, allowed by --allow-gpu-sharing
  std::string reason;   // one line for the log: why this device
};

// "cpu", "cuda:1"
std::string deviceName(const DeviceChoice& choice);

// How many devices CUDA_VISIBLE_DEVICES leaves visible, counted from the string alone:
// nullopt when unset (all devices). Entries are comma-separated indices, "GPU-<uuid>" or
// "MIG-<uuid>" (only the count matters); "" leaves none. As in the CUDA runtime, an entry
// that is not one of these (e.g. "-1") hides itself and every entry after it.
std::optional<int> visibleDeviceCount(const std::optional<std::string>& cuda_visible_devices);

// What --device asks for, and what --backend asks for; parsed once, by the option table.
enum class DeviceRequest { kAuto, kCpu, kCuda };
enum class BackendRequest { kAuto, kNccl, kMpi };
// "auto", "cpu", "cuda"
constexpr const char* deviceRequestName(DeviceRequest request) {
  return request == DeviceRequest::kCpu ? "cpu" : request == DeviceRequest::kCuda ? "cuda" : "auto";
}
// "auto", "nccl", "mpi"
constexpr const char* backendRequestName(BackendRequest request) {
  return request == BackendRequest::kNccl ? "nccl" : request == BackendRequest::kMpi ? "mpi" : "auto";
}

// device_count: cudaDeviceCountOrReason()'s answer, -1 when CUDA is unavailable, with
// unavailable_reason saying why. build_has_cuda: kBuildHasCuda.
// Throws Error(kUsage) for "cuda" without a GPU and for more local ranks than GPUs
// without allow_sharing.
DeviceChoice chooseDevice(DeviceRequest requested, int local_rank, int local_size,
                          int device_count, const std::string& unavailable_reason,
                          const std::optional<std::string>& cuda_visible_devices,
                          bool allow_sharing, bool build_has_cuda);

enum class Backend { kMpi, kNccl };

// "mpi", "nccl"
const char* backendName(Backend backend);

// device_shared: the
// DeviceChoice's `shared` (NCCL refuses two ranks on one GPU). Throws Error(kUsage) for
// "nccl" on the CPU, on a shared GPU, or in a build without NCCL, saying how to fix it.
Backend chooseBackend(BackendRequest requested, DeviceChoice::Kind device, bool build_has_nccl,
                      bool device_shared = false);

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", nvidia-smi's spelling of a device UUID.
std::string formatGpuUuid(const std::array<uint8_t, 16>& bytes);

// Collective (every rank calls it, in the same order): compares every rank's device_id
// (cudaDeviceUuid(), or "" for a rank on the CPU, which is never compared). Returns "" when
// no two ranks use the same GPU, or when allow_sharing; otherwise one line naming the
// lowest two ranks that share one and how to fix it, the same on every rank. This catches
// what the local count cannot: every rank given the same CUDA_VISIBLE_DEVICES=0.
std::string checkDistinctDevices(Communicator& comm, const std::string& device_id,
                                 bool allow_sharing);

}  // namespace bnadapt::comm
