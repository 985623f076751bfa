// An in-process "world" of threads, one per rank, for unit tests of everything above the
// Communicator (c10d FakeProcessGroup habit, but with real reductions).
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "comm/communicator.h"

namespace bnadapt::comm {

class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), slots_(size) {}
  int size() const { return size_; }

  // Deposits `mine` for `rank`, waits for all ranks, returns every rank's deposit.
  std::vector<std::string> exchange(int rank, std::string mine);

 private:
  void barrier();
  int size_;
  std::vector<std::string> slots_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> group, int rank)
      : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  int localRank() const override { return rank_; }
  int localSize() const override { return group_->size(); }
  std::string hostname() const override { return "localhost"; }

  void allreduceSum(std::vector<double>& data) override;
  void allreduceMax(std::vector<int64_t>& data) override;
  void broadcast(std::string& bytes, int root) override;
  // Tests cannot survive a torn collective either: ends the process.
  [[noreturn]] void abortJob(int code) noexcept override;

 private:
  std::shared_ptr<ThreadGroup> group_;
  int rank_;
};

}  // namespace bnadapt::comm
