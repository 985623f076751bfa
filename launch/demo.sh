#!/usr/bin/env bash
# Fresh machine to a finished demo: installs, builds, trains the demo model once (a BN CNN
# on Fashion-MNIST, pruned so that its BN statistics are stale; about 2 minutes on 2 cores,
# cached in build/demo/fmnist/), then adapts it on 2 ranks with configs/demo.json and shows
# top-1 on the test set before and after, beside the Python reference of the same step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/launch/install_deps.sh"
py="$root/.venv/bin/python"  # the torch of the LibTorch the tool is built with
BNADAPT_BUILD_TESTS=${BNADAPT_BUILD_TESTS:-OFF}
"$root/launch/build.sh" -DBNADAPT_BUILD_TESTS="$BNADAPT_BUILD_TESTS"
"$py" "$root/launch/demo/train_fashion_mnist.py" "$root/build/demo/fmnist"
# The NNCF example configs (configs/nncf_*.json) use a ResNet-18 with stale statistics.
[ -f "$root/build/demo/demo_resnet18.pt" ] ||
  "$py" "$root/tests/fixtures/make_fixtures.py" --demo "$root/build/demo" > /dev/null
start=$(date +%s%N)
"$root/launch/mpirun_local.sh" -np "${NP:-2}" --config "$root/configs/demo.json" "$@"
echo "demo: adaptation took $(( ($(date +%s%N) - start) / 1000000 )) ms; outputs in build/demo/fmnist/"
"$py" - "$root/build/demo/fmnist" <<'PY'
import json, os, sys
d = sys.argv[1]
exp = json.load(open(os.path.join(d, "expected.json")))
rep = json.load(open(os.path.join(d, "report.json")))["eval"]
print(f"demo: top-1 on {rep['samples']} Fashion-MNIST test images: "
      f"{100 * rep['top1_before']:.2f}% with stale BN statistics -> "
      f"{100 * rep['top1_after']:.2f}% after bnadapt_dist")
t = exp["top1"]
print(f"demo: PyTorch reference: {t['trained']:.2f}% as trained, {t['stale']:.2f}% pruned with "
      f"stale statistics, {t['reestimated']:.2f}% after re-estimating them in PyTorch "
      f"(momentum=None, {exp['adapt_samples']} samples)")
PY
