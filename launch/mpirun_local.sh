#!/usr/bin/env bash
# mpirun_local.sh -np N [bnadapt_dist args...]: bnadapt_dist on N ranks on this machine.
#
#   launch/mpirun_local.sh -np 8 --config cfg.json
#   launch/mpirun_local.sh -np 4 --model net.pt --data calib.pt --samples 2048 --stats-output s.pt
#
# What it adds to a plain `mpirun -np N bnadapt_dist ...`:
#   - as root, Open MPI's --allow-run-as-root;
#   - --oversubscribe when N is more than the cores this process may use (nproc);
#   - --threads max(1, cores / N) and OMP_NUM_THREADS to match, unless the arguments give
#     --threads or the --config file has a "threads" key; ranks are not bound to cores
#     (--bind-to none), so that each rank's threads can spread;
#   - the exit code is bnadapt_dist's (see README: 0 ok, 2 usage, 3 data, ...).
# -np N (also -n N, --np N, -np=N) may stand anywhere; every other argument goes to
# bnadapt_dist unchanged. Environment:
#   BNADAPT      the binary (default: build/bnadapt_dist of this checkout)
#   MPIRUN       the launcher (default: mpirun)
#   MPIRUN_ARGS  more launcher options, split on spaces (e.g. "--mca btl self,vader")
#   DRY_RUN=1    print the command instead of running it
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BNADAPT:-$root/build/bnadapt_dist}
mpirun=${MPIRUN:-mpirun}

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

np=""
threads_given=0
config=""
tool=()
while [ $# -gt 0 ]; do
  case $1 in
    -np|-n|--np)
      [ $# -ge 2 ] || usage
      np=$2; shift 2; continue ;;
    -np=*|--np=*) np=${1#*=} ;;
    --threads|--threads=*) threads_given=1; tool+=("$1") ;;
    --config)
      tool+=("$1")
      [ $# -ge 2 ] && { config=$2; tool+=("$2"); shift; } ;;
    --config=*) config=${1#*=}; tool+=("$1") ;;
    *) tool+=("$1") ;;
  esac
  shift
done
[[ $np =~ ^[1-9][0-9]*$ ]] || { echo "mpirun_local.sh: give the number of ranks: -np N" >&2; usage; }
[ -x "$bin" ] || { echo "mpirun_local.sh: no executable at '$bin' (build it: launch/build.sh, or set BNADAPT)" >&2; exit 2; }

# A config file that sets bnadapt_dist.threads keeps its value (a flag would override it).
if [ -n "$config" ] && [ -r "$config" ] && grep -q '"threads"[[:space:]]*:' "$config"; then
  threads_given=1
fi

cores=$(nproc)
ompi=0
"$mpirun" --version 2>/dev/null | grep -q "Open MPI" && ompi=1
launcher=("$mpirun")
if [ "$ompi" -eq 1 ]; then
  [ "$(id -u)" -eq 0 ] && launcher+=(--allow-run-as-root)
  [ "$np" -gt "$cores" ] && launcher+=(--oversubscribe)
  launcher+=(--bind-to none)
fi
launcher+=(-np "$np")
if [ "$threads_given" -eq 0 ]; then
  threads=$(( cores / np ))
  [ "$threads" -ge 1 ] || threads=1
  tool+=(--threads "$threads")
  export OMP_NUM_THREADS=$threads
  [ "$ompi" -eq 1 ] && launcher+=(-x OMP_NUM_THREADS)
fi
# shellcheck disable=SC2206  # MPIRUN_ARGS is split on purpose
[ -n "${MPIRUN_ARGS:-}" ] && launcher+=(${MPIRUN_ARGS})

if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${launcher[@]}" "$bin" "${tool[@]}"
  echo
  exit 0
fi
exec "${launcher[@]}" "$bin" "${tool[@]}"
