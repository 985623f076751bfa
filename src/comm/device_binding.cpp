#include "comm/device_binding.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/hash.h"

namespace bnadapt::comm {
namespace {

constexpr const char* kSharingFix =
    "start at most one rank per GPU on each host, give each rank its own GPU "
    "(one CUDA_VISIBLE_DEVICES entry per rank, or srun --gpus-per-task=1), or pass "
    "--allow-gpu-sharing to let ranks share GPUs (then with --backend mpi: NCCL cannot put "
    "two ranks on one GPU)";

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return {};
  const auto last = s.find_last_not_of(" \t");
  return s.substr(first, last - first + 1);
}

bool isIndex(const std::string& s) {
  return !s.empty() && s.size() <= 9 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool startsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// A device entry as the CUDA runtime accepts one: an index, a GPU UUID or a MIG id.
bool isDeviceEntry(const std::string& entry) {
  return isIndex(entry) || (startsWith(entry, "GPU-") && entry.size() > 4) ||
         (startsWith(entry, "MIG-") && entry.size() > 4);
}

std::string describeVisible(const std::optional<std::string>& cuda_visible_devices) {
  if (!cuda_visible_devices) return {};
  return detail::concat(" (CUDA_VISIBLE_DEVICES='", *cuda_visible_devices, "')");
}

}  // namespace

std::string deviceName(const DeviceChoice& choice) {
  if (choice.kind == DeviceChoice::kCpu) return "cpu";
  return detail::concat("cuda:", choice.device);
}

std::optional<int> visibleDeviceCount(const std::optional<std::string>& cuda_visible_devices) {
  if (!cuda_visible_devices) return std::nullopt;
  const std::string& list = *cuda_visible_devices;
  int count = 0;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    const std::string entry = trim(list.substr(start, comma - start));
    if (!isDeviceEntry(entry)) break;  // "", "-1", garbage: hides the rest, as CUDA does
    ++count;
    start = comma + 1;
  }
  return count;
}

DeviceChoice chooseDevice(DeviceRequest requested, int local_rank, int local_size,
                          int device_count, const std::string& unavailable_reason,
                          const std::optional<std::string>& cuda_visible_devices,
                          bool allow_sharing, bool build_has_cuda) {
  BNA_ASSERT(local_rank >= 0 && local_rank < local_size, "local rank ", local_rank, " of ",
             local_size);
  DeviceChoice choice;
  if (requested == DeviceRequest::kCpu) {
    choice.reason = "--device cpu";
    return choice;
  }

  // Why there is no GPU to use, or "" when there is one.
  std::string no_gpu;
  if (!build_has_cuda) {
    no_gpu = "this build has no CUDA (configure with -DBNADAPT_WITH_NCCL=ON)";
  } else if (device_count < 0) {
    no_gpu = detail::concat("CUDA unavailable: ",
                            unavailable_reason.empty() ? "no reason given" : unavailable_reason);
  } else if (device_count == 0) {
    no_gpu = detail::concat("no CUDA device is visible", describeVisible(cuda_visible_devices));
  }
  if (!no_gpu.empty()) {
    BNA_CHECK(requested != DeviceRequest::kCuda, ExitCode::kUsage, "--device cuda: ", no_gpu,
              "; use --device cpu (or auto) to run on the CPU");
    choice.reason = detail::concat("--device auto: running on the CPU: ", no_gpu);
    return choice;
  }

  choice.kind = DeviceChoice::kCuda;
  const std::optional<int> visible = visibleDeviceCount(cuda_visible_devices);
  if (visible && *visible == 1 && device_count == 1) {
    // The launcher (or a wrapper) gave this rank one GPU of its own: it is device 0 here.
    // Two ranks given the same one are caught by checkDistinctDevices().
    choice.device = 0;
    choice.reason = detail::concat("CUDA_VISIBLE_DEVICES='", *cuda_visible_devices,
                                   "' leaves this rank one GPU: cuda:0");
    return choice;
  }
  choice.device = local_rank % device_count;
  if (local_size > device_count) {
    BNA_CHECK(allow_sharing, ExitCode::kUsage, local_size, " local ranks on this host but only ",
              device_count, " GPU", device_count == 1 ? "" : "s", " visible",
              describeVisible(cuda_visible_devices), ": ranks would share GPUs; ", kSharingFix);
    choice.shared = true;
  }
  choice.reason =
      detail::concat("local rank ", local_rank, " of ", local_size, " on GPU ", choice.device,
                     " of ", device_count, choice.shared ? " (shared: --allow-gpu-sharing)" : "");
  return choice;
}

