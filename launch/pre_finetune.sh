#!/usr/bin/env bash
# pre_finetune.sh --np N --model M [--config C] --checkpoint IN --checkpoint-output OUT
#                 [bnadapt_dist args...] -- TRAINING COMMAND...
#
# The pre-fine-tuning stage of a training pipeline: recompute the BN statistics of M, write
# them into the training checkpoint (IN -> OUT, plus OUT.sha256), check OUT against its
# sidecar, then replace this shell with the training command (exec: its exit code is the
# pipeline's). The training command finds OUT in $BNADAPT_CHECKPOINT as well.
#
#   launch/pre_finetune.sh --np 8 --model net.pt --data calib.pt --samples 2048 \
#       --checkpoint ckpt_e12.pt --checkpoint-output ckpt_e12_bn.pt \
#       -- torchrun --nproc-per-node 8 finetune.py --resume ckpt_e12_bn.pt
#
# Exit codes: bnadapt_dist's own when the adaptation fails (2 usage, 3 data, 4 model,
# 5 communication, 6 output, 7 checkpoint, 8 timeout; README), and the training does not
# start; 2 for a bad command line of this script; 6 (output) when OUT does not match
# OUT.sha256.
# Environment: BNADAPT_LAUNCH=srun runs the ranks with `srun --mpi=pmix --ntasks=N` (inside
# a SLURM allocation) instead of launch/mpirun_local.sh (this machine); BNADAPT, MPIRUN,
# MPIRUN_ARGS as for launch/mpirun_local.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
me=pre_finetune.sh

usage() {
  echo "$me: $*" >&2
  echo "usage: $me --np N --model M [--config C] --checkpoint IN --checkpoint-output OUT [bnadapt_dist args...] -- TRAINING COMMAND..." >&2
  exit 2
}

np="" ckpt_in="" ckpt_out="" model="" config=""
tool=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  case $1 in
    --np|-np|-n) [ $# -ge 2 ] || usage "$1 needs a value"; np=$2; shift 2; continue ;;
    --np=*) np=${1#*=} ;;
    --checkpoint|--checkpoint-output|--model|--config)
      [ $# -ge 2 ] || usage "$1 needs a value"
      case $1 in
        --checkpoint) ckpt_in=$2 ;;
        --checkpoint-output) ckpt_out=$2 ;;
        --model) model=$2 ;;
        --config) config=$2 ;;
      esac
      tool+=("$1" "$2"); shift 2; continue ;;
    --checkpoint=*) ckpt_in=${1#*=}; tool+=("$1") ;;
    --checkpoint-output=*) ckpt_out=${1#*=}; tool+=("$1") ;;
    --model=*) model=${1#*=}; tool+=("$1") ;;
    --config=*) config=${1#*=}; tool+=("$1") ;;
    *) tool+=("$1") ;;
  esac
  shift
done
[ "${1:-}" = -- ] || usage "no '--' before the training command"
shift
[ $# -gt 0 ] || usage "no training command after '--'"
[[ $np =~ ^[1-9][0-9]*$ ]] || usage "--np N: the number of ranks"
[ -n "$model" ] || [ -n "$config" ] || usage "--model M (or a --config that names the model)"
[ -n "$ckpt_in" ] || usage "--checkpoint IN: the training checkpoint to update"
[ -n "$ckpt_out" ] || usage "--checkpoint-output OUT: where the updated checkpoint goes"

echo "$me: adapting BN statistics on $np ranks: $ckpt_in -> $ckpt_out"
set +e
# A pipeline stage may run again (a restarted job): its own earlier OUT is replaced.
tool+=(--overwrite)
if [ "${BNADAPT_LAUNCH:-local}" = srun ]; then
  srun --mpi=pmix --ntasks="$np" "${BNADAPT:-$here/../build/bnadapt_dist}" "${tool[@]}"
else
  "$here/mpirun_local.sh" -np "$np" "${tool[@]}"
fi
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "$me: bnadapt_dist failed with exit code $rc; the training command was not started" >&2
  exit $rc
fi

# OUT.sha256 is `sha256sum` format: "<hex>  <name of OUT>". It must name OUT and match it.
sidecar=$ckpt_out.sha256
# shellcheck disable=SC2015  # both tests, then the message
[ -f "$ckpt_out" ] && [ -f "$sidecar" ] ||
  { echo "$me: '$ckpt_out' or its '$sidecar' is missing after a successful run" >&2; exit 6; }
read -r want name <"$sidecar" || true
name=${name#\*}
if [ "$name" != "$(basename "$ckpt_out")" ]; then
  echo "$me: '$sidecar' is for '$name', not '$(basename "$ckpt_out")'" >&2
  exit 6
fi
have=$(sha256sum "$ckpt_out" | cut -d' ' -f1)
if [ "$have" != "$want" ]; then
  echo "$me: '$ckpt_out' does not match '$sidecar' (sha256 $have, expected $want)" >&2
  exit 6
fi
echo "$me: $ckpt_out verified (sha256 $have); starting: $*"
export BNADAPT_CHECKPOINT=$ckpt_out
exec "$@"
