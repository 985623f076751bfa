#!/usr/bin/env bash
# run_slurm_test.sh BNADAPT_BINARY FIXTURE_DIR
#
# A real SLURM test: starts a private one-node cluster on this machine (munged, slurmctld,
# slurmd from Debian's munge and slurm-wlm, all state in a temp folder, private ports and
# munge socket, nothing under /etc touched), then submits slurm/bnadapt_cpu.sbatch with 2
# tasks and checks:
#   1. LAUNCHER=srun (srun --mpi=pmix): COMPLETED, ExitCode=0:0, log %x-%j.out, and the
#      stats file, model and report equal those of an `mpirun -np 2` run of the same
#      arguments (files byte for byte; the report without its timings);
#   2. the same job requeued (scontrol requeue): reruns and gives the same outputs, the log
#      is appended to (--requeue is safe);
#   3. LAUNCHER=mpirun (Open MPI's mpirun inside the allocation): same outputs;
#   4. a missing data file: JobState=FAILED, ExitCode=3:0 (the documented data error), one
#      error line, no output written;
#   5. a rank that dies (BNADAPT_FAULT=1:forward:exit): FAILED, non-zero exit, no output;
#   6. srun without PMIx (srun --mpi=none): FAILED, no output; Debian's Open MPI refuses in
#      MPI_Init (exit 1), an MPI that starts singletons meets the tool's launch check (exit 5).
# Every daemon it started is stopped on exit (also on failure, Ctrl-C, or when the whole
# test runs past BNADAPT_SLURM_TEST_LIMIT seconds, default 240: keep ctest's TIMEOUT above it) and
# the temp folder is removed (KEEP_TMP=1 keeps it). Needs root (SlurmUser=root) and the packages of
# launch/install_deps.sh; exits 77 (ctest SKIP_RETURN_CODE) when they are missing.
set -euo pipefail

