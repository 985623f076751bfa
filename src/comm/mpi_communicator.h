// Communicator over MPI (CPU buffers).
#pragma once

#include <mpi.h>

#include "comm/communicator.h"

namespace bnadapt::comm {

// Initialises MPI if nobody did and finalises only what it initialised (Horovod habit).
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc, char*** argv);
  ~MpiEnvironment() noexcept;
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

 private:
  bool initialized_here_ = false;
};

// Owns a duplicate of a parent communicator (gloo mpi::Context habit), with errors returned
// as codes and turned into bnadapt::Error(kCommunication).
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm parent = MPI_COMM_WORLD);
  ~MpiCommunicator() noexcept override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int localRank() const override { return local_rank_; }
  int localSize() const override { return local_size_; }
  std::string hostname() const override { return hostname_; }

  void allreduceSum(std::vector<double>& data) override;
  void allreduceMax(std::vector<int64_t>& data) override;
  void broadcast(std::string& bytes, int root) override;
  [[noreturn]] void abortJob(int code) noexcept override;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string hostname_;
};

}  // namespace bnadapt::comm
