#include "comm/cpu_binding.h"

#include <dirent.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
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

// The first line of `path`, or nullopt.
std::optional<std::string> firstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

// The cpuset of this process's cgroup: v2 ("0::/path"), then v1 ("N:cpuset:/path").
std::optional<std::vector<int>> cgroupCpus() {
  std::ifstream groups("/proc/self/cgroup");
  std::string line;
  std::vector<std::string> candidates;
  while (std::getline(groups, line)) {
    if (line.rfind("0::", 0) == 0) {
      const std::string path = line.substr(3);
      candidates.push_back("/sys/fs/cgroup" + path + "/cpuset.cpus.effective");
    } else if (const size_t at = line.find(":cpuset:"); at != std::string::npos) {
      const std::string path = line.substr(at + 8);
      candidates.push_back("/sys/fs/cgroup/cpuset" + path + "/cpuset.effective_cpus");
      candidates.push_back("/sys/fs/cgroup/cpuset" + path + "/cpuset.cpus");
    }
  }
  for (const std::string& file : candidates) {
    if (const auto text = firstLine(file)) {
      if (auto cpus = parseCpuList(*text); cpus && !cpus->empty()) return cpus;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::vector<int>> parseCpuList(const std::string& text) {
  std::vector<int> cpus;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    part.erase(std::remove_if(part.begin(), part.end(),
                              [](unsigned char ch) { return std::isspace(ch) != 0; }),
               part.end());
    if (part.empty()) continue;
    const size_t dash = part.find('-');
    try {
      size_t used = 0;
      const int lo = std::stoi(part.substr(0, dash), &used);
      if (used != (dash == std::string::npos ? part.size() : dash)) return std::nullopt;
      int hi = lo;
      if (dash != std::string::npos) {
        hi = std::stoi(part.substr(dash + 1), &used);
        if (used != part.size() - dash - 1) return std::nullopt;
      }
      if (lo < 0 || hi < lo || hi >= CPU_SETSIZE) return std::nullopt;
      for (int c = lo; c <= hi; ++c) cpus.push_back(c);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::vector<int> nodeCpus() {
  if (auto cpus = cgroupCpus()) return *cpus;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
  std::vector<int> all(static_cast<size_t>(n));
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  return all;
}

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

int onlineCores() { return static_cast<int>(nodeCpus().size()); }

std::string describeCpus(const std::vector<int>& cpus, int first, int count) {
  std::string out;
  for (int i = first; i < first + count && i < static_cast<int>(cpus.size()); ++i) {
    const int lo = cpus[static_cast<size_t>(i)];
    int j = i;
    while (j + 1 < first + count && j + 1 < static_cast<int>(cpus.size()) &&
           cpus[static_cast<size_t>(j + 1)] == cpus[static_cast<size_t>(j)] + 1) {
      ++j;
    }
    if (!out.empty()) out += ",";
    out += std::to_string(lo);
    if (j > i) out += "-" + std::to_string(cpus[static_cast<size_t>(j)]);
    i = j;
  }
  return out;
}

bool setProcessAffinity(const std::vector<int>& cpus, int first, int count) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int i = first; i < first + count && i < static_cast<int>(cpus.size()); ++i) {
    CPU_SET(cpus[static_cast<size_t>(i)], &set);
  }
  if (CPU_COUNT(&set) == 0) return false;
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
