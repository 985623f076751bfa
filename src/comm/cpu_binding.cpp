#include "comm/cpu_binding.h"

#include <dirent.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace bnadapt::comm {
namespace {

bool isSet(const EnvLookup& env, const char* name) {
  const auto v = env(name);
  return v && !v->empty();
}

// Who bound the rank and the flag that gives it `want` cores.
std::string bindingFix(const EnvLookup& env, int want) {
  const std::string n = std::to_string(want);
  if (isSet(env, "SLURM_STEP_ID") || isSet(env, "SLURM_JOB_ID")) {
    return "launch with `srun --cpus-per-task=" + n + "` (SLURM binds each task to its CPUs)";
  }
  if (isSet(env, "OMPI_COMM_WORLD_SIZE")) {
    return "launch with `mpirun --map-by slot:PE=" + n +
           "` (or `--bind-to none`) instead of the binding you asked for";
  }
  return "widen the CPU affinity this process was started with (taskset, numactl, the "
         "launcher's binding option)";
}

}  // namespace

int nodeShare(const CoreCounts& counts) {
  return std::max(1, counts.online / std::max(1, counts.local_ranks));
}

BindingPlan planBinding(const EnvLookup& env, const CoreCounts& counts, int intra_op,
                        int data) {
  const int share = nodeShare(counts);
  const int want = std::min(std::max(1, intra_op + data), share);
  BindingPlan plan;
  if (counts.allowed >= want) return plan;
  const bool launcher_default = env("OMPI_MCA_orte_bound_at_launch") == std::string("1") &&
                                !isSet(env, "OMPI_MCA_hwloc_base_binding_policy") &&
                                !isSet(env, "OMPI_MCA_rmaps_base_mapping_policy");
  if (launcher_default && counts.local_rank < counts.local_ranks) {
    plan.action = BindingPlan::Action::kWiden;
    plan.first_core = counts.local_rank * share;
    plan.cores = share;
    return plan;
  }
  const std::string numbers =
      std::to_string(intra_op) + " intra-op + " + std::to_string(data) + " data thread(s) on " +
      std::to_string(counts.allowed) + " core(s) (its CPU affinity; " +
      std::to_string(counts.online) + " online, " + std::to_string(share) + " per rank for " +
      std::to_string(counts.local_ranks) + " rank(s) on this node)";
  if (counts.allowed >= intra_op) {  // only the decoding threads share cores: say so, quietly
    plan.message = "this rank runs " + numbers;
    return plan;
  }
  plan.action = BindingPlan::Action::kWarn;
  plan.message = "this rank runs " + numbers +
                 ": its intra-op threads share cores and the run is slower; " +
                 bindingFix(env, want);
  return plan;
}

int allowedCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return onlineCores();
}

int onlineCores() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n > 0) return static_cast<int>(n);
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

bool setProcessAffinity(int first, int count) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c = first; c < first + count && c < CPU_SETSIZE; ++c) CPU_SET(c, &set);
  // Threads started so far (MPI's progress threads) and, through inheritance, every later one.
  bool ok = true;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (const dirent* e = readdir(dir)) {
      const int tid = std::atoi(e->d_name);
      if (tid > 0 && sched_setaffinity(tid, sizeof set, &set) != 0) ok = false;
    }
    closedir(dir);
  } else {
    ok = sched_setaffinity(0, sizeof set, &set) == 0;
  }
  return ok;
}

}  // namespace bnadapt::comm
