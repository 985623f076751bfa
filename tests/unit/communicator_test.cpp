#include "comm/thread_communicator.h"

#include <thread>

#include <gtest/gtest.h>

namespace bnadapt::comm {
namespace {

// Runs fn(comm) on `world` threads, one per rank.
template <typename Fn>
void runWorld(int world, Fn fn) {
  auto group = std::make_shared<ThreadGroup>(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      fn(comm);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(ThreadCommunicator, Collectives) {
  runWorld(3, [](Communicator& comm) {
    std::vector<double> v{1.0 * comm.rank(), 0.5};
    comm.allreduceSum(v);
    EXPECT_EQ(v, (std::vector<double>{3.0, 1.5}));
    std::vector<int64_t> m{comm.rank(), -comm.rank()};
    comm.allreduceMax(m);
    EXPECT_EQ(m, (std::vector<int64_t>{2, 0}));
    std::string s = comm.rank() == 1 ? "from one" : "x";
    comm.broadcast(s, 1);
    EXPECT_EQ(s, "from one");
  });
}

TEST(Agree, AllOk) {
  runWorld(4, [](Communicator& comm) {
    AgreedStatus s = agree(comm, 0, "");
    EXPECT_EQ(s.code, 0);
    EXPECT_EQ(s.failed_rank, -1);
  });
}

TEST(Agree, WorstCodeLowestRankAndItsMessage) {
  runWorld(4, [](Communicator& comm) {
    int code = 0;
    std::string msg;
    if (comm.rank() == 1) code = 3, msg = "rank one: data";
    if (comm.rank() == 2) code = 5, msg = "rank two: comm";
    if (comm.rank() == 3) code = 5, msg = "rank three: comm";
    AgreedStatus s = agree(comm, code, msg);
    EXPECT_EQ(s.code, 5);
    EXPECT_EQ(s.failed_rank, 2);
    EXPECT_EQ(s.message, "rank two: comm");
  });
}

}  // namespace
}  // namespace bnadapt::comm
