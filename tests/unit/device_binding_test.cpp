#include "comm/device_binding.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "comm/cuda_devices.h"
#include "comm/thread_communicator.h"
#include "common/error.h"

namespace bnadapt::comm {
namespace {

using Env = std::optional<std::string>;
const Env kUnset = std::nullopt;

// Runs fn and returns the Error it throws (fails the test when it throws none).
template <typename Fn>
Error errorOf(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no Error thrown";
  return Error(ExitCode::kOk, "");
}

void expectContains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

TEST(VisibleDevices, CountsEntries) {
  EXPECT_EQ(visibleDeviceCount(kUnset), std::nullopt);
  EXPECT_EQ(visibleDeviceCount(Env("")), 0);
  EXPECT_EQ(visibleDeviceCount(Env("0")), 1);
  EXPECT_EQ(visibleDeviceCount(Env("3")), 1);
  EXPECT_EQ(visibleDeviceCount(Env("0,1,2,3")), 4);
  EXPECT_EQ(visibleDeviceCount(Env(" 0 , 1 ")), 2);
  EXPECT_EQ(visibleDeviceCount(Env("GPU-8f3b2c1e-5d2a-4e7b-9c1d-0a1b2c3d4e5f")), 1);
  EXPECT_EQ(visibleDeviceCount(Env("GPU-8f3b2c1e-5d2a-4e7b-9c1d-0a1b2c3d4e5f,"
                                   "GPU-11111111-2222-3333-4444-555555555555")),
            2);
  EXPECT_EQ(visibleDeviceCount(Env("MIG-GPU-8f3b2c1e-5d2a-4e7b-9c1d-0a1b2c3d4e5f/1/0")), 1);
  EXPECT_EQ(visibleDeviceCount(Env("MIG-4f1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff,1")), 2);
}

TEST(VisibleDevices, AnInvalidEntryHidesTheRest) {
  // CUDA's rule: only the devices before an invalid index are visible.
  EXPECT_EQ(visibleDeviceCount(Env("-1")), 0);
  EXPECT_EQ(visibleDeviceCount(Env("0,2,-1,1")), 2);
  EXPECT_EQ(visibleDeviceCount(Env("0,,1")), 1);
  EXPECT_EQ(visibleDeviceCount(Env("0,1,")), 2);
  EXPECT_EQ(visibleDeviceCount(Env("none")), 0);
  EXPECT_EQ(visibleDeviceCount(Env("GPU-")), 0);
}

struct DeviceCase {
  int local_rank, local_size, device_count;
  Env visible;
  int expected_device;
};

TEST(ChooseDevice, DeviceTable) {
  const std::vector<DeviceCase> cases = {
      {0, 1, 1, kUnset, 0},
      {0, 2, 2, kUnset, 0},
      {1, 2, 2, kUnset, 1},
      {3, 4, 8, kUnset, 3},  // fewer ranks than GPUs: the first ones
      {5, 8, 8, kUnset, 5},
      {1, 2, 2, Env("2,3"), 1},  // two visible: index among them
      {0, 4, 1, Env("2"), 0},    // one visible per rank (a launcher's binding): device 0
      {3, 4, 1, Env("3"), 0},
      {1, 2, 1, Env("GPU-8f3b2c1e-5d2a-4e7b-9c1d-0a1b2c3d4e5f"), 0},
      {1, 2, 1, Env("MIG-4f1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff"), 0},
      {2, 3, 4, Env("GPU-a,GPU-b,GPU-c,GPU-d"), 2},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "local rank " << c.local_rank << " of " << c.local_size
                                      << ", " << c.device_count << " GPUs, CUDA_VISIBLE_DEVICES="
                                      << c.visible.value_or("<unset>"));
    for (const DeviceRequest requested : {DeviceRequest::kCuda, DeviceRequest::kAuto}) {
      const DeviceChoice d = chooseDevice(requested, c.local_rank, c.local_size, c.device_count, "",
                                          c.visible, false, true);
      EXPECT_EQ(d.kind, DeviceChoice::kCuda);
      EXPECT_EQ(d.device, c.expected_device);
      EXPECT_FALSE(d.shared);
      EXPECT_FALSE(d.reason.empty());
      EXPECT_EQ(deviceName(d), "cuda:" + std::to_string(c.expected_device));
    }
  }
}

TEST(ChooseDevice, CpuRequestedIgnoresGpus) {
  const DeviceChoice d = chooseDevice(DeviceRequest::kCpu, 0, 2, 2, "", kUnset, false, true);
  EXPECT_EQ(d.kind, DeviceChoice::kCpu);
  EXPECT_EQ(d.device, -1);
  EXPECT_EQ(deviceName(d), "cpu");
  // Even with more ranks than GPUs: no GPU is used, nothing is shared.
  EXPECT_EQ(chooseDevice(DeviceRequest::kCpu, 3, 4, 1, "", kUnset, false, true).kind, DeviceChoice::kCpu);
}

TEST(ChooseDevice, MoreLocalRanksThanGpusIsAnError) {
  const Error e = errorOf([] { chooseDevice(DeviceRequest::kCuda, 2, 4, 2, "", kUnset, false, true); });
  EXPECT_EQ(e.code(), ExitCode::kUsage);
  const std::string msg = e.what();
  expectContains(msg, "4 local ranks");
  expectContains(msg, "only 2 GPUs visible");
  expectContains(msg, "--allow-gpu-sharing");
  expectContains(msg, "--backend mpi");
  // The same for auto: a GPU machine with too many ranks is a mistake, not a CPU run.
  EXPECT_EQ(errorOf([] { chooseDevice(DeviceRequest::kAuto, 0, 3, 1, "", kUnset, false, true); }).code(),
            ExitCode::kUsage);
  const std::string one =
      errorOf([] { chooseDevice(DeviceRequest::kCuda, 0, 3, 2, "", Env("0,1"), false, true); }).what();
  expectContains(one,
                 "3 local ranks on this host but only 2 GPUs visible (CUDA_VISIBLE_DEVICES='0,1')");
  const std::string single =
      errorOf([] { chooseDevice(DeviceRequest::kCuda, 0, 2, 1, "", kUnset, false, true); }).what();
  expectContains(single, "only 1 GPU visible");
}

TEST(ChooseDevice, SharingAllowed) {
  const DeviceChoice d = chooseDevice(DeviceRequest::kCuda, 3, 4, 2, "", kUnset, true, true);
  EXPECT_EQ(d.kind, DeviceChoice::kCuda);
  EXPECT_EQ(d.device, 1);
  EXPECT_TRUE(d.shared);
  expectContains(d.reason, "shared");
  EXPECT_EQ(chooseDevice(DeviceRequest::kAuto, 2, 4, 2, "", kUnset, true, true).device, 0);
}

TEST(ChooseDevice, CudaWithoutGpuIsAnErrorSayingWhy) {
  const std::string driver = "CUDA driver version is insufficient for CUDA runtime version";
  Error e = errorOf([&] { chooseDevice(DeviceRequest::kCuda, 0, 1, -1, driver, kUnset, false, true); });
  EXPECT_EQ(e.code(), ExitCode::kUsage);
  expectContains(e.what(), "--device cuda: CUDA unavailable: " + driver);
  expectContains(e.what(), "--device cpu");

  e = errorOf([] { chooseDevice(DeviceRequest::kCuda, 0, 1, 0, "", Env(""), false, true); });
  expectContains(e.what(), "no CUDA device is visible (CUDA_VISIBLE_DEVICES='')");

  e = errorOf([] { chooseDevice(DeviceRequest::kCuda, 0, 1, 2, "", kUnset, false, false); });
  expectContains(e.what(), "this build has no CUDA (configure with -DBNADAPT_WITH_NCCL=ON)");

  e = errorOf([] { chooseDevice(DeviceRequest::kCuda, 0, 1, -1, "", kUnset, false, true); });
  expectContains(e.what(), "CUDA unavailable: no reason given");
}

TEST(ChooseDevice, AutoFallsBackToCpuWithTheReason) {
  const std::string driver = "CUDA driver version is insufficient for CUDA runtime version";
  DeviceChoice d = chooseDevice(DeviceRequest::kAuto, 0, 2, -1, driver, kUnset, false, true);
  EXPECT_EQ(d.kind, DeviceChoice::kCpu);
  EXPECT_EQ(d.device, -1);
  expectContains(d.reason, "CUDA unavailable: " + driver);

  d = chooseDevice(DeviceRequest::kAuto, 0, 2, 0, "", Env(""), false, true);
  EXPECT_EQ(d.kind, DeviceChoice::kCpu);
  expectContains(d.reason, "CUDA_VISIBLE_DEVICES=''");

  d = chooseDevice(DeviceRequest::kAuto, 0, 1, 4, "", kUnset, false, false);  // GPUs, but no CUDA built in
  EXPECT_EQ(d.kind, DeviceChoice::kCpu);
  expectContains(d.reason, "this build has no CUDA");

  // Many ranks and no GPU: the CPU, no sharing error.
  EXPECT_EQ(chooseDevice(DeviceRequest::kAuto, 7, 8, -1, "x", kUnset, false, true).kind, DeviceChoice::kCpu);
}

TEST(ChooseDevice, ThisBuildsOwnAnswer) {
  // Whatever the machine: a consistent pair that chooseDevice accepts for auto.
  std::string reason;
  const int count = cudaDeviceCountOrReason(reason);
  if (count < 0) {
    EXPECT_FALSE(reason.empty());
  } else {
    EXPECT_TRUE(kBuildHasCuda);
    EXPECT_GT(count, 0);
  }
  if (!kBuildHasCuda) {
    EXPECT_EQ(count, -1);
    expectContains(reason, "-DBNADAPT_WITH_NCCL=ON");
  }
  const DeviceChoice d = chooseDevice(DeviceRequest::kAuto, 0, 1, count, reason, kUnset, false, kBuildHasCuda);
  EXPECT_EQ(d.kind == DeviceChoice::kCuda, count > 0);
}

struct BackendCase {
  BackendRequest requested;
  DeviceChoice::Kind device;
  bool has_nccl;
  bool shared;
  Backend expected;
};

TEST(ChooseBackend, BackendTable) {
  const auto cpu = DeviceChoice::kCpu;
  const auto cuda = DeviceChoice::kCuda;
  const auto kAuto = BackendRequest::kAuto, kMpi = BackendRequest::kMpi;
  const auto kNccl = BackendRequest::kNccl;
  const std::vector<BackendCase> cases = {
      {kAuto, cpu, false, false, Backend::kMpi},  {kAuto, cpu, true, false, Backend::kMpi},
      {kAuto, cuda, false, false, Backend::kMpi}, {kAuto, cuda, true, false, Backend::kNccl},
      {kAuto, cuda, true, true, Backend::kMpi},   {kMpi, cpu, false, false, Backend::kMpi},
      {kMpi, cuda, true, false, Backend::kMpi},   {kMpi, cuda, true, true, Backend::kMpi},
      {kNccl, cuda, true, false, Backend::kNccl},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << static_cast<int>(c.requested) << " device=" << c.device
                                      << " nccl=" << c.has_nccl << " shared=" << c.shared);
    EXPECT_EQ(chooseBackend(c.requested, c.device, c.has_nccl, c.shared), c.expected);
  }
  EXPECT_STREQ(backendName(Backend::kMpi), "mpi");
  EXPECT_STREQ(backendName(Backend::kNccl), "nccl");
}

