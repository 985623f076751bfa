// Cross-checks the MPI world against what the launcher says it started.
//
// A launcher that cannot wire its processes into one MPI job (srun without --mpi=pmix,
// Open MPI's mpirun running a binary built against another MPI, ...) leaves N processes
// that each see a world of size 1: every one of them would adapt the statistics alone and
// write the same outputs. The launchers leave their own count in the environment; this
// compares it with MPI_COMM_WORLD's size before any work is done.
//
// Pure (no MPI, no global state) so that units can test it with a fake environment.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace bnadapt::comm {

// Looks up one environment variable; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// The process environment (std::getenv).
std::optional<std::string> processEnv(const std::string& name);

// Returns "" when the launcher's process count agrees with world_size, or when no launcher
// count is known; otherwise a one-line message for the user (the variable, both counts,
// and how to launch correctly). The caller ends with ExitCode::kCommunication.
//
// Sources, first one set (with a positive integer value) wins:
//   OMPI_COMM_WORLD_SIZE   Open MPI's mpirun/mpiexec (and PRRTE)
//   PMI_SIZE               PMI-1/PMI-2 launchers: srun --mpi=pmi2, MPICH/Intel MPI mpiexec
//   SLURM_STEP_NUM_TASKS   a task of an srun step (SLURM_STEP_ID set), else SLURM_NTASKS
// SLURM counts are used only inside a step: the batch script itself also sees
// SLURM_NTASKS (the allocation), and one process started there is a valid 1-rank run.
// Heterogeneous steps (SLURM_HET_SIZE set) are not checked: their MPI world spans
// components whose counts the environment gives only per component.
//
// Every rank of a consistent launch computes the same answer, so no collective is needed.
std::string checkLaunch(const EnvLookup& env, int world_size);

// This process's rank as the launcher numbered it, before MPI starts (for messages and test
// fault points): OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK or SLURM_PROCID, first set; -1
// when none is.
int launcherRank(const EnvLookup& env);

}  // namespace bnadapt::comm
