#include "comm/cpu_binding.h"

#include <algorithm>
#include <map>
#include <vector>

#include <gtest/gtest.h>

#include "fake_env.h"

namespace bnadapt::comm {
namespace {

using fake_env::Env;
using fake_env::lookup;
using fake_env::with;

// What Open MPI 4.1's mpirun leaves (checked on this machine): a default binding sets only
// orte_bound_at_launch; --bind-to X and --map-by Y add their policies.
const Env kMpirunDefault{{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_MCA_orte_bound_at_launch", "1"}};

TEST(CpuBinding, EnoughCoresKeepsTheBinding) {
  // 2 ranks on 2 cores, bound to one each, one thread each: nothing to do.
  auto plan = planBinding(lookup(kMpirunDefault), {1, 2, 2, 1}, 1, 1);
  EXPECT_EQ(plan.action, BindingPlan::Action::kKeep);
  // Unbound, 2 threads: fine.
  plan = planBinding(lookup({}), {2, 2, 1, 0}, 2, 1);
  EXPECT_EQ(plan.action, BindingPlan::Action::kKeep);
}

TEST(CpuBinding, LauncherDefaultIsWidenedToTheNodeShare) {
  // mpirun -np 1 on 2 cores binds to core 0; 2 intra-op + 1 data thread want the node.
  auto plan = planBinding(lookup(kMpirunDefault), {1, 2, 1, 0}, 2, 1);
  ASSERT_EQ(plan.action, BindingPlan::Action::kWiden);
  EXPECT_EQ(plan.first_core, 0);
  EXPECT_EQ(plan.cores, 2);
  // mpirun -np 2 on 16 cores: local rank 1 takes cores 8..15.
  plan = planBinding(lookup(kMpirunDefault), {1, 16, 2, 1}, 8, 4);
  ASSERT_EQ(plan.action, BindingPlan::Action::kWiden);
  EXPECT_EQ(plan.first_core, 8);
  EXPECT_EQ(plan.cores, 8);
}

TEST(CpuBinding, UserBindingGetsOneWarningNamingTheFix) {
  auto plan = planBinding(lookup(with(kMpirunDefault, {{"OMPI_MCA_hwloc_base_binding_policy",
                                                        "core"}})),
                          {1, 2, 1, 0}, 2, 1);
  ASSERT_EQ(plan.action, BindingPlan::Action::kWarn);
  EXPECT_NE(plan.message.find("2 intra-op + 1 data thread(s) on 1 core(s)"), std::string::npos)
      << plan.message;
  EXPECT_NE(plan.message.find("--map-by slot:PE=2"), std::string::npos) << plan.message;
  EXPECT_NE(plan.message.find("--bind-to none"), std::string::npos) << plan.message;
  plan = planBinding(lookup(with(kMpirunDefault, {{"OMPI_MCA_rmaps_base_mapping_policy",
                                                   "socket"}})),
                     {1, 2, 1, 0}, 2, 1);
  EXPECT_EQ(plan.action, BindingPlan::Action::kWarn);
}

TEST(CpuBinding, SlurmAndUnknownBindingsWarn) {
  auto plan =
      planBinding(lookup({{"SLURM_JOB_ID", "7"}, {"SLURM_STEP_ID", "0"}}), {1, 8, 2, 0}, 4, 2);
  ASSERT_EQ(plan.action, BindingPlan::Action::kWarn);
  EXPECT_NE(plan.message.find("srun --cpus-per-task=4"), std::string::npos) << plan.message;
  plan = planBinding(lookup({}), {1, 4, 1, 0}, 2, 1);  // taskset -c 0
  ASSERT_EQ(plan.action, BindingPlan::Action::kWarn);
  EXPECT_NE(plan.message.find("taskset"), std::string::npos) << plan.message;
}

TEST(CpuBinding, DecodingThreadsWithoutACoreOfTheirOwnAreNoWarning) {
  // srun --cpus-per-task=8 with --threads 8 on a 64-core node: the 4 decoding threads share.
  auto plan = planBinding(lookup({{"SLURM_JOB_ID", "7"}}), {8, 64, 2, 0}, 8, 4);
  EXPECT_EQ(plan.action, BindingPlan::Action::kKeep);
  EXPECT_NE(plan.message.find("8 intra-op + 4 data thread(s) on 8 core(s)"), std::string::npos)
      << plan.message;
}

TEST(CpuBinding, OversubscribedNodesAskForOneCore) {
  // 8 ranks on 2 cores: the share is 1 core, which each rank has.
  EXPECT_EQ(nodeShare({1, 2, 8, 5}), 1);
  EXPECT_EQ(planBinding(lookup(kMpirunDefault), {1, 2, 8, 5}, 1, 1).action,
            BindingPlan::Action::kKeep);
}

TEST(CpuBinding, ThisProcessHasCores) {
  EXPECT_GE(allowedCores(), 1);
  EXPECT_GE(onlineCores(), allowedCores());
  const std::vector<int> cpus = nodeCpus();
  ASSERT_FALSE(cpus.empty());
  EXPECT_TRUE(std::is_sorted(cpus.begin(), cpus.end()));
  EXPECT_EQ(describeCpus(cpus, 0, static_cast<int>(cpus.size())).empty(), false);
  EXPECT_EQ(describeCpus({0, 1, 2, 3, 8, 10, 11}, 0, 7), "0-3,8,10-11");
  EXPECT_EQ(describeCpus({0, 1, 2, 3}, 2, 2), "2-3");
}

TEST(CpuBinding, CpuListsParseAsTheKernelWritesThem) {
  EXPECT_EQ(parseCpuList("0-3,8,10-11\n"), (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(parseCpuList("5"), (std::vector<int>{5}));
  EXPECT_EQ(parseCpuList("2-3,0-1"), (std::vector<int>{0, 1, 2, 3}));  // sorted, deduplicated
  EXPECT_EQ(parseCpuList(""), (std::vector<int>{}));
  for (const char* bad : {"a", "1-", "-1", "3-1", "1x", "0-2y", "1,,x"}) {
    EXPECT_FALSE(parseCpuList(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace bnadapt::comm
