#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "comm/cuda_check.h"
#include "comm/nccl_errors.h"
#include "common/error.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "bnadapt_nccl needs NCCL >= 2.14 (non-blocking communicators, ncclCommFinalize)"
#endif

namespace bnadapt::comm {
namespace {

// Between two polls of a wait. An all-reduce of the statistics buffer takes tens of
// microseconds on one node, so this adds little and keeps a core free for others.
void pollPause() { std::this_thread::sleep_for(std::chrono::microseconds(20)); }

}  // namespace

template <typename Fn>
void NcclCommunicator::guarded(const char* what, Fn&& fn) {
  checkUsable(what);
  try {
    CUDA_CHECK(cudaSetDevice(device_));  // the caller's thread may have another current device
    startClock();
    fn();
  } catch (...) {
    abort();  // the ranks are out of step now: no collective on this communicator may follow
    throw;
  }
}

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device, double timeout_seconds)
    : bootstrap_(bootstrap), device_(device), timeout_seconds_(timeout_seconds) {
  // 1. Local set-up, agreed: a rank that cannot even start makes every rank throw the same
  //    error here, before any of them enters the NCCL init (which would wait for it).
  std::string id_bytes;
  int code = 0;
  std::string message;
  try {
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count));
    BNA_CHECK(device >= 0 && device < count, ExitCode::kUsage, "CUDA device ", device,
              " does not exist: this process sees ", count, " device(s)");
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (bootstrap_.rank() == 0) {
      ncclUniqueId id;
      const ncclResult_t r = ncclGetUniqueId(&id);
      BNA_CHECK(r == ncclSuccess, ExitCode::kCommunication,
                "ncclGetUniqueId failed: ", ncclErrorMessage(r, ncclGetLastError(nullptr)));
      id_bytes.assign(id.internal, sizeof(id.internal));
    }
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.what();
  }
  const AgreedStatus status = agree(bootstrap_, code, message);
  if (status.code != 0) {
    (void)releaseCuda();
    fail(static_cast<ExitCode>(status.code), "NCCL set-up failed on rank ", status.failed_rank,
         ": ", status.message);
  }
  bootstrap_.broadcast(id_bytes, 0);
  BNA_ASSERT(id_bytes.size() == NCCL_UNIQUE_ID_BYTES, "ncclUniqueId of ", id_bytes.size(),
             " bytes");
  ncclUniqueId id;
  std::memcpy(id.internal, id_bytes.data(), sizeof(id.internal));

  // 2. The NCCL init, non-blocking and polled. A failure here is this rank's: the others
  //    fail in their own init (an error or the deadline).
  try {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    startClock();
    const ncclResult_t r =
        ncclCommInitRankConfig(&comm_, bootstrap_.size(), id, bootstrap_.rank(), &config);
    if (r != ncclSuccess && r != ncclInProgress) failNccl("ncclCommInitRankConfig", r);
    BNA_CHECK(comm_ != nullptr, ExitCode::kCommunication,
              "ncclCommInitRankConfig returned no communicator on ", place());
    waitNcclReady("the NCCL communicator set-up (ncclCommInitRankConfig)");
  } catch (...) {
    abort();
    (void)releaseCuda();
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() noexcept {
  // Deliberately empty: see the header. destroy() or abort() do the NCCL and CUDA calls.
}

void NcclCommunicator::broadcast(std::string& bytes, int root) {
  bootstrap_.broadcast(bytes, root);
}

void NcclCommunicator::abortJob(int code) noexcept {
  bootstrap_.abortJob(code);
  std::_Exit(code);  // not reached (abortJob does not return); a virtual call hides that
}

void NcclCommunicator::allreduceSum(std::vector<double>& data) {
  allreduceHost(data.data(), data.size(), sizeof(double), ncclDouble, ncclSum,
                "ncclAllReduce(sum of float64)");
}

void NcclCommunicator::allreduceMax(std::vector<int64_t>& data) {
  allreduceHost(data.data(), data.size(), sizeof(int64_t), ncclInt64, ncclMax,
                "ncclAllReduce(max of int64)");
}

void NcclCommunicator::allreduceHost(void* data, size_t count, size_t elem_size, int nccl_type,
                                     int nccl_op, const char* what) {
  if (count == 0) {  // every rank passes the same size: nothing to do anywhere
    checkUsable(what);
    return;
  }
  const size_t bytes = count * elem_size;
  guarded(what, [&] {
    ensureBuffers(bytes);
    // Through page-locked memory both ways: a copy to pageable memory would return only
    // once the all-reduce before it completed, a wait without a deadline.
    std::memcpy(host_staging_, data, bytes);
    CUDA_CHECK(
        cudaMemcpyAsync(device_buffer_, host_staging_, bytes, cudaMemcpyHostToDevice, stream_));
    const ncclResult_t r =
        ncclAllReduce(device_buffer_, device_buffer_, count, static_cast<ncclDataType_t>(nccl_type),
                      static_cast<ncclRedOp_t>(nccl_op), comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) failNccl(what, r);
    waitNcclReady(what);  // enqueued: only now may the copy back follow it on the stream
    CUDA_CHECK(
        cudaMemcpyAsync(host_staging_, device_buffer_, bytes, cudaMemcpyDeviceToHost, stream_));
    waitStream(what);
    std::memcpy(data, host_staging_, bytes);
  });
}

void NcclCommunicator::allreduceSumDevice(double* device_ptr, size_t n) {
  const char* what = "ncclAllReduce(sum of float64 on the device)";
  if (n == 0) {
    checkUsable(what);
    return;
  }
  guarded(what, [&] {
    cudaPointerAttributes attr{};
    CUDA_CHECK(cudaPointerGetAttributes(&attr, device_ptr));
    BNA_CHECK(
        (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) &&
            attr.device == device_,
        ExitCode::kInternal, "internal error: allreduceSumDevice needs memory of cuda:", device_,
        ", got a pointer of memory type ", static_cast<int>(attr.type), " on device ", attr.device);
    const ncclResult_t r =
        ncclAllReduce(device_ptr, device_ptr, n, ncclDouble, ncclSum, comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) failNccl(what, r);
    waitNcclReady(what);
    waitStream(what);
  });
}

void NcclCommunicator::abort() noexcept {
  if (comm_ != nullptr) {
    (void)ncclCommAbort(comm_);  // nothing to do about a failure to abort
    comm_ = nullptr;
  }
  aborted_ = true;
}

void NcclCommunicator::destroy() {
  if (destroyed_) return;
  if (aborted_ || comm_ == nullptr) {
    // The NCCL side is gone; the CUDA side only when nothing is queued any more.
    if (stream_ == nullptr || cudaStreamQuery(stream_) == cudaSuccess) (void)releaseCuda();
    destroyed_ = true;
    return;
  }
  const char* what = "destroying the NCCL communicator (ncclCommFinalize)";
  guarded(what, [&] {
    waitStream(what);
    const ncclResult_t r = ncclCommFinalize(comm_);
    if (r != ncclSuccess && r != ncclInProgress) failNccl(what, r);
    waitNcclReady(what);
    const ncclResult_t d = ncclCommDestroy(comm_);
    comm_ = nullptr;
    BNA_CHECK(d == ncclSuccess, ExitCode::kCommunication, "ncclCommDestroy failed on ", place(),
              ": ", ncclErrorMessage(d, ncclGetLastError(nullptr)));
    cudaCheck(static_cast<cudaError_t>(releaseCuda()), "freeing the NCCL buffers and stream",
              __FILE__, __LINE__);
  });
  destroyed_ = true;
}

void NcclCommunicator::checkUsable(const char* what) const {
  BNA_CHECK(!aborted_, ExitCode::kCommunication, what, " on ", place(),
            ": the NCCL communicator was aborted after an earlier error");
  BNA_CHECK(!destroyed_ && comm_ != nullptr, ExitCode::kInternal, "internal error: ", what, " on ",
            place(), " after destroy()");
}

void NcclCommunicator::startClock() {
  const auto now = std::chrono::steady_clock::now();
  if (timeout_seconds_ > 0 && timeout_seconds_ < 1e9) {
    deadline_ = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                          std::chrono::duration<double>(timeout_seconds_));
  } else {
    deadline_ = std::chrono::steady_clock::time_point::max();
  }
}

