#include "app/run.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include "app/agreement.h"
#include "app/fault_injection.h"
#include "app/job.h"
#include "comm/cpu_binding.h"
#include "comm/launch_check.h"
#include "common/log.h"
#include "common/torch_compat.h"
#include "config/config_loader.h"
#include "config/options.h"

namespace bnadapt::app {

int dataThreads(const config::Settings& settings, int intra_op) {
  return settings.data_threads > 0 ? settings.data_threads : std::max(1, intra_op / 2);
}

namespace {

// Widens a launcher's default binding to the rank's node share, or warns once when the rank
// has fewer cores than threads (comm/cpu_binding.h). Returns the intra-op threads: --threads,
// else min(node share, cores the rank may use).
int claimCores(const config::Settings& settings, const comm::Communicator& comm) {
  const std::vector<int> node = comm::nodeCpus();
  const comm::CoreCounts counts{comm::allowedCores(), static_cast<int>(node.size()),
                                comm.localSize(), comm.localRank()};
  const int share = comm::nodeShare(counts);
  const int planned = settings.threads > 0 ? settings.threads : share;
  const comm::BindingPlan plan =
      comm::planBinding(comm::processEnv, counts, planned, dataThreads(settings, planned));
  if (plan.action == comm::BindingPlan::Action::kWiden) {
    const std::string cores = comm::describeCpus(node, plan.first_core, plan.cores);
    if (comm::setProcessAffinity(node, plan.first_core, plan.cores)) {
      log::info("the launcher's default binding gave this rank ", counts.allowed,
                " core(s); widened to its node share, cores ", cores);
    } else {
      log::warn("could not widen the launcher's binding (", counts.allowed,
                " core(s)) to cores ", cores, "; launch with `mpirun --bind-to none`");
    }
  } else if (plan.action == comm::BindingPlan::Action::kWarn) {
    log::warn(plan.message);
  } else if (!plan.message.empty()) {
    log::info(plan.message);
  }
  const int cores = comm::allowedCores();
  if (settings.threads > cores && plan.action != comm::BindingPlan::Action::kWarn) {
    log::warn("--threads ", settings.threads, " is more than the ", cores,
              " core(s) this rank may use (", counts.online, " online, ", comm.localSize(),
              " rank(s) on this node): the threads share cores; use --threads ", cores,
              " or fewer");
  }
  return settings.threads > 0 ? settings.threads : std::min(share, cores);
}

}  // namespace

void configureProcess(const config::Settings& settings, const comm::Communicator& comm) {
  at::set_num_threads(claimCores(settings, comm));
  // TF32 would put CUDA convolutions 1e-3 away from the CPU's results. Only where CUDA is
  // usable: touching the CUDA backend's settings otherwise costs ~100 MiB of RSS per rank.
  if (settings.device != comm::DeviceRequest::kCpu && torch::cuda::is_available()) {
    compat::disableTF32OnCuda();
  }
}

// The pipeline, one phase after another (README "How it works"); each phase is agreed by
// every rank, and the first that fails ends the run with the code every rank agreed on.
ExitCode run(const config::Settings& settings, comm::Communicator& comm, Watchdog& watchdog) {
  Job job(settings, comm, watchdog);
  using Phase = int (Job::*)();
  for (Phase phase : {&Job::start, &Job::place, &Job::load, &Job::checkConsistency,
                      &Job::connect, &Job::evaluateBefore, &Job::forward, &Job::checkStatistics,
                      &Job::reduce, &Job::finalize, &Job::evaluateAfter, &Job::write,
                      &Job::shutdown}) {
    if (const int code = (job.*phase)()) return static_cast<ExitCode>(code);
  }
  return ExitCode::kOk;
}

std::string buildVersion() {
  return std::string("bnadapt_dist ") + BNADAPT_VERSION + " (LibTorch " + compat::kTorchVersion +
         ")";
}

namespace {

// Every rank runs rank 0's build: compared before anything else moves between ranks.
int checkSameBuild(comm::Communicator& comm, Watchdog& watchdog) {
  const std::string mine = reportedVersion(buildVersion(), comm.rank());
  std::string rank0 = mine;
  watchdog.enter("comparing the ranks' builds");
  comm.broadcast(rank0, 0);
  return agreedPhase(comm, &watchdog, "comparing the ranks' builds", [&] {
    BNA_CHECK(mine == rank0, ExitCode::kCommunication, "rank ", comm.rank(), " runs ", mine,
              " but rank 0 runs ", rank0, ": start every rank from the same build");
  });
}

}  // namespace

int main(const std::vector<std::string>& args, comm::Communicator& comm, Watchdog& watchdog) {
  log::setIdentity(comm.hostname(), comm.rank(), comm.size());
  // Processes the launcher did not wire into one job (srun without --mpi=pmix: N
  // singletons) stop before any work; every rank reaches the same verdict on its own.
  if (const std::string launch = comm::checkLaunch(comm::processEnv, comm.size());
      !launch.empty()) {
    if (comm.rank() == 0) log::error(launch);
    return static_cast<int>(ExitCode::kCommunication);
  }
  try {
    if (int code = checkSameBuild(comm, watchdog)) return code;
    config::Settings settings;
    bool help = false;
    if (int code = agreedPhase(comm, &watchdog, "reading the settings", [&] {
          maybeInjectFault("settings", comm.rank());
          try {
            settings = config::parseSettings(args);
          } catch (const config::HelpRequested&) {
            help = true;
          }
        })) {
      if (comm.rank() == 0) std::fprintf(stderr, "run 'bnadapt_dist --help' for usage\n");
      return code;
    }
    if (help) {
      if (comm.rank() == 0) std::fputs(config::usage().c_str(), stdout);
      return 0;
    }
    watchdog.setTimeout(static_cast<double>(settings.timeout_seconds));
    configureProcess(settings, comm);
    return static_cast<int>(run(settings, comm, watchdog));
  } catch (const Error& e) {
    // A collective itself failed: the other ranks cannot be told; end the whole job.
    log::error(e.what());
    comm.abortJob(static_cast<int>(e.code()));
  } catch (const std::exception& e) {
    log::error("unexpected error: ", e.what());
    comm.abortJob(static_cast<int>(ExitCode::kInternal));
  }
  return static_cast<int>(ExitCode::kInternal);  // not reached: abortJob does not return
}

}  // namespace bnadapt::app
