#!/usr/bin/env bash
# Fresh machine to a full test run: installs, builds with tests, runs every test (units,
# multi-rank runs at np = 1, 2, 3 against the float64 reference, data sources, checkpoints,
# reliability, the SLURM cluster, bad-input cases); then
#   - builds the GPU path (-DBNADAPT_WITH_NCCL=ON against /usr/local/cuda), checks that it
#     links NCCL and the CUDA runtime, and runs its units (GPU tests skip, naming why);
#   - rebuilds everything with ASan + UBSan and runs the units (with LeakSanitizer) and the
#     whole multi-rank suite on the instrumented tool.
# SKIP_NCCL=1 / SKIP_SANITIZERS=1 skip those stages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/launch/install_deps.sh"
"$root/launch/build.sh" -DBNADAPT_BUILD_TESTS=ON
(cd "$root/build" && ctest -j"$(nproc)" --output-on-failure --timeout 600 "$@")

if [ "${SKIP_NCCL:-0}" != 1 ]; then
  nccl="$root/build-nccl"
  cmake -S "$root" -B "$nccl" -DBNADAPT_WITH_NCCL=ON -DBNADAPT_BUILD_TESTS=ON
  cmake --build "$nccl" -j"$(nproc)" --target bnadapt_dist bnadapt_unit_tests bnadapt_nccl_selftest
  for exe in bnadapt_dist bnadapt_nccl_selftest; do
    for lib in libnccl libcudart; do
      ldd "$nccl/$exe" | grep -q "$lib" || { echo "test.sh: $exe does not link $lib" >&2; exit 1; }
    done
  done
  echo "test.sh: the GPU path builds and links NCCL and the CUDA runtime"
  (cd "$nccl" && ctest -j"$(nproc)" -L "unit|gpu" -LE tsan --output-on-failure --timeout 600)
fi

if [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
  asan="$root/build-asan"
  cmake -S "$root" -B "$asan" -DCMAKE_BUILD_TYPE=Debug -DBNADAPT_SANITIZE=ON -DBNADAPT_BUILD_TESTS=ON
  cmake --build "$asan" -j"$(nproc)"
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp
  # Units (one process, no MPI): ASan, UBSan and LeakSanitizer.
  (cd "$asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     ctest -j"$(nproc)" -L unit --output-on-failure --timeout 600)
  # The whole multi-rank suite on the instrumented tool (mpiexec passes the environment to
  # every rank): ASan and UBSan. Leak checking is off here: Open MPI unloads its plugins
  # before LeakSanitizer runs, so their exit-time allocations can be neither attributed nor
  # suppressed by name.
  (cd "$asan" && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
     ctest -j"$(nproc)" -LE "unit|slurm|bench|fuzz|configs" --output-on-failure --timeout 900)
fi
