// Test-only fault injection, for the reliability tests: BNADAPT_FAULT="RANK:PHASE:ACTION"
// makes rank RANK, on entering PHASE, do ACTION:
// sleep (hang for an hour), stop (SIGSTOP itself, watchdog included), exit (exit code 42),
// kill (SIGKILL itself), segv (SIGSEGV), oom (throws the error an out-of-memory
// allocation would, exit 3 through the agreed failure path).
// Phases: setup, forward, allreduce, write (before anything is written), and, inside the
// writing on rank 0 (io::StagedFile's fault points, see io/files.h): write-mid (an output
// partly written), write-fsynced (outputs complete and fsynced, before the first link or
// rename), write-linked (a replacement linked to its temp name, before its rename). The
// action fires at the first point that matches.
// Unset in production: the variable is read once, and without it the io points stay off.
#pragma once

#include <string>

namespace bnadapt::app {

// Also arms io's write points for `rank` on its first call when BNADAPT_FAULT is set.
// Start-up points: mpi-init (before MPI starts; the rank is the launcher's), settings.
void maybeInjectFault(const char* phase, int rank);

// BNADAPT_FAULT="RANK:version:TEXT" makes rank RANK report TEXT as its build (a rank started
// from another build); otherwise `actual`.
std::string reportedVersion(const std::string& actual, int rank);

}  // namespace bnadapt::app
