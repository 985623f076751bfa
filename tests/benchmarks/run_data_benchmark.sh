#!/usr/bin/env bash
# Data-path benchmark (a measurement, not a test): generates ~500x375 JPEGs, then runs
# bnadapt_bench_data on them and on a tensor file of 32 px samples (a fast forward, so the
# loader's cost shows), printing throughput and time ratios.
#
#   tests/benchmarks/run_data_benchmark.sh [BUILD_DIR] [WORK_DIR]
#
# BUILD_DIR (default build/) must hold bnadapt_bench_data and the test fixtures (run the tests
# once, or `ctest -R fixtures`). Env: BATCHES (default 12), BATCH_SIZE (16), THREADS (1),
# DATA_THREADS (1), IMAGES (256), REPEAT (3), TENSOR_SAMPLES (4096).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
work=${2:-$build/bench_data}
python=${BNADAPT_PYTHON:-/usr/bin/python3}
mkdir -p "$work"
"$python" - "$work/jpegs" "${IMAGES:-256}" <<'PY'
import os, sys, torch
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
if os.path.isdir(out) and sum(len(f) for _, _, f in os.walk(out)) == n:
    sys.exit(0)
g = torch.Generator().manual_seed(0)
for i in range(n):
    d = os.path.join(out, f"class{i % 4}")
    os.makedirs(d, exist_ok=True)
    # smooth content plus noise, like a photo: JPEG size ~ 30-60 KB
    base = torch.rand(3, 12, 16, generator=g)
    img = torch.nn.functional.interpolate(base[None], size=(375, 500), mode="bilinear")[0]
    img = (img * 200 + torch.randn(3, 375, 500, generator=g) * 12).clamp(0, 255)
    Image.fromarray(img.permute(1, 2, 0).to(torch.uint8).numpy()).save(
        os.path.join(d, f"{i:05d}.jpg"), quality=90)
PY
[ -f "$work/tensor.pt" ] || "$python" -c "
import sys, torch
torch.manual_seed(0)
torch.save(torch.randn(int(sys.argv[2]), 3, 32, 32), sys.argv[1])
" "$work/tensor.pt" "${TENSOR_SAMPLES:-4096}"
"$build/bnadapt_bench_data" --model "$build/fixtures/resnet_scripted.pt" \
  --images "$work/jpegs" --tensor "$work/tensor.pt" --repeat "${REPEAT:-3}" \
  --batch-size "${BATCH_SIZE:-16}" --batches "${BATCHES:-12}" \
  --threads "${THREADS:-1}" --data-threads "${DATA_THREADS:-1}"
