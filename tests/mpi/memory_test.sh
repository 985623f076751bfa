#!/usr/bin/env bash
# memory_test.sh BIN MODEL DIR PYTHON: memory per rank follows the samples it reads, not the
# size of the data file. Writes a 1 GiB tensor file (5,592,405 x 48 float32), runs 2 ranks on
# 100,000 of its samples, and requires each rank's peak RSS (from the report) to grow by less
# than a quarter of the file over the same job on a 2 MiB file. Reading the whole file per
# rank, as a naive loader does, adds > 1 GiB each.
set -euo pipefail
bin=$1 model=$2 dir=$3 python=$4
rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -f "$dir/big.pt" "$dir/small.pt"' EXIT
"$python" -c "
import torch, sys
torch.manual_seed(0)
torch.save(torch.randn(5592405, 48), sys.argv[1])
" "$dir/big.pt"
ls -l "$dir/big.pt"
# The same job on a 2 MiB file: the process's own footprint (LibTorch, the model, the
# batches), which differs between builds and machines; the big file may add little to it.
"$python" -c "
import torch, sys
torch.manual_seed(0)
torch.save(torch.randn(10000, 48), sys.argv[1])
" "$dir/small.pt"
for name in small big; do
  mpiexec -n 2 "$bin" --model "$model" --data "$dir/$name.pt" --samples 100000 --batch-size 1000 \
    --threads 1 --report "$dir/report_$name.json"
done
"$python" - "$dir/report_small.json" "$dir/report_big.json" <<'PY'
import json, sys
small, big = ([x["peak_rss_mib"] for x in json.load(open(p))["ranks"]] for p in sys.argv[1:3])
file_mib = 5592405 * 48 * 4 / 2**20
grown = [b - s for b, s in zip(big, small)]
print(f"file {file_mib:.0f} MiB; peak RSS per rank {', '.join(f'{p:.0f}' for p in big)} MiB, "
      f"{', '.join(f'{p:.0f}' for p in small)} MiB on a 2 MiB file: grown by "
      f"{', '.join(f'{g:.0f}' for g in grown)} MiB (limit {file_mib / 4:.0f})")
sys.exit(0 if len(grown) == 2 and all(g < file_mib / 4 for g in grown) else 1)
PY
