#include "comm/launch_check.h"

#include <cstdlib>
#include <limits>

#include "common/error.h"

namespace bnadapt::comm {
namespace {

// A positive decimal count, or nullopt (unset, empty, not a number, zero, too large).
std::optional<int> positiveCount(const std::optional<std::string>& value) {
  if (!value || value->empty() || value->size() > 9) return std::nullopt;
  int n = 0;
  for (char c : *value) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  if (n <= 0) return std::nullopt;
  return n;
}

struct LauncherCount {
  std::string variable;  // the variable the count came from
  int processes = 0;
  std::string launcher;  // who set it, in words
  std::string fix;       // how to launch correctly
};

std::optional<LauncherCount> launcherCount(const EnvLookup& env) {
  if (auto n = positiveCount(env("OMPI_COMM_WORLD_SIZE"))) {
    return LauncherCount{"OMPI_COMM_WORLD_SIZE", *n, "Open MPI's mpirun",
                         "start bnadapt_dist with the mpirun of the MPI library it is linked "
                         "against (see 'ldd bnadapt_dist | grep libmpi')"};
  }
  if (auto n = positiveCount(env("PMI_SIZE"))) {
    return LauncherCount{"PMI_SIZE", *n, "a PMI launcher (srun --mpi=pmi2, or an MPICH-style mpiexec)",
                         "the MPI library bnadapt_dist is linked against does not speak this "
                         "launcher's PMI: under SLURM use 'srun --mpi=pmix' (see 'srun --mpi=list'), "
                         "otherwise the mpirun of that MPI library"};
  }
  if (env("SLURM_STEP_ID") && !env("SLURM_HET_SIZE")) {
    const std::string fix =
        "launch with 'srun --mpi=pmix' (see 'srun --mpi=list'; or MpiDefault=pmix in "
        "slurm.conf, or SLURM_MPI_TYPE=pmix), with an MPI library built with PMIx support "
        "(Open MPI: 'ompi_info | grep pmix'); or start it with mpirun inside the allocation";
    if (auto n = positiveCount(env("SLURM_STEP_NUM_TASKS"))) {
      return LauncherCount{"SLURM_STEP_NUM_TASKS", *n, "srun", fix};
    }
    if (auto n = positiveCount(env("SLURM_NTASKS"))) {
      return LauncherCount{"SLURM_NTASKS", *n, "srun", fix};
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> processEnv(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

int launcherRank(const EnvLookup& env) {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}) {
    const std::optional<std::string> value = env(name);
    if (!value || value->empty() || value->size() > 9) continue;
    if (value->find_first_not_of("0123456789") == std::string::npos) return std::stoi(*value);
  }
  return -1;
}

std::string checkLaunch(const EnvLookup& env, int world_size) {
  const auto count = launcherCount(env);
  if (!count || count->processes == world_size) return {};
  const std::string started = detail::concat(count->launcher, " started ", count->processes,
                                             " processes (", count->variable, "=",
                                             count->processes, ")");
  if (world_size == 1) {
    return detail::concat(
        "MPI started this process as a singleton (world size 1), but ", started,
        ": each process runs alone as its own 1-rank job (and all would write the same outputs); ",
        count->fix);
  }
  return detail::concat("MPI_COMM_WORLD has ", world_size, " ranks, but ", started,
                        ": the processes were not wired into one MPI job; ", count->fix);
}

}  // namespace bnadapt::comm
