// The CUDA/NCCL layer (compiled with -DBNADAPT_WITH_NCCL=ON). No MPI here: the bootstrap is a
// ThreadCommunicator, ranks are threads of this process, one GPU each. Tests that need a GPU
// skip, saying why, where there is none. NCCL across MPI processes is tested by
// tests/gpu/nccl_selftest.cpp (launch/gpu_selftest.sh, ctest -L gpu).
#include <gtest/gtest.h>

#include "comm/cuda_devices.h"

#if BNADAPT_WITH_NCCL

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <regex>
#include <thread>
#include <vector>

#include "comm/cuda_check.h"
#include "comm/nccl_communicator.h"
#include "comm/nccl_errors.h"
#include "comm/thread_communicator.h"

namespace bnadapt::comm {
namespace {

// nccl_errors.cpp works without nccl.h: its numbers must be nccl.h's.
static_assert(ncclSuccess == 0 && ncclUnhandledCudaError == 1 && ncclSystemError == 2 &&
                  ncclInternalError == 3 && ncclInvalidArgument == 4 && ncclInvalidUsage == 5 &&
                  ncclRemoteError == 6 && ncclInProgress == 7 && ncclNumResults == 8,
              "ncclResult_t changed: update nccl_errors.cpp");

void expectContains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

// The number of GPUs, or skips the test with CUDA's reason when there are fewer than `need`.
#define REQUIRE_GPUS(need)                                                          \
  do {                                                                              \
    std::string reason_;                                                            \
    const int count_ = cudaDeviceCountOrReason(reason_);                            \
    if (count_ < 0) GTEST_SKIP() << "no GPU: " << reason_;                          \
    if (count_ < (need))                                                            \
      GTEST_SKIP() << "needs " << (need) << " GPUs, this machine shows " << count_; \
  } while (0)

// Runs fn(comm, rank) on `world` threads, rank r on GPU r, over a ThreadCommunicator.
template <typename Fn>
void runWorld(int world, Fn fn) {
  auto group = std::make_shared<ThreadGroup>(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      fn(comm, r);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(CudaCheck, ErrorsBecomeCommunicationErrors) {
  // Needs no GPU: the runtime names its errors without a driver.
  try {
    CUDA_CHECK(cudaErrorInvalidValue);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCommunication);
    expectContains(e.what(), "cudaErrorInvalidValue failed: ");
    expectContains(e.what(), cudaGetErrorString(cudaErrorInvalidValue));
    expectContains(e.what(), "(cudaErrorInvalidValue) at nccl_communicator_test.cpp:");
  }
  EXPECT_NO_THROW(CUDA_CHECK(cudaSuccess));
}

TEST(CudaDevices, CountOrReasonNeverThrows) {
  std::string reason;
  const int count = cudaDeviceCountOrReason(reason);
  if (count < 0) {
    EXPECT_FALSE(reason.empty());
    std::printf("no GPU here: %s\n", reason.c_str());
  } else {
    EXPECT_GT(count, 0);
    EXPECT_TRUE(reason.empty()) << reason;
  }
  EXPECT_TRUE(kBuildHasCuda);
  EXPECT_TRUE(kBuildHasNccl);
}

TEST(NcclErrorMessage, AgreesWithNccl) {
  for (int code = 0; code < ncclNumResults; ++code) {
    const std::string ours = ncclErrorMessage(code, "");
    EXPECT_EQ(ours.find("unknown"), std::string::npos) << code << ": " << ours;
    EXPECT_NE(ncclGetErrorString(static_cast<ncclResult_t>(code)), nullptr);
  }
}

TEST(NcclCommunicator, SetUpWithoutGpuFailsTheSameOnEveryRank) {
  std::string reason;
  if (cudaDeviceCountOrReason(reason) > 0) GTEST_SKIP() << "this machine has a GPU";
  std::vector<std::string> errors(2);
  runWorld(2, [&](Communicator& comm, int r) {
    try {
      NcclCommunicator nccl(comm, 0, 5.0);
      ADD_FAILURE() << "rank " << r << " built an NCCL communicator without a GPU";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kCommunication);
      errors[static_cast<size_t>(r)] = e.what();
    }
  });
  EXPECT_EQ(errors[0], errors[1]);
  expectContains(errors[0], "NCCL set-up failed on rank 0: cudaGetDeviceCount(&count) failed: ");
}

TEST(CudaDevices, UuidLooksLikeNvidiaSmis) {
  REQUIRE_GPUS(1);
  const std::string uuid = cudaDeviceUuid(0);
  EXPECT_TRUE(std::regex_match(
      uuid, std::regex("GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")))
      << uuid;
}

// The collectives of one rank of `world`, checked against their exact results.
void checkCollectives(NcclCommunicator& nccl, int world) {
  const int r = nccl.rank();
  // Small, then large (several NCCL chunks), then small again (buffers reused).
  for (size_t n : {size_t{5}, size_t{(1u << 20) + 3}, size_t{7}}) {
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i)
      v[i] = 0.25 * static_cast<double>(i % 4096) + r + std::ldexp(r, -20);
    nccl.allreduceSum(v);
    for (size_t i = 0; i < n; i += 1 + n / 97) {
      double expected = 0;
      for (int k = 0; k < world; ++k) {
        expected += 0.25 * static_cast<double>(i % 4096) + k + std::ldexp(k, -20);
      }
      ASSERT_EQ(v[i], expected) << "element " << i << " of " << n;
    }
  }
  std::vector<int64_t> m{r, -r, int64_t{1} << 50, (int64_t{1} << 40) * r - 7,
                         std::numeric_limits<int64_t>::min() + r};
  nccl.allreduceMax(m);
  const int64_t top = world - 1;
  EXPECT_EQ(m, (std::vector<int64_t>{top, 0, int64_t{1} << 50, (int64_t{1} << 40) * top - 7,
                                     std::numeric_limits<int64_t>::min() + top}));
  std::vector<double> empty;
  nccl.allreduceSum(empty);
  EXPECT_TRUE(empty.empty());

