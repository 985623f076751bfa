#!/usr/bin/env bash
# gpu_selftest.sh: the CUDA/NCCL path, on a machine with NVIDIA GPUs. Exit 77 (skipped) without.
#
#   launch/gpu_selftest.sh
#
# Builds with -DBNADAPT_WITH_NCCL=ON against a LibTorch with CUDA into build-gpu/, then:
#   1. the CUDA/NCCL unit tests (ranks as threads; must not skip when a GPU is visible);
#   2. bnadapt_nccl_selftest under mpirun, 2 ranks when 2 GPUs are visible, else 1: exact
#      sums/maxima from host and device buffers, agree(), a latency line;
#   3. its fault cases: 'stall' (rank 0's stream blocked) and, at 2 ranks, 'missing' (a rank
#      never calls the all-reduce): each must end the whole job at the 3 s timeout with exit
#      code 8 (timeout) and the timeout message;
#   4. compare_cuda_with_cpu: the fixture models with --device cuda --backend nccl and with
#      --device cpu --backend mpi, each checked against the float64 reference and against
#      each other by tests/reference/check_outputs.py;
#   5. nccl_faults: on NCCL, rank 1 exits/is killed/segfaults in the forward passes or the
#      all-reduce, hangs in the all-reduce, runs out of GPU memory, or meets a NaN sample:
#      every rank ends within the timeout, nothing written; an empty shard equals the CPU.
# Exit: 0 passed, 1 a check failed, 2 cannot build (no CUDA LibTorch, ...), 77 no GPU.
#
# Environment:
#   LIBTORCH      LibTorch with CUDA (the folder holding share/cmake/Torch); default: the
#                 torch wheel of .venv/ (launch/install_deps.sh), else of `python3`
#   BUILD_DIR     build folder (default: build-gpu/ of this checkout); SKIP_BUILD=1 reuses it
#   JOBS          build parallelism (default: nproc)
#   MPIRUN        launcher (default: mpirun)
#   BNADAPT_PYTHON  Python with torch for fixtures and checks (default: .venv/bin/python,
#                 else python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
mpirun=${MPIRUN:-mpirun}
py=python3
[ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python"
py=${BNADAPT_PYTHON:-$py}

say() { echo "gpu_selftest: $*"; }
die() { local code=$1; shift; echo "gpu_selftest: $*" >&2; exit "$code"; }

# ---- 0. a GPU? (before a build of several minutes) ---------------------------------------
gpus=0
how=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  how="nvidia-smi -L lists $gpus"
elif [ -d /proc/driver/nvidia/gpus ]; then
  gpus=$(find /proc/driver/nvidia/gpus -mindepth 1 -maxdepth 1 | wc -l)
  how="/proc/driver/nvidia/gpus has $gpus"
else
  how="no nvidia-smi and no /proc/driver/nvidia (no NVIDIA driver)"
fi
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then  # nvidia-smi ignores it; CUDA does not
  visible=0
  [ -n "$CUDA_VISIBLE_DEVICES" ] && visible=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
  [ "$visible" -lt "$gpus" ] && gpus=$visible
  how="$how; CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' leaves $gpus"
fi
if [ "$gpus" -eq 0 ]; then
  say "SKIPPED: no GPU on this machine ($how)"
  exit 77
fi
say "$gpus GPU(s) ($how)"

# ---- 1. build against a CUDA LibTorch ----------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # CMake itself refuses a LibTorch that is too old or of the pre-C++11 ABI.
  if [ -n "${LIBTORCH:-}" ]; then
    torch_prefix=$LIBTORCH
    torch_args=(-DBNADAPT_TORCH_PYTHON= -DCMAKE_PREFIX_PATH="$torch_prefix")
    [ -f "$torch_prefix/share/cmake/Torch/TorchConfig.cmake" ] ||
      die 2 "LIBTORCH='$LIBTORCH' holds no share/cmake/Torch/TorchConfig.cmake"
    ls "$torch_prefix"/lib/libtorch_cuda.so* >/dev/null 2>&1 ||
      die 2 "LIBTORCH='$LIBTORCH' has no lib/libtorch_cuda.so: it is a CPU LibTorch"
  else
    torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) ||
      die 2 "no LibTorch: set LIBTORCH to an unpacked LibTorch with CUDA (pytorch.org, C++/LibTorch, cxx11 ABI), or install torch with CUDA for $py"
    "$py" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' ||
      die 2 "the torch of $py ($torch_prefix) has no CUDA (Debian's is CPU only): set LIBTORCH to a LibTorch with CUDA"
    torch_args=(-DBNADAPT_TORCH_PYTHON="$py")
  fi
  say "LibTorch: $torch_prefix"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBNADAPT_WITH_NCCL=ON \
    -DBNADAPT_BUILD_TESTS=ON -DBNADAPT_PYTHON="$py" "${torch_args[@]}"
  cmake --build "$build" -j"${JOBS:-$(nproc)}" --target bnadapt_dist bnadapt_unit_tests bnadapt_nccl_selftest
