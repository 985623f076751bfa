#!/usr/bin/env bash
# Fresh machine to a full test run: installs, builds with tests, runs every test (units,
# multi-rank runs at np = 1, 2, 3 against the float64 reference, bad-input cases).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/launch/install_deps.sh"
"$root/launch/build.sh" -DBNADAPT_BUILD_TESTS=ON
cd "$root/build"
ctest -j"$(nproc)" --output-on-failure --timeout 600 "$@"
