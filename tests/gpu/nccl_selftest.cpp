// bnadapt_nccl_selftest: NcclCommunicator across MPI processes, one GPU per rank (built with
// -DBNADAPT_WITH_NCCL=ON; run by launch/gpu_selftest.sh and `ctest -L gpu`).
//
//   mpirun -np N bnadapt_nccl_selftest
//       sums, maxima, device buffers and agree() through NCCL, checked exactly; a latency
//       line. Exit 0 when every rank passed, 1 otherwise.
//   BNADAPT_NCCL_SELFTEST_FAULT=stall mpirun -np N bnadapt_nccl_selftest
//       rank 0's stream is blocked (a host function sleeping 3x the timeout) before an
//       all-reduce: every rank must give up at the timeout, abort NCCL and end the job
//       through MPI_Abort with exit code 8 (the tool's timeout code).
//   BNADAPT_NCCL_SELFTEST_FAULT=missing mpirun -np N bnadapt_nccl_selftest   (N >= 2)
//       the last rank never calls the all-reduce: the others must time out the same way.
// BNADAPT_NCCL_SELFTEST_TIMEOUT: seconds per wait (default 60; 3 in the fault runs).
// Exit 77 (skipped) when a rank sees no GPU, 2 when the ranks cannot each have their own.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "comm/cuda_check.h"
#include "comm/cuda_devices.h"
#include "comm/device_binding.h"
#include "comm/launch_check.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "common/error.h"

namespace bnadapt::comm {
namespace {

std::string g_prefix = "[nccl_selftest]";

template <typename... Args>
void say(Args&&... args) {
  const std::string line = g_prefix + " " + detail::concat(std::forward<Args>(args)...) + "\n";
  std::fputs(line.c_str(), stdout);
  std::fflush(stdout);
}

// Failures of this rank, one line each.
std::vector<std::string> g_failures;

template <typename... Args>
void check(bool ok, Args&&... args) {
  if (!ok) g_failures.push_back(detail::concat(std::forward<Args>(args)...));
}

void checkSums(NcclCommunicator& nccl) {
  const int r = nccl.rank(), world = nccl.size();
  for (size_t n : {size_t{5}, size_t{(1u << 22) + 3}, size_t{7}}) {  // grows, then reuses
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i)
      v[i] = 0.25 * static_cast<double>(i % 4096) + r + std::ldexp(r, -20);
    nccl.allreduceSum(v);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      double expected = 0;
      for (int k = 0; k < world; ++k)
        expected += 0.25 * static_cast<double>(i % 4096) + k + std::ldexp(k, -20);
      if (v[i] != expected) ++bad;  // exact in any order: every partial sum is representable
    }
    check(bad == 0, "sum of ", n, " float64: ", bad, " wrong elements");
  }
}

void checkMax(NcclCommunicator& nccl) {
  const int64_t r = nccl.rank(), top = nccl.size() - 1;
  std::vector<int64_t> m{r, -r, int64_t{1} << 62, (int64_t{1} << 40) * r - 7,
                         std::numeric_limits<int64_t>::min() + r};
  nccl.allreduceMax(m);
  const std::vector<int64_t> expected{top, 0, int64_t{1} << 62, (int64_t{1} << 40) * top - 7,
                                      std::numeric_limits<int64_t>::min() + top};
  check(m == expected, "max of int64 differs");
  std::vector<int64_t> empty;
  nccl.allreduceMax(empty);
}

void checkDevice(NcclCommunicator& nccl) {
  const int r = nccl.rank(), world = nccl.size();
  const size_t n = 100000;
  std::vector<double> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<double>(i) * (r + 1);
  void* raw = nullptr;
  CUDA_CHECK(cudaMalloc(&raw, n * sizeof(double)));
  double* dev = static_cast<double*>(raw);
  CUDA_CHECK(cudaMemcpy(dev, host.data(), n * sizeof(double), cudaMemcpyHostToDevice));
  nccl.allreduceSumDevice(dev, n);
  CUDA_CHECK(cudaMemcpy(host.data(), dev, n * sizeof(double), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(dev));
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += host[i] != static_cast<double>(i) * world * (world + 1) / 2;
  check(bad == 0, "device sum: ", bad, " wrong elements");
}

void checkAgree(NcclCommunicator& nccl) {
  const int world = nccl.size();
  check(agree(nccl, 0, "").code == 0, "agree(all ok) reported a failure");
  const AgreedStatus s = agree(nccl, nccl.rank() == world - 1 ? 5 : 0, "last rank's reason");
  check(s.code == 5 && s.failed_rank == world - 1 && s.message == "last rank's reason",
        "agree(last rank fails) gave code ", s.code, " rank ", s.failed_rank, " '", s.message, "'");
}

void timeSmallAllreduce(NcclCommunicator& nccl) {
  std::vector<double> v(4096, 1.0);  // about a ResNet-50's statistics buffer (32 KiB)
  for (int i = 0; i < 10; ++i) nccl.allreduceSum(v);
  const int iters = 200;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) nccl.allreduceSum(v);
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      iters;
  if (nccl.rank() == 0) say("all-reduce of 4096 float64 from host memory: ", us, " us per call");
}

