// Before any work: every output can be written, none names an input or another output (also
// via links), and none exists unless --overwrite (or --in-place for the checkpoint).
#pragma once

#include "config/settings.h"

namespace bnadapt::app {

// Throws kOutput or kUsage naming the flag and the path. Rank 0 calls it during setup.
void checkOutputPaths(const config::Settings& st);

}  // namespace bnadapt::app
