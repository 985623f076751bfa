#include "app/agreement.h"

#include <exception>
#include <string>

#include "common/error.h"
#include "common/log.h"

namespace bnadapt::app {

int agreedPhase(comm::Communicator& comm, Watchdog* watchdog, const char* phase,
                const std::function<void()>& body) {
  if (watchdog) watchdog->enter(phase);
  int code = 0;
  std::string message;
  try {
    body();
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.what();
  } catch (const std::exception& e) {
    code = static_cast<int>(ExitCode::kInternal);
    message = std::string("unexpected error: ") + e.what();
  } catch (...) {
    code = static_cast<int>(ExitCode::kInternal);
    message = "unexpected error of unknown type";
  }
  if (watchdog) watchdog->enter(std::string(phase) + ", waiting for the other ranks");
  const comm::AgreedStatus status = comm::agree(comm, code, message);
  if (status.code == 0) return 0;
  // One error line per job, from rank 0; other ranks' different failures as warnings.
  if (comm.rank() == 0) {
    if (status.failed_rank == 0) {
      log::error(status.message);
    } else {
      log::error("rank ", status.failed_rank, " failed during ", phase, ": ", status.message);
    }
  }
  if (code != 0 && comm.rank() != status.failed_rank && message != status.message) {
    log::warn("also failed: ", message);
  }
  return status.code;
}

}  // namespace bnadapt::app
