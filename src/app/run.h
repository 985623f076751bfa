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

// What every rank of this process shares, set once before run(): the cores it runs on (a
// launcher's default binding narrower than the rank's node share is widened, any other one
// that leaves fewer cores than threads gets one warning: comm/cpu_binding.h), intra-op
// threads (--threads, else min(online cores / ranks on this host, cores allowed)) and full
// float32 precision on CUDA (no TF32).
void configureProcess(const config::Settings& settings, const comm::Communicator& comm);

// Runs the job with parsed settings; every rank calls it. Returns the agreed exit code. It
// touches no process-wide state (see app/job.h): ranks may be threads of one process.
ExitCode run(const config::Settings& settings, comm::Communicator& comm, Watchdog& watchdog);

// Decoding threads per rank: --data-threads, else half the intra-op threads, at least 1.
int dataThreads(const config::Settings& settings, int intra_op);

}  // namespace bnadapt::app
