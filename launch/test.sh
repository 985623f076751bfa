#!/usr/bin/env bash
# Fresh machine to a full test run; .ci/run runs it as it is (the per-commit tier).
#
#   launch/test.sh [--all] [ctest args...]
#
# Stages (each prints its time):
#   1. install: Debian's packages and .venv/ with the pinned torch wheel (launch/install_deps.sh)
#   2. primary: LibTorch 2.x of the .venv wheel (a CUDA build) with the NCCL path on, into
#      build/; checks with ldd that bnadapt_dist links libtorch_cuda, libnccl and libcudart
#      (the wheel's); runs every test but the long tier (ctest -LE long): units, multi-rank
#      runs at np = 1, 2, 3 against the float64 reference, data, checkpoints, reliability, the
#      SLURM cluster, bad input, corpus replays. GPU tests skip, naming why.
#   3. compat+sanitizers: Debian's LibTorch 1.13 (CPU), built with ASan + UBSan into
#      build-compat/, fixtures made by Debian's torch 1.13: the units (with LeakSanitizer) and
#      the multi-rank smoke subset (label "smoke": a few real mpiexec runs per feature).
# --all adds the long tier (label "long": the whole malformed-config corpus with its time
# limit, 60 s of libFuzzer per parser, 60 kill-during-write runs) to stage 2.
# SKIP_COMPAT=1 skips stage 3. Extra arguments go to stage 2's ctest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
all=0
if [ "${1:-}" = "--all" ]; then
  all=1
  shift
fi
jobs=$(nproc)
stage_start=$(date +%s)
stage_done() {
  local now
  now=$(date +%s)
  echo "test.sh: stage '$1' took $((now - stage_start)) s"
  stage_start=$now
}

"$root/launch/install_deps.sh"
stage_done install

# ---- 2. primary: the torch wheel's LibTorch, NCCL on ---------------------------------------
BUILD_DIR="$root/build" "$root/launch/build.sh" -DBNADAPT_BUILD_TESTS=ON -DBNADAPT_WITH_NCCL=ON
for lib in libtorch_cuda libnccl libcudart; do
  where=$(ldd "$root/build/bnadapt_dist" | awk -v l="$lib" 'index($1, l) == 1 {print $3}')
  [ -n "$where" ] || { echo "test.sh: bnadapt_dist does not link $lib" >&2; exit 1; }
  case "$where" in
    "$root"/.venv/*) echo "test.sh: bnadapt_dist loads $lib from the torch wheel: $where" ;;
    *) echo "test.sh: bnadapt_dist loads $lib from $where, not from the torch wheel" >&2; exit 1 ;;
  esac
done
tier=(-LE long)
[ "$all" = 1 ] && tier=()
(cd "$root/build" && ctest -j"$jobs" --output-on-failure --timeout 900 "${tier[@]}" "$@")
stage_done "primary (LibTorch 2.x wheel, NCCL on)"

# ---- 3. compat + sanitizers: Debian's LibTorch 1.13 ----------------------------------------
if [ "${SKIP_COMPAT:-0}" != 1 ]; then
  compat="$root/build-compat"
  cmake -S "$root" -B "$compat" -DCMAKE_BUILD_TYPE=Debug -DBNADAPT_TORCH_PYTHON= \
    -DBNADAPT_NEWER_PYTHON="$root/.venv/bin/python" \
    -DBNADAPT_PYTHON=/usr/bin/python3 -DBNADAPT_SANITIZE=ON -DBNADAPT_BUILD_TESTS=ON
  cmake --build "$compat" -j"$jobs" --target bnadapt_dist bnadapt_unit_tests
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp
  # Units (one process, no MPI): ASan, UBSan and LeakSanitizer. Not here, both run in
  # stage 2: the comparison with torchvision's preprocessing (the tool matches Pillow 13's
  # resize, and Debian's Pillow 9.4 orders the two passes differently for tall images), and
  # the 200 truncated or bit-flipped models (LibTorch 1.13's own TorchScript importer
  # segfaults on some of them, in ScriptTypeParser::parseClassConstant; 2.x fails cleanly).
  (cd "$compat" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     ctest -j"$jobs" -L unit -LE "tsan|long" -E '^(image_decode_vs_torchvision|hostile_models)$' \
       --output-on-failure --timeout 900)
  # The smoke subset on the instrumented tool (mpiexec passes the environment to every rank).
  # Leak checking is off here: Open MPI unloads its plugins before LeakSanitizer runs, so
  # their exit-time allocations can be neither attributed nor suppressed by name.
  (cd "$compat" && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
     ctest -j"$jobs" -L smoke --output-on-failure --timeout 900)
  stage_done "compat (LibTorch 1.13) + ASan/UBSan"
fi
