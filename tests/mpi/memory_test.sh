#!/usr/bin/env bash
# memory_test.sh BIN MODEL DIR PYTHON: memory per rank follows the samples it reads, not the
# size of the data file. Writes a 1 GiB tensor file (5,592,405 x 48 float32), runs 2 ranks on
# 100,000 of its samples, and requires each rank's peak RSS (from the report) to stay below
# half the file. Reading the whole file per rank, as a naive loader does, needs > 1 GiB each.
set -euo pipefail
bin=$1 model=$2 dir=$3 python=$4
rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -f "$dir/big.pt"' EXIT
"$python" -c "
import torch, sys
torch.manual_seed(0)
torch.save(torch.randn(5592405, 48), sys.argv[1])
" "$dir/big.pt"
ls -l "$dir/big.pt"
mpiexec -n 2 "$bin" --model "$model" --data "$dir/big.pt" --samples 100000 --batch-size 1000 \
  --threads 1 --report "$dir/report.json"
"$python" - "$dir/report.json" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
file_mib = 5592405 * 48 * 4 / 2**20
peaks = [x["peak_rss_mib"] for x in r["ranks"]]
print(f"file {file_mib:.0f} MiB; peak RSS per rank {', '.join(f'{p:.0f}' for p in peaks)} MiB")
sys.exit(0 if all(p < file_mib / 2 for p in peaks) and len(peaks) == 2 else 1)
PY