fi
ldd "$build/bnadapt_nccl_selftest" | grep -E 'libnccl|libcudart' || die 1 "bnadapt_nccl_selftest links no libnccl/libcudart"

launcher=("$mpirun")
ompi=0
if "$mpirun" --version 2>/dev/null | grep -q "Open MPI"; then
  ompi=1
  [ "$(id -u)" -eq 0 ] && launcher+=(--allow-run-as-root)
  launcher+=(--bind-to none)
fi
np=1
[ "$gpus" -ge 2 ] && np=2
failed=0

# ---- 2. units ----------------------------------------------------------------------------
say "unit tests of the CUDA/NCCL layer"
units=$("$build/tests/bnadapt_unit_tests" \
  --gtest_filter='CudaCheck.*:CudaDevices.*:NcclCommunicator.*:NcclErrorMessage.*:ChooseDevice.*:ChooseBackend.*:VisibleDevices.*:CheckDistinctDevices.*' 2>&1) ||
  { echo "$units"; say "FAIL: unit tests"; failed=1; }
echo "$units" | grep -E '^\[  (PASSED|FAILED|SKIPPED) ' || true
if echo "$units" | grep -q 'SKIPPED \] NcclCommunicator.OneRank'; then
  die 1 "FAILED: the driver lists $gpus GPU(s) but CUDA cannot use them: $(echo "$units" | grep -m1 '^no GPU:')"
fi

# ---- 3. NCCL across MPI processes --------------------------------------------------------
say "bnadapt_nccl_selftest on $np rank(s)"
set +e
unset BNADAPT_NCCL_SELFTEST_FAULT BNADAPT_NCCL_SELFTEST_TIMEOUT
"${launcher[@]}" -np "$np" "$build/bnadapt_nccl_selftest"
rc=$?
set -e
case $rc in
  0) ;;
  77) die 1 "FAILED: the CUDA runtime sees no GPU although the driver lists $gpus (see above)" ;;
  *) say "FAIL: bnadapt_nccl_selftest exited $rc"; failed=1 ;;
esac

faults=(stall)
[ "$np" -ge 2 ] && faults+=(missing)
for fault in "${faults[@]}"; do
  say "fault '$fault': expecting exit 8 after the 3 s timeout"
  log=$(mktemp)
  start=$(date +%s)
  set +e
  export BNADAPT_NCCL_SELFTEST_FAULT=$fault BNADAPT_NCCL_SELFTEST_TIMEOUT=3
  fault_env=()
  [ "$ompi" = 1 ] && fault_env=(-x BNADAPT_NCCL_SELFTEST_FAULT -x BNADAPT_NCCL_SELFTEST_TIMEOUT)
  timeout 120 "${launcher[@]}" "${fault_env[@]}" -np "$np" "$build/bnadapt_nccl_selftest" >"$log" 2>&1
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  grep -E 'expected error|FAIL' "$log" || true
  if [ "$rc" -ne 8 ] || ! grep -q 'did not complete within 3 s' "$log"; then
    cat "$log"
    say "FAIL: fault '$fault': exit $rc after ${took} s (expected 8 and the timeout message)"
    failed=1
  else
    say "fault '$fault': ended with exit 8 after ${took} s"
  fi
  rm -f "$log"
done
unset BNADAPT_NCCL_SELFTEST_FAULT BNADAPT_NCCL_SELFTEST_TIMEOUT

# ---- 4. CUDA/NCCL vs CPU/MPI on the fixture models ----------------------------------------
compare_cuda_with_cpu() {
  local bin=$build/bnadapt_dist
  local fix=$build/fixtures runs=$build/gpu_runs status=0
  "$py" "$root/tests/fixtures/make_fixtures.py" "$fix"
  # kind model data samples batch-size reference-tolerance (resnet: see tests/reference/README.md)
  local cases=("mlp mlp_scripted.pt data_vec48.pt 64 10 1e-5"
               "mixed mixed_scripted.pt data_img16.pt 50 8 1e-5"
               "resnet resnet_scripted.pt data_img32.pt 200 16 5e-5")
  for c in "${cases[@]}"; do
    read -r kind model data samples batch tol <<<"$c"
    local dirs=()
    for dev in cpu cuda; do
      local backend=mpi
      [ "$dev" = cuda ] && backend=nccl
      local dir=$runs/${kind}_${dev}_np$np  # _npK: check_outputs.py checks the world size
      rm -rf "$dir" && mkdir -p "$dir"
      "${launcher[@]}" -np "$np" "$bin" --device "$dev" --backend "$backend" \
        --model "$fix/$model" --data "$fix/$data" --samples "$samples" --batch-size "$batch" \
        --output "$dir/out.pt" --stats-output "$dir/stats.pt" --report "$dir/report.json" ||
        { say "FAIL: $kind on $dev/$backend"; status=1; continue 2; }
      dirs+=("$dir")
    done
    # Both against the float64 reference, and cuda against cpu (the first) within 1e-5.
    "$py" "$root/tests/reference/check_outputs.py" --kind "$kind" --model "$fix/$model" \
      --data "$fix/$data" --samples "$samples" --batch-size "$batch" --weighting samples \
      --runs "${dirs[@]}" --tol "$tol" --cross-tol 1e-5 ||
      { say "FAIL: $kind: CUDA/NCCL and CPU/MPI statistics differ"; status=1; }
  done
  return $status
}
compare_cuda_with_cpu || failed=1

