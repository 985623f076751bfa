// The pipeline of one rank, top to bottom: settings, model, data, forward, all-reduce, write.
#pragma once

#include <string>
#include <vector>

#include "app/watchdog.h"
#include "comm/communicator.h"
#include "common/error.h"
#include "config/settings.h"

namespace bnadapt::app {

// Parses `args` (argv[1..]) and runs the job. Every rank calls it; returns the exit code
// every rank agreed on. Errors that leave ranks unable to agree end the job (MPI_Abort).
// `watchdog`: the process's, running since before MPI started (its timeout becomes the
// settings' once they are read).
int main(const std::vector<std::string>& args, comm::Communicator& comm, Watchdog& watchdog);

// "bnadapt_dist 0.1.0 (LibTorch 2.15.0)": what every rank must share (exit 5 otherwise).
std::string buildVersion();

// What every rank of this process shares, set once before run(): intra-op threads (--threads,
// else usable cores / ranks on this host) and full float32 precision on CUDA (no TF32).
void configureProcess(const config::Settings& settings, const comm::Communicator& comm);

// Runs the job with parsed settings; every rank calls it. Returns the agreed exit code. It
// touches no process-wide state (see app/job.h): ranks may be threads of one process.
ExitCode run(const config::Settings& settings, comm::Communicator& comm, Watchdog& watchdog);

// Intra-op threads per rank when --threads is 0: usable cores / ranks on this host, >= 1.
int defaultThreads(int local_ranks);

}  // namespace bnadapt::app
