// bnadapt_dist: exact, distributed BatchNorm statistics for a TorchScript model.
// Thin by design: start MPI, hand the arguments to app::main, return its exit code.
#include <cstdio>
#include <string>
#include <vector>

#include "app/run.h"
#include "comm/mpi_communicator.h"

int main(int argc, char** argv) {
  try {
    bnadapt::comm::MpiEnvironment mpi(&argc, &argv);
    bnadapt::comm::MpiCommunicator world;
    return bnadapt::app::main(std::vector<std::string>(argv + 1, argv + argc), world);
  } catch (const bnadapt::Error& e) {  // MPI could not start
    std::fprintf(stderr, "bnadapt_dist: error: %s\n", e.what());
    return static_cast<int>(e.code());
  }
}
