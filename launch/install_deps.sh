#!/usr/bin/env bash
# Installs what bnadapt_dist needs to build and test, from Debian's packages. Idempotent: does
# nothing when everything is present. Shared by README, launch/demo.sh, launch/test.sh and CI.
set -euo pipefail

packages=(
  build-essential cmake
  libtorch-dev                 # LibTorch 1.13 (CPU)
  libopenmpi-dev openmpi-bin   # MPI
  nlohmann-json3-dev           # config parsing, report
  libopencv-dev zlib1g-dev     # image folders (OpenCV 4.6), gzipped IDX files
  dataset-fashion-mnist        # the demo's data (/usr/share/datasets/fashion-mnist)
  libgtest-dev                 # unit tests
  clang-14 libclang-rt-14-dev  # tests/fuzz: libFuzzer with ASan + UBSan
  python3-torch python3-torchvision  # test fixtures and float64 reference (/usr/bin/python3)
  slurm-wlm munge              # tests/slurm: a private one-node SLURM cluster (srun --mpi=pmix)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all packages present"
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
