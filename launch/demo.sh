#!/usr/bin/env bash
# Fresh machine to a finished demo: installs, builds, makes the demo model (a scripted
# ResNet-18 with stale BN statistics) and adapts it on 2 ranks with configs/demo.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/launch/install_deps.sh"
BNADAPT_BUILD_TESTS=${BNADAPT_BUILD_TESTS:-OFF}
"$root/launch/build.sh" -DBNADAPT_BUILD_TESTS="$BNADAPT_BUILD_TESTS"
[ -f "$root/build/demo/demo_resnet18.pt" ] ||
  /usr/bin/python3 "$root/tests/fixtures/make_fixtures.py" --demo "$root/build/demo"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
start=$(date +%s%N)
mpirun -np "${NP:-2}" --oversubscribe "$root/build/bnadapt_dist" --config "$root/configs/demo.json" "$@"
echo "demo: adaptation took $(( ($(date +%s%N) - start) / 1000000 )) ms; outputs in build/demo/"