  // On the device.
  const size_t n = 1000;
  std::vector<double> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<double>(i * (r + 1));
  void* raw = nullptr;
  CUDA_CHECK(cudaMalloc(&raw, n * sizeof(double)));
  double* dev = static_cast<double*>(raw);
  CUDA_CHECK(cudaMemcpy(dev, host.data(), n * sizeof(double), cudaMemcpyHostToDevice));
  nccl.allreduceSumDevice(dev, n);
  CUDA_CHECK(cudaMemcpy(host.data(), dev, n * sizeof(double), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(dev));
  const double factor = world * (world + 1) / 2.0;
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(host[i], static_cast<double>(i) * factor) << i;

  // agree() over this communicator: allreduceMax through NCCL, broadcast through the bootstrap.
  const AgreedStatus ok = agree(nccl, 0, "");
  EXPECT_EQ(ok.code, 0);
  const AgreedStatus bad = agree(nccl, r == world - 1 ? 3 : 0, "rank's data");
  EXPECT_EQ(bad.code, 3);
  EXPECT_EQ(bad.failed_rank, world - 1);
  EXPECT_EQ(bad.message, "rank's data");
}

TEST(NcclCommunicator, OneRank) {
  REQUIRE_GPUS(1);
  runWorld(1, [](Communicator& comm, int) {
    NcclCommunicator nccl(comm, 0, 60.0);
    EXPECT_TRUE(nccl.usable());
    EXPECT_EQ(nccl.size(), 1);
    EXPECT_EQ(nccl.device(), 0);
    EXPECT_NE(nccl.stream(), nullptr);
    checkCollectives(nccl, 1);
    nccl.destroy();
    EXPECT_FALSE(nccl.usable());
    nccl.destroy();  // idempotent
    std::vector<double> v{1.0};
    try {
      nccl.allreduceSum(v);
      ADD_FAILURE() << "a collective after destroy()";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kInternal);
      expectContains(e.what(), "after destroy()");
    }
  });
}

TEST(NcclCommunicator, TwoRanksInThreads) {
  REQUIRE_GPUS(2);
  runWorld(2, [](Communicator& comm, int r) {
    NcclCommunicator nccl(comm, r, 60.0);
    checkCollectives(nccl, 2);
    nccl.destroy();
  });
}

TEST(NcclCommunicator, AfterAbortCollectivesFail) {
  REQUIRE_GPUS(1);
  runWorld(1, [](Communicator& comm, int) {
    NcclCommunicator nccl(comm, 0, 60.0);
    nccl.abort();
    nccl.abort();  // idempotent
    EXPECT_FALSE(nccl.usable());
    std::vector<double> v{1.0};
    try {
      nccl.allreduceSum(v);
      ADD_FAILURE() << "a collective after abort()";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kCommunication);
      expectContains(e.what(), "was aborted after an earlier error");
    }
    EXPECT_NO_THROW(nccl.destroy());
  });
}

TEST(NcclCommunicator, DeviceOutOfRangeFailsOnEveryRank) {
  REQUIRE_GPUS(1);
  std::string reason;
  const int count = cudaDeviceCountOrReason(reason);
  runWorld(1, [&](Communicator& comm, int) {
    try {
      NcclCommunicator nccl(comm, count, 60.0);
      ADD_FAILURE() << "device " << count << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage);
      expectContains(e.what(), "NCCL set-up failed on rank 0: CUDA device " +
                                   std::to_string(count) + " does not exist");
    }
  });
}

TEST(NcclCommunicator, DevicePointerIsChecked) {
  REQUIRE_GPUS(1);
  runWorld(1, [](Communicator& comm, int) {
    NcclCommunicator nccl(comm, 0, 60.0);
    std::vector<double> host(4, 1.0);
    try {
      nccl.allreduceSumDevice(host.data(), host.size());
      ADD_FAILURE() << "a host pointer accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kInternal);
      expectContains(e.what(), "allreduceSumDevice needs memory of cuda:0");
    }
    EXPECT_FALSE(nccl.usable());  // any failure aborts: the ranks may be out of step
    nccl.destroy();
  });
}

}  // namespace
}  // namespace bnadapt::comm

#else  // !BNADAPT_WITH_NCCL

TEST(NcclCommunicator, NeedsAnNcclBuild) {
  GTEST_SKIP() << "this build has no NCCL (configure with -DBNADAPT_WITH_NCCL=ON)";
}

#endif
