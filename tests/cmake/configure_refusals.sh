#!/usr/bin/env bash
# CMake refuses a LibTorch it cannot build with, in one message that says what to do:
#   - older than 1.13 (a fake Torch config of version 1.12.1);
#   - the pre-C++11 ABI (a fake 2.1.0 whose TORCH_CXX_FLAGS has _GLIBCXX_USE_CXX11_ABI=0);
#   - a CUDA torch wheel with no CUDA toolkit where CUDAToolkit_ROOT points (a fake Python
#     that reports a CUDA torch);
#   - a BNADAPT_TORCH_PYTHON without torch.
# Each configure must fail, and its output must hold the expected sentence.
#   configure_refusals.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1
work=$2
rm -rf "$work" && mkdir -p "$work"
fails=0

fake_torch() {  # fake_torch DIR VERSION CXX_FLAGS: a Torch config that only sets variables
  mkdir -p "$1"
  cat > "$1/TorchConfigVersion.cmake" <<CFG
set(PACKAGE_VERSION "$2")
set(PACKAGE_VERSION_COMPATIBLE TRUE)
CFG
  cat > "$1/TorchConfig.cmake" <<CFG
set(TORCH_FOUND TRUE)
set(TORCH_LIBRARY "$1/../../../lib/libtorch.so")
set(TORCH_LIBRARIES "")
set(TORCH_CXX_FLAGS "$3")
CFG
}

expect_refusal() {  # expect_refusal NAME REGEX CMAKE_ARGS...
  local name=$1 regex=$2
  shift 2
  local out="$work/$name.log"
  if cmake -S "$src" -B "$work/$name" -DBNADAPT_BUILD_TESTS=OFF "$@" > "$out" 2>&1; then
    echo "FAIL $name: configure succeeded"
    fails=$((fails + 1))
  elif ! tr '\n' ' ' < "$out" | tr -s ' ' | grep -Eq "$regex"; then
    echo "FAIL $name: the message does not match /$regex/:"
    grep -A6 "CMake Error" "$out" | head -12
    fails=$((fails + 1))
  else
    echo "ok   $name: $(grep -A3 'CMake Error' "$out" | tail -3 | tr -s ' ' | tr '\n' ' ' | cut -c1-160)"
  fi
}

fake_torch "$work/old/share/cmake/Torch" 1.12.1 "-D_GLIBCXX_USE_CXX11_ABI=1"
expect_refusal too_old "LibTorch 1\.12\.1 .* is too old: bnadapt_dist needs LibTorch >= 1\.13" \
  -DBNADAPT_TORCH_PYTHON= -DTorch_DIR="$work/old/share/cmake/Torch"

fake_torch "$work/preabi/share/cmake/Torch" 2.1.0 "-D_GLIBCXX_USE_CXX11_ABI=0"
expect_refusal pre_cxx11_abi "uses the pre-C\+\+11 ABI .* Use the cxx11-ABI LibTorch" \
  -DBNADAPT_TORCH_PYTHON= -DTorch_DIR="$work/preabi/share/cmake/Torch"

fake_py="$work/fake_cuda_python"
cat > "$fake_py" <<PY
#!/bin/sh
printf '%s\n%s\n%s\n' "$work/preabi/share/cmake" "2.15.0+cu132" "13.2"
PY
chmod +x "$fake_py"
expect_refusal cuda_without_toolkit \
  "is a CUDA 13\.2 build: configuring against its LibTorch needs a CUDA toolkit >= 12\.6 \(nvcc\), none was found \(looked in CUDAToolkit_ROOT=/nonexistent/cuda\)" \
  -DBNADAPT_TORCH_PYTHON="$fake_py" -DCUDAToolkit_ROOT=/nonexistent/cuda

printf '#!/bin/sh\necho "ModuleNotFoundError: No module named torch" >&2\nexit 1\n' > "$work/no_torch_python"
chmod +x "$work/no_torch_python"
expect_refusal python_without_torch "cannot import torch .*run launch/install_deps.sh" \
  -DBNADAPT_TORCH_PYTHON="$work/no_torch_python"

echo "$((4 - fails)) passed, $fails failed"
[ "$fails" -eq 0 ]
