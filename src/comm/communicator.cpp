#include "comm/communicator.h"

#include <limits>

namespace bnadapt::comm {

AgreedStatus agree(Communicator& comm, int local_code, const std::string& local_message) {
  // Max of code, then max of -rank among ranks with that code: the lowest failing rank.
  std::vector<int64_t> v{local_code};
  comm.allreduceMax(v);
  AgreedStatus status;
  status.code = static_cast<int>(v[0]);
  if (status.code == 0) return status;
  std::vector<int64_t> who{local_code == status.code ? -comm.rank()
                                                     : std::numeric_limits<int64_t>::min()};
  comm.allreduceMax(who);
  status.failed_rank = static_cast<int>(-who[0]);
  status.message = comm.rank() == status.failed_rank ? local_message : std::string();
  comm.broadcast(status.message, status.failed_rank);
  return status;
}

}  // namespace bnadapt::comm
