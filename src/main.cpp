// bnadapt_dist: exact, distributed BatchNorm statistics for a TorchScript model.
// Thin by design: start the watchdog, start MPI, hand the arguments to app::main, return its
// exit code. The watchdog runs from before MPI starts until after it ends (README
// "Reliability"): a rank stuck anywhere, start-up included, ends with exit code 8.
#include <cstdio>
#include <string>
#include <vector>

#include "app/fault_injection.h"
#include "app/run.h"
#include "app/watchdog.h"
#include "comm/launch_check.h"
#include "comm/mpi_communicator.h"
#include "config/config_loader.h"

int main(int argc, char** argv) {
  using namespace bnadapt;
  const std::vector<std::string> args(argv + 1, argv + argc);
  app::Watchdog watchdog(static_cast<double>(config::startupTimeout(args)));
  try {
    watchdog.enter("MPI initialisation");
    app::maybeInjectFault("mpi-init", comm::launcherRank(comm::processEnv));
    comm::MpiEnvironment mpi(&argc, &argv);
    comm::MpiCommunicator world;
    const int code = app::main(args, world, watchdog);
    watchdog.enter("MPI finalisation");
    return code;  // MPI ends here, still watched
  } catch (const Error& e) {  // MPI could not start
    std::fprintf(stderr, "bnadapt_dist: error: %s\n", e.what());
    return static_cast<int>(e.code());
  }
}
