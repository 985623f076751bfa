#include "comm/mpi_communicator.h"

#include <climits>
#include <cstdlib>

#include "common/error.h"

// Checks an MPI return code; the message carries MPI's own text and the call.
#define MPI_CHECK(call)                                                                \
  do {                                                                                 \
    int mpi_rc_ = (call);                                                              \
    if (mpi_rc_ != MPI_SUCCESS) {                                                      \
      char mpi_msg_[MPI_MAX_ERROR_STRING];                                             \
      int mpi_len_ = 0;                                                                \
      MPI_Error_string(mpi_rc_, mpi_msg_, &mpi_len_);                                  \
      ::bnadapt::fail(::bnadapt::ExitCode::kCommunication, #call, " failed: ",       \
                      std::string(mpi_msg_, mpi_len_));                                \
    }                                                                                  \
  } while (0)

namespace bnadapt::comm {

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    initialized_here_ = true;
  }
}

MpiEnvironment::~MpiEnvironment() noexcept {
  if (!initialized_here_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}


MpiCommunicator::MpiCommunicator(MPI_Comm parent) {
  MPI_CHECK(MPI_Comm_dup(parent, &comm_));
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  MPI_Comm local = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local));
  MPI_CHECK(MPI_Comm_rank(local, &local_rank_));
  MPI_CHECK(MPI_Comm_size(local, &local_size_));
  MPI_Comm_free(&local);
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_CHECK(MPI_Get_processor_name(name, &len));
  hostname_.assign(name, len);
}

MpiCommunicator::~MpiCommunicator() noexcept {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void MpiCommunicator::abortJob(int code) noexcept {
  MPI_Abort(comm_ != MPI_COMM_NULL ? comm_ : MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void MpiCommunicator::allreduceSum(std::vector<double>& data) {
  BNA_ASSERT(data.size() <= static_cast<size_t>(INT_MAX));
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()),
                          MPI_DOUBLE, MPI_SUM, comm_));
}

void MpiCommunicator::allreduceMax(std::vector<int64_t>& data) {
  BNA_ASSERT(data.size() <= static_cast<size_t>(INT_MAX));
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()),
                          MPI_INT64_T, MPI_MAX, comm_));
}

void MpiCommunicator::broadcast(std::string& bytes, int root) {
  uint64_t n = bytes.size();
  MPI_CHECK(MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm_));
  BNA_CHECK(n <= static_cast<uint64_t>(INT_MAX), ExitCode::kCommunication,
            "broadcast of ", n, " bytes from rank ", root, " exceeds the 2 GiB limit");
  bytes.resize(n);
  MPI_CHECK(MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_CHAR, root, comm_));
}

}  // namespace bnadapt::comm
