// How many cores a rank may run on, and what to do when the launcher gave it too few.
//
// Open MPI's mpirun binds every rank to one core by default when it starts 1 or 2 ranks, so
// `--threads 2` would run two threads on one core without a word. A rank compares the cores
// its CPU affinity allows with the threads it will run (intra-op + data, capped at its share
// of the node: online cores / ranks on the node) and
//   - keeps its binding when that is enough;
//   - widens it to its node share (the node's cores [local_rank * share, (local_rank + 1) *
//     share), counted in the CPUs its cgroup allows, so containers and SLURM jobs work) when
//     the binding is the launcher's default, not a request: Open MPI set it
//     (OMPI_MCA_orte_bound_at_launch) and neither --bind-to nor --map-by was given
//     (OMPI_MCA_hwloc_base_binding_policy, OMPI_MCA_rmaps_base_mapping_policy unset);
//   - otherwise, when the intra-op threads alone outnumber its cores, prints one warning with
//     the numbers and the launch flag that fixes it.
//
// planBinding is pure (environment and counts in, plan out) so units test it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "comm/launch_check.h"

namespace bnadapt::comm {

struct CoreCounts {
  int allowed = 1;      // cores in this process's CPU affinity
  int online = 1;       // cores online on the node
  int local_ranks = 1;  // ranks on this node
  int local_rank = 0;
};

struct BindingPlan {
  enum class Action { kKeep, kWiden, kWarn };
  Action action = Action::kKeep;
  int first_core = 0;   // kWiden: cores [first_core, first_core + cores)
  int cores = 0;        // kWiden: how many
  std::string message;  // kWarn: the one warning line; kKeep: an info line, or empty
};

// The rank's share of the node: online / local_ranks, at least 1.
int nodeShare(const CoreCounts& counts);

// `intra_op` and `data`: the threads the rank will run.
BindingPlan planBinding(const EnvLookup& env, const CoreCounts& counts, int intra_op, int data);

// "0-3,8,10-11" (the kernel's CPU list format) -> {0,1,2,3,8,10,11}; nullopt when malformed.
std::optional<std::vector<int>> parseCpuList(const std::string& text);

// The node's CPUs this process may be given: its cgroup's effective cpuset (v2, then v1:
// a container's or a SLURM job's CPUs), else every online CPU (sysconf).
std::vector<int> nodeCpus();

// The cores this process's calling thread may run on (sched_getaffinity), and the node's
// (nodeCpus().size()).
int allowedCores();
int onlineCores();

// Sets the CPU affinity of every thread of this process to node[first, first + count)
// (`node`: nodeCpus()). False (nothing changed for the threads that failed) when the kernel
// refuses.
bool setProcessAffinity(const std::vector<int>& node, int first, int count);

// "0-1" or "4,6": the CPU ids of node[first, first + count), for the log.
std::string describeCpus(const std::vector<int>& node, int first, int count);

}  // namespace bnadapt::comm
