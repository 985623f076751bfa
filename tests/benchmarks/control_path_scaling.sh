#!/usr/bin/env bash
# The control path against the world size: a tiny model (so the forward passes cost next to
# nothing) at np = 1, 2, 4, 8, 16 under mpiexec (oversubscribed beyond the cores), 10
# batches of 4 samples. Prints a markdown table from each run's report: wall time of the
# launch, setup (MPI already up: model, data, plans, consistency check), the consistency
# check alone (fingerprint broadcast + agreement), the one all-reduce, and whether the
# statistics are byte-identical to np = 1.
#
#   tests/benchmarks/control_path_scaling.sh [BUILD_DIR] [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
out=${2:-$build/bench_scaling}
fix=$build/fixtures
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
[ -f "$fix/mlp_scripted.pt" ] || (cd "$build" && ctest -R '^fixtures$' > /dev/null)
python=${BNADAPT_PYTHON:-$root/.venv/bin/python}
echo "| np | launch wall (s) | setup (s) | consistency check (s) | all-reduce (s) | stats = np 1 |"
echo "|---|---|---|---|---|---|"
for np in ${NPS:-1 2 4 8 16}; do
  dir=$out/np$np
  rm -rf "$dir" && mkdir -p "$dir"
  start=$(date +%s.%N)
  mpiexec -n "$np" "$build/bnadapt_dist" --model "$fix/mlp_scripted.pt" \
    --data "$fix/data_vec48.pt" --samples 40 --batch-size 4 --threads 1 --data-threads 1 \
    --stats-output "$dir/stats.pt" --report "$dir/report.json" > "$dir/log" 2>&1
  end=$(date +%s.%N)
  same=yes
  cmp -s "$out/np1/stats.pt" "$dir/stats.pt" || same=no
  "$python" - "$dir/report.json" "$start" "$end" "$np" "$same" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["timings"]
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"| {sys.argv[4]} | {wall:.2f} | {r['setup_seconds']:.3f} | "
      f"{r['consistency_check_seconds']:.4f} | {r['allreduce_seconds']:.4f} | {sys.argv[5]} |")
PY
done