# ---- 5. reliability on NCCL (issue item 15): a dead rank, an empty shard, a NaN sample and
# an out-of-memory on one rank; each must end every rank within the timeout, write nothing.
nccl_faults() {
  local bin=$build/bnadapt_dist fix=$build/fixtures out=$build/gpu_runs/faults status=0
  local common=(--device cuda --backend nccl --timeout 20 --stats-output "$out/stats.pt")
  local mlp=(--model "$fix/mlp_scripted.pt" --samples 40 --batch-size 5)
  expect_fail() {  # expect_fail NAME CODE-REGEX CMD...: non-zero within 30 s, nothing written
    local name=$1 codes=$2; shift 2
    rm -rf "$out" && mkdir -p "$out"
    local t0 rc=0
    t0=$(date +%s)
    timeout 60 "$@" > "$out/log" 2>&1 || rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [[ ! "$rc" =~ ^($codes)$ ]] || [ "$took" -gt 30 ] || [ -e "$out/stats.pt" ]; then
      say "FAIL: $name: exit $rc after ${took}s (expected $codes within 30 s, nothing written)"
      tail -5 "$out/log" >&2
      status=1
    else
      say "$name: exit $rc after ${took}s"
    fi
  }
  local n=2
  [ "$np" -lt 2 ] && n=1
  if [ "$n" -eq 2 ]; then
    for action in exit kill segv; do
      for phase in forward allreduce; do
        BNADAPT_FAULT=1:$phase:$action expect_fail "rank 1 $action in $phase" "[1-9][0-9]*" \
          "${launcher[@]}" -np 2 "$bin" "${common[@]}" "${mlp[@]}" --data "$fix/data_vec48.pt"
      done
    done
    BNADAPT_FAULT=1:allreduce:sleep expect_fail "rank 1 hangs in the all-reduce" "8" \
      "${launcher[@]}" -np 2 "$bin" "${common[@]}" "${mlp[@]}" --data "$fix/data_vec48.pt"
    BNADAPT_FAULT=1:forward:oom expect_fail "rank 1 out of GPU memory" "[1-9][0-9]*" \
      "${launcher[@]}" -np 2 "$bin" "${common[@]}" "${mlp[@]}" --data "$fix/data_vec48.pt"
    expect_fail "a NaN sample on rank 1" "3" \
      "${launcher[@]}" -np 2 "$bin" "${common[@]}" "${mlp[@]}" --data "$fix/data_vec48_nan.pt"
  fi
  # Empty shard: one global batch, the other rank has none; must equal the CPU result.
  rm -rf "$out" && mkdir -p "$out"
  "${launcher[@]}" -np "$n" "$bin" --device cuda --backend nccl --model "$fix/mlp_scripted.pt" \
    --data "$fix/data_vec48.pt" --samples 5 --batch-size 5 --stats-output "$out/cuda.pt" &&
  "${launcher[@]}" -np 1 "$bin" --device cpu --model "$fix/mlp_scripted.pt" \
    --data "$fix/data_vec48.pt" --samples 5 --batch-size 5 --stats-output "$out/cpu.pt" &&
  "$py" - "$out/cuda.pt" "$out/cpu.pt" <<'PY' || { say "FAIL: empty shard on NCCL"; status=1; }
import sys, torch
a, b = (torch.load(p) for p in sys.argv[1:])
worst = max(float(((a[k].double() - b[k].double()).abs() / b[k].double().abs().clamp_min(1e-6)).max())
            for k in a if k.endswith(("running_mean", "running_var")))
print(f"empty shard on NCCL vs CPU: max relative difference {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
  return $status
}
nccl_faults || failed=1

if [ "$failed" -ne 0 ]; then
  say "FAILED"
  exit 1
fi
say "PASSED"