TEST(ChooseBackend, ImpossibleNcclSaysHowToFixIt) {
  Error e = errorOf([] { chooseBackend(BackendRequest::kNccl, DeviceChoice::kCuda, false); });
  EXPECT_EQ(e.code(), ExitCode::kUsage);
  expectContains(e.what(), "rebuild with -DBNADAPT_WITH_NCCL=ON");
  expectContains(e.what(), "--backend mpi");

  e = errorOf([] { chooseBackend(BackendRequest::kNccl, DeviceChoice::kCpu, true); });
  EXPECT_EQ(e.code(), ExitCode::kUsage);
  expectContains(e.what(), "--backend nccl needs --device cuda");

  // A CPU-only build asked for NCCL on the CPU: the build is the first thing to fix.
  e = errorOf([] { chooseBackend(BackendRequest::kNccl, DeviceChoice::kCpu, false); });
  expectContains(e.what(), "-DBNADAPT_WITH_NCCL=ON");

  e = errorOf([] { chooseBackend(BackendRequest::kNccl, DeviceChoice::kCuda, true, true); });
  expectContains(e.what(), "--allow-gpu-sharing");
  expectContains(e.what(), "--backend mpi");
}

TEST(GpuUuid, FormatsAsNvidiaSmi) {
  const std::array<uint8_t, 16> bytes{0x8f, 0x3b, 0x2c, 0x1e, 0x5d, 0x2a, 0x4e, 0x7b,
                                      0x9c, 0x1d, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f};
  EXPECT_EQ(formatGpuUuid(bytes), "GPU-8f3b2c1e-5d2a-4e7b-9c1d-0a1b2c3d4e5f");
  EXPECT_EQ(formatGpuUuid({}), "GPU-00000000-0000-0000-0000-000000000000");
}

