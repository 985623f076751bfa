#include "comm/thread_communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace bnadapt::comm {
namespace {

template <typename T>
std::string toBytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <typename T, typename Op>
void reduceInto(std::vector<T>& data, const std::vector<std::string>& all, Op op) {
  for (size_t r = 0; r < all.size(); ++r) {
    BNA_CHECK(all[r].size() == data.size() * sizeof(T), ExitCode::kCommunication,
              "rank ", r, " contributed ", all[r].size() / sizeof(T), " elements, expected ",
              data.size());
    const T* src = reinterpret_cast<const T*>(all[r].data());
    for (size_t i = 0; i < data.size(); ++i) {
      data[i] = r == 0 ? src[i] : op(data[i], src[i]);
    }
  }
}

}  // namespace

void ThreadGroup::barrier() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t gen = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  } else {
    cv_.wait(lock, [&] { return generation_ != gen; });
  }
}

std::vector<std::string> ThreadGroup::exchange(int rank, std::string mine) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[rank] = std::move(mine);
  }
  barrier();
  std::vector<std::string> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all = slots_;
  }
  barrier();  // nobody overwrites a slot before everyone has read it
  return all;
}

void ThreadCommunicator::allreduceSum(std::vector<double>& data) {
  // Summed in rank order, as a deterministic reduction would.
  reduceInto(data, group_->exchange(rank_, toBytes(data)), [](double a, double b) { return a + b; });
}

void ThreadCommunicator::allreduceMax(std::vector<int64_t>& data) {
  reduceInto(data, group_->exchange(rank_, toBytes(data)),
             [](int64_t a, int64_t b) { return std::max(a, b); });
}

void ThreadCommunicator::abortJob(int code) noexcept { std::_Exit(code); }

void ThreadCommunicator::broadcast(std::string& bytes, int root) {
  bytes = group_->exchange(rank_, bytes)[root];
}

}  // namespace bnadapt::comm
