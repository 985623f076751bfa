#!/usr/bin/env bash
# The performance benchmark (tests/benchmarks/perf_benchmark.py): tool vs bare forward, tool
# vs the Python anchor (wall, RSS), start-up, scaling with BN layers and world size.
#   tests/benchmarks/run_perf_benchmark.sh [BUILD_DIR] [perf_benchmark.py options]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
shift || true
exec "${BNADAPT_PYTHON:-$root/.venv/bin/python}" "$root/tests/benchmarks/perf_benchmark.py" "$build" "$@"