// Runs fn(comm) on one thread per entry of `ids`, rank r passing ids[r]; returns each
// rank's answer.
std::vector<std::string> distinct(const std::vector<std::string>& ids, bool allow) {
  auto group = std::make_shared<ThreadGroup>(static_cast<int>(ids.size()));
  std::vector<std::string> out(ids.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < ids.size(); ++r) {
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, static_cast<int>(r));
      out[r] = checkDistinctDevices(comm, ids[r], allow);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST(CheckDistinctDevices, DistinctGpusPass) {
  for (const auto& msg : distinct({"GPU-a", "GPU-b", "GPU-c"}, false)) EXPECT_EQ(msg, "");
  for (const auto& msg : distinct({"GPU-a"}, false)) EXPECT_EQ(msg, "");
  // Ranks on the CPU are never compared.
  for (const auto& msg : distinct({"", "", "GPU-a"}, false)) EXPECT_EQ(msg, "");
}

TEST(CheckDistinctDevices, SharedGpuNamesTheRanksOnEveryRank) {
  // Every rank exported CUDA_VISIBLE_DEVICES=0 on one host: each sees "device 0".
  const auto msgs = distinct({"GPU-x", "GPU-a", "GPU-b", "GPU-a", "GPU-x"}, false);
  for (const auto& msg : msgs) {
    EXPECT_EQ(msg, msgs[0]);
    expectContains(msg, "ranks 0 and 4 use the same GPU GPU-x (4 ranks share GPUs in all)");
    expectContains(msg, "--allow-gpu-sharing");
  }
  for (const auto& msg : distinct({"GPU-x", "GPU-x"}, true)) EXPECT_EQ(msg, "");
}

}  // namespace
}  // namespace bnadapt::comm
