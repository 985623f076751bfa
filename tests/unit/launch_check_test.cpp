#include "comm/launch_check.h"

#include <cstdlib>
#include <map>

#include <gtest/gtest.h>

#include "fake_env.h"

namespace bnadapt::comm {
namespace {

using fake_env::Env;
using fake_env::lookup;
using fake_env::with;

// The environments the launchers really leave (Slurm 22.05, Open MPI 4.1, checked on the
// one-node test cluster of tests/slurm/run_slurm_test.sh).
const Env kBatchScript{{"SLURM_NTASKS", "2"}, {"SLURM_NPROCS", "2"}, {"SLURM_PROCID", "0"}};
const Env kSrunTask{{"SLURM_NTASKS", "2"},         {"SLURM_PROCID", "1"},
                    {"SLURM_STEP_ID", "0"},        {"SLURM_STEPID", "0"},
                    {"SLURM_STEP_NUM_TASKS", "2"}, {"PMIX_RANK", "1"}};
const Env kMpirunInBatch{{"OMPI_COMM_WORLD_SIZE", "2"}, {"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}};

TEST(CheckLaunch, NoLauncherIsFine) {
  EXPECT_EQ(checkLaunch(lookup({}), 1), "");
  EXPECT_EQ(checkLaunch(lookup({}), 4), "");  // e.g. a launcher we do not know
}

TEST(CheckLaunch, ConsistentLaunchesAreFine) {
  EXPECT_EQ(checkLaunch(lookup(kSrunTask), 2), "");
  EXPECT_EQ(checkLaunch(lookup(kMpirunInBatch), 2), "");
  EXPECT_EQ(checkLaunch(lookup({{"PMI_SIZE", "8"}, {"PMI_RANK", "3"}}), 8), "");
  EXPECT_EQ(checkLaunch(lookup({{"OMPI_COMM_WORLD_SIZE", "1"}}), 1), "");
}

TEST(CheckLaunch, SrunWithoutPmixGivesSingletons) {
  const std::string msg = checkLaunch(lookup(kSrunTask), 1);
  EXPECT_NE(msg.find("singleton (world size 1)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("srun started 2 processes (SLURM_STEP_NUM_TASKS=2)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("srun --mpi=pmix"), std::string::npos) << msg;
}

TEST(CheckLaunch, StepCountWinsOverAllocationCount) {
  // srun -n 2 inside an allocation of 8 tasks: the step has 2.
  const Env env = with(kSrunTask, {{"SLURM_NTASKS", "8"}});
  EXPECT_EQ(checkLaunch(lookup(env), 2), "");
  EXPECT_NE(checkLaunch(lookup(env), 8), "");
}

TEST(CheckLaunch, SlurmNtasksInsideAStepWithoutStepCount) {
  Env env = kSrunTask;
  env.erase("SLURM_STEP_NUM_TASKS");
  EXPECT_EQ(checkLaunch(lookup(env), 2), "");
  EXPECT_NE(checkLaunch(lookup(env), 1).find("SLURM_NTASKS=2"), std::string::npos);
}

TEST(CheckLaunch, BatchScriptItselfIsNotAStep) {
  // One process started in the batch script (no srun): a valid 1-rank run.
  EXPECT_EQ(checkLaunch(lookup(kBatchScript), 1), "");
}

TEST(CheckLaunch, LauncherCountWinsOverSlurm) {
  // mpirun inside an allocation: its orted may carry the srun step's SLURM_* counts
  // (one task per node); Open MPI's own count is the one that matters.
  const Env env = with(kMpirunInBatch, {{"OMPI_COMM_WORLD_SIZE", "4"},
                                        {"SLURM_STEP_ID", "0"},
                                        {"SLURM_STEP_NUM_TASKS", "1"}});
  EXPECT_EQ(checkLaunch(lookup(env), 4), "");
  const std::string msg = checkLaunch(lookup(env), 1);
  EXPECT_NE(msg.find("Open MPI's mpirun started 4 processes (OMPI_COMM_WORLD_SIZE=4)"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("ldd bnadapt_dist"), std::string::npos) << msg;
  // PMI_SIZE (srun --mpi=pmi2, MPICH mpiexec) also wins over the SLURM counts.
  const Env pmi = with(kSrunTask, {{"PMI_SIZE", "2"}, {"SLURM_STEP_NUM_TASKS", "1"}});
  EXPECT_EQ(checkLaunch(lookup(pmi), 2), "");
  EXPECT_NE(checkLaunch(lookup(pmi), 1).find("PMI_SIZE=2"), std::string::npos);
}

TEST(CheckLaunch, PartialWorldIsAnErrorToo) {
  const std::string msg = checkLaunch(lookup({{"OMPI_COMM_WORLD_SIZE", "8"}}), 4);
  EXPECT_NE(msg.find("MPI_COMM_WORLD has 4 ranks, but Open MPI's mpirun started 8 processes"),
            std::string::npos) << msg;
}

TEST(CheckLaunch, HeterogeneousStepsAreNotChecked) {
  EXPECT_EQ(checkLaunch(lookup(with(kSrunTask, {{"SLURM_HET_SIZE", "2"}})), 5), "");
}

TEST(CheckLaunch, MalformedCountsAreIgnored) {
  for (const char* bad : {"", "x", "2x", "-2", "0", "99999999999", " 2"}) {
    EXPECT_EQ(checkLaunch(lookup({{"OMPI_COMM_WORLD_SIZE", bad}}), 3), "") << bad;
  }
  // A malformed Open MPI count falls through to the next source.
  const Env env = with(kSrunTask, {{"OMPI_COMM_WORLD_SIZE", "junk"}});
  EXPECT_NE(checkLaunch(lookup(env), 1).find("SLURM_STEP_NUM_TASKS=2"), std::string::npos);
}

TEST(CheckLaunch, ProcessEnvReadsTheRealEnvironment) {
  ::setenv("BNADAPT_LAUNCH_CHECK_TEST", "7", 1);
  EXPECT_EQ(processEnv("BNADAPT_LAUNCH_CHECK_TEST"), std::optional<std::string>("7"));
  ::unsetenv("BNADAPT_LAUNCH_CHECK_TEST");
  EXPECT_EQ(processEnv("BNADAPT_LAUNCH_CHECK_TEST"), std::nullopt);
}

}  // namespace
}  // namespace bnadapt::comm
