#!/usr/bin/env bash
# Installs what bnadapt_dist needs to build and test. Idempotent: does nothing when everything
# is present. Shared by README, launch/demo.sh, launch/test.sh and CI.
#   - Debian's packages (MPI, OpenCV, GoogleTest, ..., and libtorch-dev 1.13 with python3-torch
#     for the compatibility build);
#   - .venv/ in the project root with PyPI's torch wheel (the primary LibTorch, a CUDA build)
#     and torchvision, pinned below: the build finds LibTorch through it, and the Python
#     fixtures, references and output checks run on it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
TORCH_PIN=2.15.0
TORCHVISION_PIN=0.29.2

packages=(
  build-essential cmake
  libtorch-dev                 # LibTorch 1.13 (CPU)
  libopenmpi-dev openmpi-bin   # MPI
  nlohmann-json3-dev           # config parsing, report
  libopencv-dev zlib1g-dev     # image folders (OpenCV 4.6), gzipped IDX files
  dataset-fashion-mnist        # the demo's data (/usr/share/datasets/fashion-mnist)
  libgtest-dev                 # unit tests
  clang-14 libclang-rt-14-dev  # tests/fuzz: libFuzzer with ASan + UBSan
  python3-torch python3-torchvision  # fixtures and references of the 1.13 build (/usr/bin/python3)
  python3-venv                 # .venv/ when no other Python 3 with venv is on PATH
  slurm-wlm munge              # tests/slurm: a private one-node SLURM cluster (srun --mpi=pmix)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all Debian packages present"
else
  echo "install_deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

venv="$root/.venv"
if "$venv/bin/python" - "$TORCH_PIN" "$TORCHVISION_PIN" 2>/dev/null <<'PY'
import sys, torch, torchvision
sys.exit(0 if (torch.__version__.split("+")[0], torchvision.__version__.split("+")[0]) == tuple(sys.argv[1:]) else 1)
PY
then
  echo "install_deps: .venv has torch $TORCH_PIN and torchvision $TORCHVISION_PIN"
else
  # The pyenv or system python3 (>= 3.10: the wheel's floor); the venv keeps pip's packages
  # out of the system's.
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  echo "install_deps: installing torch $TORCH_PIN (CUDA build, about 4.5 GiB with its NVIDIA" \
       "libraries; cached by pip after the first time) and torchvision $TORCHVISION_PIN into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install --progress-bar on "torch==$TORCH_PIN" "torchvision==$TORCHVISION_PIN"
  echo "install_deps: .venv ready: $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)')"
fi

# The model zoo's architectures (timm) and the peers of tests/benchmarks/compare_peers.py and
# launch/demo/nncf_recovery.py (fvcore, NNCF 3.x; torchao for nncf.strip), never moving torch.
EXTRAS=(timm==1.0.31 fvcore==0.1.5.post20221221 nncf==3.4.0 torchao==0.18.0)
if ! "$venv/bin/python" - "${EXTRAS[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if all(version(n) == v for n, v in (a.split("==") for a in sys.argv[1:])) else 1)
PY
then
  echo "install_deps: installing ${EXTRAS[*]} into $venv"
  "$venv/bin/python" -m pip install -q "${EXTRAS[@]}" "torch==$TORCH_PIN" "torchvision==$TORCHVISION_PIN"
fi