usage() { echo "usage: $0 BNADAPT_BINARY FIXTURE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
bin=$(readlink -f "$1")
fix=$(readlink -f "$2")
root=$(cd "$(dirname "$0")/../.." && pwd)
sbatch_script=$root/slurm/bnadapt_cpu.sbatch
start_ns=$(date +%s%N)

say() { echo "slurm_test: $*"; }
fail() { echo "slurm_test: FAIL: $*" >&2; exit 1; }
skip() { echo "slurm_test: SKIP: $*" >&2; exit 77; }

[ -x "$bin" ] || fail "no executable at '$1'"
for f in resnet_scripted.pt data_img32.pt; do
  [ -f "$fix/$f" ] || fail "fixture '$fix/$f' missing (run the ctest 'fixtures' step first)"
done
[ "$(id -u)" -eq 0 ] || skip "needs root (the test cluster runs with SlurmUser=root)"
for tool in munged mungekey slurmctld slurmd sbatch scontrol sinfo squeue scancel srun mpirun; do
  command -v "$tool" >/dev/null || skip "'$tool' not found: run launch/install_deps.sh (munge, slurm-wlm)"
done

# A test started inside a SLURM job must not see the outer job's allocation.
for v in $(compgen -v SLURM_ || true); do unset "$v"; done

tmp=$(mktemp -d /tmp/bnadapt_slurm_test.XXXXXX)
chmod 755 "$tmp"  # munged wants its socket folder reachable by everyone, writable by root only
pids=()           # daemons we started, in start order
failed=1
watchdog=""

stop_daemons() {
  set +e
  if [ -n "${SLURM_CONF:-}" ] && [ ${#pids[@]} -ge 2 ]; then
    # No job may outlive the cluster: cancel what is left and wait for its steps to end.
    ids=$(squeue -h -o %i 2>/dev/null)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086  # one argument per job id
      scancel $ids 2>/dev/null
      for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # slurmd, slurmctld, munged
    kill -TERM "${pids[i]}" 2>/dev/null || continue
    for _ in $(seq 40); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "${pids[i]}" 2>/dev/null
    wait "${pids[i]}" 2>/dev/null
  done
}
cleanup() {
  local rc=$?
  set +e  # clean up as much as possible, whatever fails
  if [ -n "$watchdog" ]; then  # the watchdog subshell and its sleep
    # shellcheck disable=SC2046  # one argument per pid
    kill $(ps -o pid= --ppid "$watchdog" 2>/dev/null) "$watchdog" 2>/dev/null
  fi
  stop_daemons
  if [ "$failed" -ne 0 ] && [ $rc -ne 77 ]; then
    for f in "$tmp"/log/*.log "$tmp"/jobs/*.out; do
      [ -f "$f" ] && { echo "---- $f (last 30 lines)"; tail -n 30 "$f"; }
    done
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'echo "slurm_test: FAIL: over ${BNADAPT_SLURM_TEST_LIMIT:-240} s (or terminated)" >&2; exit 124' TERM
# Ends this script (and so runs cleanup) before ctest would kill it without a trap.
( sleep "${BNADAPT_SLURM_TEST_LIMIT:-240}"; kill -TERM $$ ) </dev/null >/dev/null 2>&1 &
watchdog=$!

# ---- munge: a key (created if absent) and a daemon on a private socket ----------------------
mkdir -p "$tmp/munge" "$tmp/log" "$tmp/state" "$tmp/spool" "$tmp/jobs"
chmod 755 "$tmp/munge"
key=${MUNGE_KEY:-$tmp/munge/munge.key}
if [ ! -f "$key" ]; then
  mungekey --create --keyfile="$key"
fi
munged -F --socket="$tmp/munge/munge.socket" --key-file="$key" --pid-file="$tmp/munge/munged.pid" \
  --seed-file="$tmp/munge/munged.seed" --log-file="$tmp/log/munged.log" >"$tmp/log/munged.log" 2>&1 &
pids+=($!)
for _ in $(seq 40); do [ -S "$tmp/munge/munge.socket" ] && break; sleep 0.25; done
munge -S "$tmp/munge/munge.socket" -n | unmunge -S "$tmp/munge/munge.socket" >/dev/null ||
  fail "munged does not answer on $tmp/munge/munge.socket"

# ---- slurm.conf: one node, this machine -------------------------------------------------------
node=$(hostname -s)
cpus=$(nproc)
read -r ctld_port slurmd_port < <(/usr/bin/python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
export SLURM_CONF=$tmp/slurm.conf
write_conf() {  # write_conf MPI_DEFAULT
  cat >"$SLURM_CONF" <<EOF
ClusterName=bnadapt-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/munge.socket
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=$1
SwitchType=switch/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# Jobs stay known to scontrol for an hour after they end (no slurmdbd, no sacct).
MinJobAge=3600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}
write_conf none
mpi_default=none
srun --mpi=list 2>&1 | grep -qw pmix && mpi_default=pmix
write_conf "$mpi_default"
say "srun --mpi=list: $(srun --mpi=list 2>&1 | sed -n 's/^\t//p' | tr '\n' ' ')-> MpiDefault=$mpi_default"
[ "$mpi_default" = pmix ] || fail "Slurm has no pmix MPI plugin; slurm/bnadapt_cpu.sbatch needs it"

# ---- start the cluster ----------------------------------------------------------------------
slurmctld -D -i >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -N "$node" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 120); do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || fail "node '$node' is '$state', not idle, after 60 s"
say "cluster up: node $node ($cpus CPUs), ports $ctld_port/$slurmd_port"

# ---- helpers --------------------------------------------------------------------------------
field() {  # field JOBID NAME: one field of `scontrol show job`
  { scontrol -o show job "$1" 2>/dev/null || true; } | tr ' ' '\n' | sed -n "s/^$2=//p"
}
wait_job() {  # wait_job JOBID: until the job has ended; prints JobState
  local s=""
  for _ in $(seq 360); do
    s=$(field "$1" JobState)
    case $s in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
        echo "$s"; return 0 ;;
    esac
    sleep 0.5
  done
  fail "job $1 still '$s' after 180 s"
}
overcommit=()
[ "$cpus" -ge 2 ] || overcommit=(--overcommit)
submit() {  # submit NAME ENV... -- TOOL ARGS...: sbatch of the CPU script, 2 tasks; prints id
  local name=$1; shift
  local env=ALL
  while [ "$1" != -- ]; do env+=",$1"; shift; done
  shift
  # Cluster-specific options on the command line win over the script's #SBATCH lines;
  # --output is left to the script (%x-%j.out in --chdir).
  sbatch --parsable --job-name="$name" --partition=test --nodes=1 --ntasks=2 \
    --ntasks-per-node=2 --cpus-per-task=1 "${overcommit[@]}" --time=00:10:00 \
    --chdir="$tmp/jobs" --export="$env" "$sbatch_script" "$@"
}
tool_args=(--samples 200 --batch-size 16 --timeout 60)
job_env=("BNADAPT=$bin" "CONFIG=" "MODEL=$fix/resnet_scripted.pt" "DATA=$fix/data_img32.pt")
same_report() {  # same_report A B: equal reports apart from timings
  /usr/bin/python3 - "$1" "$2" <<'EOF'
import json, sys
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items()
                if k != "timings" and not k.endswith(("_seconds", "_mib"))}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
a, b = (strip(json.load(open(p))) for p in sys.argv[1:])
if a != b:
    sys.exit(f"reports differ: {sys.argv[1]} vs {sys.argv[2]}")
EOF
}
check_outputs() {  # check_outputs DIR: equal to the mpirun reference
  local d=$1
  for f in bn_stats.pt model.pt report.json; do [ -f "$d/$f" ] || fail "$d/$f was not written"; done
  cmp -s "$tmp/ref/bn_stats.pt" "$d/bn_stats.pt" || fail "$d/bn_stats.pt differs from the mpirun run"
  cmp -s "$tmp/ref/model.pt" "$d/model.pt" || fail "$d/model.pt differs from the mpirun run"
  same_report "$tmp/ref/report.json" "$d/report.json" || fail "$d/report.json differs"
  [ "$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["world_size"])' \
       "$d/report.json")" = 2 ] || fail "$d/report.json: world_size is not 2"
}
expect_job() {  # expect_job JOBID STATE EXITCODE
  local s e
  s=$(wait_job "$1")
  e=$(field "$1" ExitCode)
  # shellcheck disable=SC2015,SC2053  # $3 is a glob pattern, e.g. '[1-9]*:0'
  [ "$s" = "$2" ] && [[ $e == $3 ]] ||
    fail "job $1: JobState=$s ExitCode=$e, expected JobState=$2 ExitCode=$3 (log $tmp/jobs/$(field "$1" JobName)-$1.out)"
  say "job $1 ($(field "$1" JobName)): JobState=$s ExitCode=$e"
}

# ---- reference: mpirun -np 2, same arguments as the job -------------------------------------
mkdir -p "$tmp/ref"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  mpirun -np 2 --oversubscribe "$bin" --model "$fix/resnet_scripted.pt" --data "$fix/data_img32.pt" \
  --output "$tmp/ref/model.pt" --stats-output "$tmp/ref/bn_stats.pt" --report "$tmp/ref/report.json" \
  --threads 1 "${tool_args[@]}" >"$tmp/ref/log" 2>&1 || { cat "$tmp/ref/log"; fail "mpirun reference run failed"; }

# ---- 1. srun --mpi=pmix ---------------------------------------------------------------------
t0=$(date +%s%N)
id=$(submit bnadapt-srun "${job_env[@]}" "OUTPUT_DIR=$tmp/out_srun" LAUNCHER=srun -- "${tool_args[@]}")
expect_job "$id" COMPLETED 0:0
log=$tmp/jobs/bnadapt-srun-$id.out
[ -f "$log" ] || fail "no log $log (--output=%x-%j.out)"
grep -q "bnadapt: exit code 0 (ok)" "$log" || fail "$log lacks the exit code line"
grep -q " r0/2\] adapted" "$log" || fail "$log: rank 0 does not see a world of 2"
check_outputs "$tmp/out_srun"
say "srun job: outputs equal the mpirun run (bn_stats.pt, model.pt byte-equal; report equal" \
    "but timings) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"

# ---- 2. requeue the finished job: it reruns, same outputs, log appended ---------------------
before=$(stat -c %i "$tmp/out_srun/bn_stats.pt")
# slurmd revoked the job's credential when it ended, with one-second resolution: a rerun
# launched within that second has a credential no newer than the revocation and is killed
# ("Job credential revoked", JobState=FAILED). Requeue only once a new second has begun.
ended=$(date -d "$(field "$id" EndTime)" +%s 2>/dev/null || date +%s)
while [ "$(date +%s)" -le $((ended + 1)) ]; do sleep 0.2; done
scontrol requeue "$id"
scontrol update JobId="$id" StartTime=now  # a requeued job waits ~2 min otherwise
expect_job "$id" COMPLETED 0:0
[ "$(field "$id" Restarts)" = 1 ] || fail "job $id: Restarts=$(field "$id" Restarts), expected 1"
[ "$(grep -c "bnadapt: exit code 0 (ok)" "$log")" = 2 ] || fail "$log: not appended by the rerun"
grep -q "(restart 1)" "$log" || fail "$log: the rerun does not show restart 1"
[ "$(stat -c %i "$tmp/out_srun/bn_stats.pt")" != "$before" ] || fail "the rerun did not replace the outputs (same inode)"
check_outputs "$tmp/out_srun"
say "requeued job $id: reran, same outputs, log appended"

# ---- 3. mpirun inside the allocation --------------------------------------------------------
id=$(submit bnadapt-mpirun "${job_env[@]}" "OUTPUT_DIR=$tmp/out_mpirun" LAUNCHER=mpirun -- "${tool_args[@]}")
expect_job "$id" COMPLETED 0:0
check_outputs "$tmp/out_mpirun"
say "mpirun job: outputs equal the mpirun run"

# ---- 4. a missing data file: FAILED, ExitCode=3:0 -------------------------------------------
id=$(submit bnadapt-bad-data "BNADAPT=$bin" "CONFIG=" "MODEL=$fix/resnet_scripted.pt" \
       "DATA=$fix/no_such_data.pt" "OUTPUT_DIR=$tmp/out_bad" LAUNCHER=srun -- "${tool_args[@]}")
expect_job "$id" FAILED 3:0
log=$tmp/jobs/bnadapt-bad-data-$id.out
[ "$(grep -c "error: data path '.*no_such_data.pt' does not exist" "$log")" = 1 ] ||
  fail "$log: expected one 'data path ... does not exist' error line"
[ -z "$(ls -A "$tmp/out_bad")" ] || fail "the failed job wrote into $tmp/out_bad: $(ls "$tmp/out_bad")"

# ---- 5. a rank that dies --------------------------------------------------------------------
id=$(submit bnadapt-dead-rank "${job_env[@]}" "OUTPUT_DIR=$tmp/out_dead" LAUNCHER=srun \
       "BNADAPT_FAULT=1:forward:exit" -- "${tool_args[@]}")
expect_job "$id" FAILED '[1-9]*:0'
[ -z "$(ls -A "$tmp/out_dead")" ] || fail "the failed job wrote into $tmp/out_dead"

# ---- 6. srun without PMIx: never N singletons each writing the outputs -----------------------
mkdir -p "$tmp/out_nopmix"
id=$(sbatch --parsable --job-name=bnadapt-nopmix --partition=test --nodes=1 --ntasks=2 \
       --cpus-per-task=1 "${overcommit[@]}" --time=00:10:00 --chdir="$tmp/jobs" \
       --output=%x-%j.out --wrap="srun --mpi=none '$bin' --model '$fix/resnet_scripted.pt' \
       --data '$fix/data_img32.pt' --stats-output '$tmp/out_nopmix/bn_stats.pt' ${tool_args[*]}")
expect_job "$id" FAILED '[15]:0'
[ -z "$(ls -A "$tmp/out_nopmix")" ] || fail "srun --mpi=none wrote into $tmp/out_nopmix"

failed=0
say "PASS in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
