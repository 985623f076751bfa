// How every rank gets the checkpoint's weights (issue "The checkpoint is the source of the
// weights", item 5): each rank reading the checkpoint itself, against rank 0 reading it and
// broadcasting the converted tensors over MPI.
//
//   mpirun -np N bnadapt_bench_weights MODEL.pt CHECKPOINT [REPEAT=3]
//
// Per strategy, the fastest of REPEAT rounds of the slowest rank (from a barrier to the last
// rank holding the weights, the checks of checkpoint/weights.h included), and each rank's
// peak resident memory at the end. Run it on a warm page cache (a first round is run and
// not counted) and, on a cluster, also with the checkpoint on the shared file system.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <torch/script.h>

#include "checkpoint/checkpoint.h"
#include "checkpoint/weights.h"
#include "comm/mpi_communicator.h"

namespace {

using namespace bnadapt;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// This rank's last breakdown of readHere: open (every record read and CRC-checked) + plan,
// reading the state_dict's tensors, checking and converting them (the SHA-256 included).
double g_open = 0, g_read = 0, g_check = 0;

checkpoint::ModelWeights readHere(const torch::jit::Module& module, const std::string& path) {
  auto t0 = Clock::now();
  auto ckpt = checkpoint::openCheckpoint(path);
  ckpt->plan(checkpoint::bnBuffersOf(module), "");
  g_open = since(t0);
  t0 = Clock::now();
  const io::NamedTensors dict = ckpt->readStateDict();
  g_read = since(t0);
  t0 = Clock::now();
  checkpoint::ModelWeights w = checkpoint::checkWeights(module, dict, path, ckpt->match());
  g_check = since(t0);
  return w;
}

// name NUL dtype-code ndim sizes... bytes, per tensor.
std::string pack(const io::NamedTensors& tensors) {
  std::string out;
  for (const auto& [name, t] : tensors) {
    out += name + '\0';
    const int64_t head[2] = {static_cast<int64_t>(t.scalar_type()), t.dim()};
    out.append(reinterpret_cast<const char*>(head), sizeof head);
    out.append(reinterpret_cast<const char*>(t.sizes().data()), t.dim() * sizeof(int64_t));
    out.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
  }
  return out;
}

io::NamedTensors unpack(const std::string& bytes) {
  io::NamedTensors out;
  for (size_t at = 0; at < bytes.size();) {
    const std::string name(bytes.c_str() + at);
    at += name.size() + 1;
    int64_t head[2];
    std::memcpy(head, bytes.data() + at, sizeof head);
    at += sizeof head;
    std::vector<int64_t> sizes(static_cast<size_t>(head[1]));
    std::memcpy(sizes.data(), bytes.data() + at, sizes.size() * sizeof(int64_t));
    at += sizes.size() * sizeof(int64_t);
    at::Tensor t = at::empty(sizes, static_cast<at::ScalarType>(head[0]));
    std::memcpy(t.data_ptr(), bytes.data() + at, t.nbytes());
    at += t.nbytes();
    out.emplace_back(name, std::move(t));
  }
  return out;
}

double slowest(comm::Communicator& comm, double seconds) {
  std::vector<double> all(static_cast<size_t>(comm.size()), 0.0);
  all[static_cast<size_t>(comm.rank())] = seconds;
  comm.allreduceSum(all);
  double worst = 0;
  for (double s : all) worst = std::max(worst, s);
  return worst;
}

template <typename F>
double timed(comm::Communicator& comm, F&& body) {
  std::vector<double> barrier(1, 0.0);
  comm.allreduceSum(barrier);
  const auto t0 = Clock::now();
  body();
  return slowest(comm, std::chrono::duration<double>(Clock::now() - t0).count());
}

double peakRssMiB() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  comm::MpiEnvironment mpi(&argc, &argv);
  comm::MpiCommunicator world;
  if (argc < 3) {
    if (world.rank() == 0) std::fprintf(stderr, "usage: %s MODEL.pt CHECKPOINT [REPEAT]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[2];
  const int repeat = argc > 3 ? std::atoi(argv[3]) : 3;
  const torch::jit::Module module = torch::jit::load(argv[1]);
  double every = 1e30, bcast = 1e30;
  uint64_t tensors = 0;
  for (int r = 0; r <= repeat; ++r) {  // round 0 warms the page cache
    const double e = timed(world, [&] { tensors = readHere(module, path).values.size(); });
    const double b = timed(world, [&] {
      std::string packed;
      if (world.rank() == 0) packed = pack(readHere(module, path).values);
      world.broadcast(packed, 0);
      if (world.rank() != 0) tensors = unpack(packed).size();
    });
    if (r > 0) every = std::min(every, e), bcast = std::min(bcast, b);
  }
  const double rss = slowest(world, peakRssMiB());
  if (world.rank() == 0) {
    std::printf("%d rank(s), %s (%llu tensors): every rank reads %.3f s, rank 0 reads + "
                "broadcast %.3f s; peak RSS of the largest rank %.0f MiB; rank 0's last read: "
                "open %.3f s, read %.3f s, check %.3f s\n",
                world.size(), path.c_str(), static_cast<unsigned long long>(tensors), every, bcast,
                rss, g_open, g_read, g_check);
  }
  return 0;
}
