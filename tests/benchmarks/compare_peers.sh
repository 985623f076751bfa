#!/usr/bin/env bash
# bnadapt_dist next to fvcore, torch.optim.swa_utils, NNCF and per-rank averaging
# (tests/benchmarks/compare_peers.py): compare_peers.sh [BUILD_DIR] [compare_peers.py options]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
shift || true
exec "${BNADAPT_PYTHON:-$root/.venv/bin/python}" "$root/tests/benchmarks/compare_peers.py" "$build" "$@"