void CUDART_CB sleepOnStream(void* seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(*static_cast<double*>(seconds)));
}

// Every rank: an all-reduce that cannot finish. Ends the job (abortJob) with the error's code.
[[noreturn]] void runFault(MpiCommunicator& world, NcclCommunicator& nccl, const std::string& fault,
                           double timeout) {
  static double stall_seconds = 3 * timeout;
  std::vector<double> v(1000, 1.0);
  if (fault == "stall" && world.rank() == 0) {
    CUDA_CHECK(cudaLaunchHostFunc(nccl.stream(), sleepOnStream, &stall_seconds));
  }
  if (fault == "missing" && world.rank() == world.size() - 1) {
    say("fault 'missing': this rank skips the all-reduce");
    std::this_thread::sleep_for(std::chrono::duration<double>(stall_seconds));
    say("FAIL: nobody ended the job while this rank was missing");
    world.abortJob(1);
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    nccl.allreduceSum(v);
  } catch (const Error& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    say("fault '", fault, "': expected error after ", s, " s (exit code ",
        static_cast<int>(e.code()), "): ", e.what());
    if (nccl.usable()) say("FAIL: the NCCL communicator is still usable after the error");
    world.abortJob(static_cast<int>(e.code()));
  }
  say("FAIL: fault '", fault, "': the all-reduce returned");
  world.abortJob(1);
}

int selftest(MpiCommunicator& world) {
  g_prefix = detail::concat("[nccl_selftest ", world.hostname(), " r", world.rank(), "/",
                            world.size(), "]");
  std::string reason;
  const int count = cudaDeviceCountOrReason(reason);
  std::vector<int64_t> no_gpu{count < 0 ? 1 : 0};
  world.allreduceMax(no_gpu);
  if (no_gpu[0] != 0) {
    if (count < 0) say("SKIP: no GPU: ", reason);
    return 77;
  }

  const char* timeout_env = std::getenv("BNADAPT_NCCL_SELFTEST_TIMEOUT");
  const char* fault_env = std::getenv("BNADAPT_NCCL_SELFTEST_FAULT");
  const std::string fault = fault_env ? fault_env : "";
  const double timeout = timeout_env ? std::atof(timeout_env) : fault.empty() ? 60.0 : 3.0;
  if (fault == "missing" && world.size() < 2) {
    if (world.rank() == 0) say("SKIP: fault 'missing' needs 2 ranks or more");
    return 77;
  }
  if (!fault.empty() && fault != "stall" && fault != "missing") {
    if (world.rank() == 0)
      say("unknown BNADAPT_NCCL_SELFTEST_FAULT '", fault, "': stall or missing");
    return 2;
  }

  // The tool's device choice, then no two ranks on one GPU.
  int code = 0;
  std::string message;
  DeviceChoice device;
  try {
    device = chooseDevice(DeviceRequest::kCuda, world.localRank(), world.localSize(), count, reason,
                          processEnv("CUDA_VISIBLE_DEVICES"), false, kBuildHasCuda);
  } catch (const Error& e) {
    code = 2;
    message = e.what();
  }
  const AgreedStatus chosen = agree(world, code, message);
  if (chosen.code != 0) {
    if (world.rank() == 0)
      say("cannot give each rank a GPU: rank ", chosen.failed_rank, ": ", chosen.message);
    return 2;
  }
  const std::string uuid = cudaDeviceUuid(device.device);
  say(deviceName(device), " ", uuid, " (", device.reason, ")");
  if (const std::string shared = checkDistinctDevices(world, uuid, false); !shared.empty()) {
    if (world.rank() == 0) say(shared);
    return 2;
  }

  NcclCommunicator nccl(world, device.device, timeout);
  if (!fault.empty()) runFault(world, nccl, fault, timeout);

  checkSums(nccl);
  checkMax(nccl);
  checkDevice(nccl);
  checkAgree(nccl);
  timeSmallAllreduce(nccl);
  nccl.destroy();
  for (const auto& f : g_failures) say("FAIL: ", f);
  std::vector<int64_t> failed{g_failures.empty() ? 0 : 1};
  world.allreduceMax(failed);
  if (world.rank() == 0) {
    say(failed[0] ? "FAILED" : "PASSED", ": NCCL sum/max/device/agree on ", world.size(),
        " rank(s), timeout ", timeout, " s");
  }
  return failed[0] ? 1 : 0;
}

}  // namespace
}  // namespace bnadapt::comm

int main(int argc, char** argv) {
  try {
    bnadapt::comm::MpiEnvironment mpi(&argc, &argv);
    bnadapt::comm::MpiCommunicator world;
    try {
      return bnadapt::comm::selftest(world);
    } catch (const bnadapt::Error& e) {  // a collective failed: the others cannot be told
      std::fprintf(stderr, "%s error: %s\n", bnadapt::comm::g_prefix.c_str(), e.what());
      world.abortJob(static_cast<int>(e.code()));
    }
  } catch (const bnadapt::Error& e) {
    std::fprintf(stderr, "nccl_selftest: MPI could not start: %s\n", e.what());
    return static_cast<int>(e.code());
  }
}