const char* backendName(Backend backend) { return backend == Backend::kNccl ? "nccl" : "mpi"; }

Backend chooseBackend(BackendRequest requested, DeviceChoice::Kind device, bool build_has_nccl,
                      bool device_shared) {
  if (requested == BackendRequest::kMpi) return Backend::kMpi;
  if (requested == BackendRequest::kAuto) {
    return device == DeviceChoice::kCuda && build_has_nccl && !device_shared ? Backend::kNccl
                                                                             : Backend::kMpi;
  }
  BNA_CHECK(build_has_nccl, ExitCode::kUsage,
            "--backend nccl: this build has no NCCL; rebuild with -DBNADAPT_WITH_NCCL=ON "
            "(needs the CUDA toolkit and NCCL), or use --backend mpi");
  BNA_CHECK(device == DeviceChoice::kCuda, ExitCode::kUsage,
            "--backend nccl needs --device cuda (NCCL reduces GPU buffers; this rank runs on "
            "the CPU); pass --device cuda, or use --backend mpi");
  BNA_CHECK(!device_shared, ExitCode::kUsage,
            "--backend nccl cannot run with --allow-gpu-sharing: NCCL refuses two ranks on one "
            "GPU; use --backend mpi, or start at most one rank per GPU");
  return Backend::kNccl;
}

std::string formatGpuUuid(const std::array<uint8_t, 16>& b) {
  char text[64];
  std::snprintf(text, sizeof(text),
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return text;
}

std::string checkDistinctDevices(Communicator& comm, const std::string& device_id,
                                 bool allow_sharing) {
  // All-gather of one 64-bit hash per rank: slot r holds rank r's, the others the minimum.
  constexpr int64_t kNone = std::numeric_limits<int64_t>::min();
  std::vector<int64_t> ids(static_cast<size_t>(comm.size()), kNone);
  if (!device_id.empty()) {
    Fnv1a h;
    h.update(device_id.data(), device_id.size());
    int64_t id = static_cast<int64_t>(h.digest());
    if (id == kNone) id = kNone + 1;
    ids[static_cast<size_t>(comm.rank())] = id;
  }
  comm.allreduceMax(ids);
  if (allow_sharing) return {};

  // Every rank sees the same vector, so every rank finds the same pair.
  std::vector<std::pair<int64_t, int>> by_id;
  for (int r = 0; r < comm.size(); ++r) {
    if (ids[static_cast<size_t>(r)] != kNone) by_id.emplace_back(ids[static_cast<size_t>(r)], r);
  }
  std::sort(by_id.begin(), by_id.end());
  int first = -1, second = -1, sharing = 0;
  for (size_t i = 0; i < by_id.size();) {
    size_t j = i;
    while (j < by_id.size() && by_id[j].first == by_id[i].first) ++j;
    if (j - i > 1) {
      sharing += static_cast<int>(j - i);
      if (first < 0 || by_id[i].second < first) {
        first = by_id[i].second;
        second = by_id[i + 1].second;
      }
    }
    i = j;
  }
  if (first < 0) return {};
  std::string name = comm.rank() == first ? device_id : std::string();
  comm.broadcast(name, first);
  return detail::concat("ranks ", first, " and ", second, " use the same GPU ", name, " (", sharing,
                        " ranks share GPUs in all); ", kSharingFix);
}

}  // namespace bnadapt::comm