bool NcclCommunicator::pastDeadline() const { return std::chrono::steady_clock::now() > deadline_; }

std::string NcclCommunicator::place() const {
  return detail::concat("cuda:", device_, ", rank ", bootstrap_.rank(), " of ", bootstrap_.size(),
                        " on host ", bootstrap_.hostname());
}

void NcclCommunicator::ensureBuffers(size_t bytes) {
  if (bytes > device_capacity_) {
    if (device_buffer_ != nullptr) CUDA_CHECK(cudaFree(device_buffer_));
    device_buffer_ = nullptr;
    device_capacity_ = 0;
    CUDA_CHECK(cudaMalloc(&device_buffer_, bytes));
    device_capacity_ = bytes;
  }
  if (bytes > host_capacity_) {
    if (host_staging_ != nullptr) CUDA_CHECK(cudaFreeHost(host_staging_));
    host_staging_ = nullptr;
    host_capacity_ = 0;
    CUDA_CHECK(cudaMallocHost(&host_staging_, bytes));
    host_capacity_ = bytes;
  }
}

int NcclCommunicator::releaseCuda() noexcept {
  cudaError_t first = cudaSuccess;
  auto keep = [&first](cudaError_t e) {
    if (first == cudaSuccess) first = e;
  };
  if (device_buffer_ != nullptr) keep(cudaFree(device_buffer_));
  if (host_staging_ != nullptr) keep(cudaFreeHost(host_staging_));
  if (stream_ != nullptr) keep(cudaStreamDestroy(stream_));
  device_buffer_ = nullptr;
  host_staging_ = nullptr;
  stream_ = nullptr;
  device_capacity_ = host_capacity_ = 0;
  return static_cast<int>(first);
}

void NcclCommunicator::waitNcclReady(const char* what) {
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) failNccl(what, r);
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) failNccl(what, state);
    if (pastDeadline()) failTimeout(what);
    pollPause();
  }
}

void NcclCommunicator::waitStream(const char* what) {
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream_);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) {
      abort();
      cudaCheck(q, what, __FILE__, __LINE__);
    }
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) failNccl(what, r);
    if (state != ncclSuccess && state != ncclInProgress) failNccl(what, state);
    if (pastDeadline()) failTimeout(what);
    pollPause();
  }
}

void NcclCommunicator::failNccl(const char* what, int result) {
  // Read before the abort: it describes this communicator's failure.
  const char* last = ncclGetLastError(comm_);
  const std::string last_error = last != nullptr ? last : "";
  abort();
  fail(ExitCode::kCommunication, what, " failed on ", place(), ": ",
       ncclErrorMessage(result, last_error));
}

void NcclCommunicator::failTimeout(const char* what) {
  abort();
  fail(ExitCode::kTimeout, what, " did not complete within ", timeout_seconds_, " s on ", place(),
       ": another rank did not reach it (stopped, hung or failed: see its log) or the "
       "network between the hosts is blocked; the NCCL communicator was aborted (run with "
       "NCCL_DEBUG=WARN to see NCCL's view)");
}

}  // namespace bnadapt::comm
