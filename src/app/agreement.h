// Phase agreement: a rank runs a phase's work, then every rank agrees on the outcome before
// any rank goes on (comm::agree), so that a failure anywhere stops every rank at the same
// point with the same exit code, and the job prints one error line.
#pragma once

#include <functional>

#include "app/watchdog.h"
#include "comm/communicator.h"

namespace bnadapt::app {

// Runs `body` on this rank, then agrees with every rank on the outcome (a collective: every
// rank calls it, in the same order). Returns 0 when all succeeded, else the worst exit code.
// The watchdog (if any) enters `phase`, then "<phase>, waiting for the other ranks". Rank 0
// logs the one error line (naming the failing rank and `phase` when that is not rank 0); a
// rank that failed differently logs its own failure as a warning.
int agreedPhase(comm::Communicator& comm, Watchdog* watchdog, const char* phase,
                const std::function<void()>& body);

}  // namespace bnadapt::app
