// Test-only fault injection, for the reliability tests: BNADAPT_FAULT="RANK:PHASE:ACTION"
// makes rank RANK, on entering PHASE (setup, forward, allreduce, write), do ACTION:
// sleep (hang for an hour), stop (SIGSTOP itself, watchdog included), exit (exit code 42),
// kill (SIGKILL itself), segv (SIGSEGV).
// Unset in production; the variable is read once.
#pragma once

namespace bnadapt::app {

void maybeInjectFault(const char* phase, int rank);

}  // namespace bnadapt::app
