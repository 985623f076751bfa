// The collectives the pipeline needs, behind one interface.
//
// Contract: every rank calls every method, in the same order, with the same sizes
// (c10d Backend style). Implementations: MpiCommunicator (CPU, MPI), ThreadCommunicator
// (an in-process group of threads, for unit tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bnadapt::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank among the ranks on this host, and their number.
  virtual int localRank() const = 0;
  virtual int localSize() const = 0;
  virtual std::string hostname() const = 0;

  // Element-wise sum of data over all ranks, in place.
  virtual void allreduceSum(std::vector<double>& data) = 0;
  // Element-wise max over all ranks, in place.
  virtual void allreduceMax(std::vector<int64_t>& data) = 0;
  // Root's bytes replace everyone's (sizes may differ before the call).
  virtual void broadcast(std::string& bytes, int root) = 0;

  // Ends every rank of the job with `code`: for a rank that cannot take part in the next
  // collective (a collective itself failed). Not a collective.
  [[noreturn]] virtual void abortJob(int code) noexcept = 0;
};

// A status agreed by all ranks: the worst code and the lowest rank reporting it, with
// that rank's message. Every rank calls it (a collective).
struct AgreedStatus {
  int code = 0;        // 0: every rank succeeded
  int failed_rank = -1;
  std::string message;
};
AgreedStatus agree(Communicator& comm, int local_code, const std::string& local_message);

}  // namespace bnadapt::comm
