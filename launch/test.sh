#!/usr/bin/env bash
# Fresh machine to a full test run: installs, builds with tests, runs every test (units,
# multi-rank runs at np = 1, 2, 3 against the float64 reference, checkpoints, bad-input
# cases), then rebuilds the unit tests with ASan + UBSan and runs them (the parsers' fuzz
# tests included). SKIP_SANITIZERS=1 skips that second stage.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/launch/install_deps.sh"
"$root/launch/build.sh" -DBNADAPT_BUILD_TESTS=ON
(cd "$root/build" && ctest -j"$(nproc)" --output-on-failure --timeout 600 "$@")

if [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
  asan="$root/build-asan"
  cmake -S "$root" -B "$asan" -DCMAKE_BUILD_TYPE=Debug -DBNADAPT_SANITIZE=ON -DBNADAPT_BUILD_TESTS=ON
  cmake --build "$asan" -j"$(nproc)" --target bnadapt_unit_tests
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp
  (cd "$asan" && ctest -j"$(nproc)" -L unit --output-on-failure --timeout 600)
fi
