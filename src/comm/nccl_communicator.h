// Communicator whose all-reduces run through NCCL on one CUDA device per rank (built only
// with -DBNADAPT_WITH_NCCL=ON, in the bnadapt_nccl library).
//
// A bootstrap Communicator (MpiCommunicator in the tool, ThreadCommunicator in unit tests)
// carries everything that is not an all-reduce: rank, size, host, broadcast, abortJob, and
// the ncclUniqueId at construction. The all-reduces go through a non-blocking NCCL
// communicator and never wait forever: every wait polls the stream and
// ncclCommGetAsyncError against a deadline (nccl-tests testStreamSynchronize habit). On an
// NCCL or CUDA error, or at the deadline, the NCCL communicator is aborted
// (ncclCommAbort) and an Error is thrown; the caller then ends the job with abortJob(),
// because the other ranks cannot finish that collective either.
//
// Not thread-safe: one thread uses one NcclCommunicator (as it uses one MpiCommunicator).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"

// The CUDA runtime's and NCCL's own spellings of these handles (identical typedefs are
// allowed), so that this header needs neither toolkit header.
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;
struct ncclComm;
typedef struct ncclComm* ncclComm_t;

namespace bnadapt::comm {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`: every rank calls it, in the same order, each with its own
  // device (the device choice of device_binding.h; two ranks on one GPU fail). Rank 0
  // makes the ncclUniqueId and broadcasts it over `bootstrap`; every rank selects `device`,
  // creates its stream and joins the NCCL communicator (non-blocking init, polled).
  // A failure on any rank before the NCCL init makes every rank throw the same Error
  // (agreed over `bootstrap`, naming the rank); a failure during the init throws on the
  // failing rank, and on the others when their init fails or times out, then they agree.
  // timeout_seconds bounds each wait (the init, every all-reduce, destroy); <= 0 waits
  // without a deadline but still polls for NCCL's asynchronous errors. A wait past its
  // deadline throws Error(kTimeout), any other failure Error(kCommunication).
  // `bootstrap` must outlive this object.
  NcclCommunicator(Communicator& bootstrap, int device, double timeout_seconds);

  // Makes no NCCL or CUDA call (STYLE: nothing that can hang or fail at shutdown): if
  // destroy() was not called, the NCCL communicator, stream and buffers are left to the
  // process's exit (the driver reclaims them). Call destroy() for an orderly shutdown, or
  // abort() after a failure.
  ~NcclCommunicator() noexcept override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return bootstrap_.rank(); }
  int size() const override { return bootstrap_.size(); }
  int localRank() const override { return bootstrap_.localRank(); }
  int localSize() const override { return bootstrap_.localSize(); }
  std::string hostname() const override { return bootstrap_.hostname(); }

  // Host buffers: copied to the device through a page-locked staging buffer on this
  // object's stream, reduced with ncclAllReduce (ncclDouble/ncclSum, ncclInt64/ncclMax),
  // copied back; returns when the result is in `data`. Every rank passes the same size.
  void allreduceSum(std::vector<double>& data) override;
  void allreduceMax(std::vector<int64_t>& data) override;
  // Over the bootstrap communicator (MPI): not a hot path.
  void broadcast(std::string& bytes, int root) override;
  // The bootstrap's abortJob (MPI_Abort ends every rank, and the driver reclaims the GPU
  // state); no NCCL call, as this may run on a watchdog thread while a wait is under way.
  [[noreturn]] void abortJob(int code) noexcept override;

  // In-place sum of n doubles already on this object's device (cudaMalloc'd, or any
  // device pointer of that device), for a device-resident accumulator. The data must be
  // complete before the call (its producer's stream synchronised, or the producer ran on
  // stream()); returns when the sum is in place. Every rank passes the same n.
  void allreduceSumDevice(double* device_ptr, size_t n);

  // Aborts the NCCL communicator (ncclCommAbort): unblocks and ends whatever NCCL work is
  // pending. Idempotent; later collectives throw. The stream and buffers are kept (a
  // kernel may still be queued on them) and left to the process's exit.
  void abort() noexcept;
  // Orderly shutdown, a collective (every rank calls it): waits for the stream, then
  // ncclCommFinalize (polled to completion with the timeout) and ncclCommDestroy, then
  // frees the buffers and the stream. Idempotent. After abort(), frees the CUDA resources
  // only when the stream is idle. Throws like the all-reduces (having aborted).
  void destroy();

  int device() const { return device_; }
  // The stream the collectives run on: work enqueued here runs before the next collective.
  cudaStream_t stream() const { return stream_; }
  bool usable() const { return comm_ != nullptr && !aborted_ && !destroyed_; }

 private:
  // Runs one collective: checks usability, selects the device, and aborts on any failure.
  template <typename Fn>
  void guarded(const char* what, Fn&& fn);
  void checkUsable(const char* what) const;
  void startClock();
  bool pastDeadline() const;
  // "cuda:1, rank 3 of 8 on host h": where a failure happened.
  std::string place() const;
  void ensureBuffers(size_t bytes);
  // Frees the buffers and the stream; returns the first CUDA error (0 = none).
  int releaseCuda() noexcept;
  // Polls ncclCommGetAsyncError until the communicator's last call is no longer in
  // progress (the init, an enqueue, the finalize).
  void waitNcclReady(const char* what);
  // Polls the stream until its work is done, checking NCCL's asynchronous errors.
  void waitStream(const char* what);
  [[noreturn]] void failNccl(const char* what, int result);
  [[noreturn]] void failTimeout(const char* what);
  void allreduceHost(void* data, size_t count, size_t elem_size, int nccl_type, int nccl_op,
                     const char* what);

  Communicator& bootstrap_;
  int device_ = -1;
  double timeout_seconds_ = 0;
  std::chrono::steady_clock::time_point deadline_;  // of the wait under way
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* device_buffer_ = nullptr;
  size_t device_capacity_ = 0;
  void* host_staging_ = nullptr;
  size_t host_capacity_ = 0;
  bool aborted_ = false;
  bool destroyed_ = false;
};

}  // namespace bnadapt::comm
