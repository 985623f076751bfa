#!/usr/bin/python3
"""Crash-safe writing: SIGKILL rank 0 inside the write phase, many times; nothing half-done.

  crash_write_test.py --tool BIN --fixtures DIR --out DIR [--mpiexec mpiexec] [--reps 20]
                      [--np2-reps 4] [--within 10] [--recovery-reps 2] [--jobs 2]
                      [--points write,write-mid,write-fsynced]

Inputs (from make_fixtures.py / make_checkpoints.py): DIR/mlp_scripted.pt, DIR/data_vec48.pt,
DIR/ckpt_nested.pt. Every run writes --output out.pt, --stats-output stats.pt, --report
report.json and --checkpoint-output ckpt.pt (+ ckpt.pt.sha256) into its own folder.

1. Baselines, no fault: "prev" (--samples 32, np 1) and "new" (--samples 40, at np 1 and np 2);
   each complete (below), and prev's statistics differ from new's.
2. For each fault point (write: before writing; write-mid: the first output half written;
   write-fsynced: all outputs complete and fsynced, before the first link/rename), --reps
   runs with BNADAPT_FAULT=0:<point>:kill: the first --np2-reps at `mpiexec -n 2`, the rest at
   `-n 1` (for time: the write phase runs on rank 0 only, and the 2-rank runs also show the
   other rank is taken down). Odd repetitions start with prev's complete outputs already at
   the targets (run with --overwrite where the tool has it). After each run:
     - the job exited non-zero within --within seconds, and rank 0 recorded the injection
       (BNADAPT_FAULT_RECORD, fsynced before the kill: Open MPI may drop the log line of a
       rank it saw die by SIGKILL);
     - the folder holds nothing but the five target names (no temp, whatever its name);
     - every target is absent or complete: byte-identical to prev's file (only where prev's
       outputs were put there) or to new's (of the same world size; report.json: loads and
       has new's sample count and world size), and each one present loads with
       /usr/bin/python3 (torch.jit.load, torch.load, json.load);
     - ckpt.pt.sha256 never exists without ckpt.pt and always matches it;
     - the inputs' SHA-256 are unchanged.
3. Recovery (--recovery-reps, np 1, prev's outputs present): kill at write-linked, where a
   replacement has been linked to its temp name ".stats.pt.bnadapt-tmp-XXXXXX" but not yet
   renamed (the one window in which a kill leaves a named temp); the targets are still prev's,
   the only extra file is such a temp; the next run (no fault) removes it, says so, and
   writes new's outputs.
Prints a summary (runs, what each target held, max elapsed) and exits 1 on any failure.
"""
import argparse
import collections
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch

TARGETS = ("out.pt", "stats.pt", "report.json", "ckpt.pt", "ckpt.pt.sha256")
POINTS = ("write", "write-mid", "write-fsynced")
TEMP_RE = re.compile(r"^\.stats\.pt\.bnadapt-tmp-[A-Za-z0-9]{6}$")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Runner:
    def __init__(self, a):
        self.a = a
        fix = a.fixtures
        self.inputs = [os.path.join(fix, n) for n in ("mlp_scripted.pt", "data_vec48.pt",
                                                       "ckpt_nested.pt")]
        for p in self.inputs:
            if not os.path.isfile(p):
                sys.exit(f"missing fixture {p} (run the fixtures tests first)")
        helptext = subprocess.run([a.tool, "--help"], capture_output=True, text=True).stdout
        self.overwrite = ["--overwrite"] if "--overwrite" in helptext else []

    def command(self, np, folder, samples):
        model, data, ckpt = self.inputs
        return [self.a.mpiexec, "-n", str(np), self.a.tool, "--model", model, "--data", data,
                "--samples", str(samples), "--batch-size", "8", "--threads", "1",
                "--data-threads", "1", "--checkpoint", ckpt,
                "--output", os.path.join(folder, "out.pt"),
                "--stats-output", os.path.join(folder, "stats.pt"),
                "--report", os.path.join(folder, "report.json"),
                "--checkpoint-output", os.path.join(folder, "ckpt.pt")] + self.overwrite

    def run(self, np, folder, samples, fault=None):
        env = dict(os.environ)
        env.pop("BNADAPT_FAULT", None)
        env.pop("BNADAPT_FAULT_RECORD", None)
        if fault:
            env["BNADAPT_FAULT"] = fault
            env["BNADAPT_FAULT_RECORD"] = record_path(folder)
            if os.path.exists(record_path(folder)):
                os.remove(record_path(folder))
        # A session directory of its own: runs that are SIGKILLed, and runs started two at a
        # time, otherwise share /tmp/ompi.HOST.UID, and Open MPI 4.1's mpirun then fails in
        # orte_init now and then ("orte_session_dir failed") before any rank starts.
        session = tempfile.mkdtemp(prefix="bna-ompi-")
        env["OMPI_MCA_orte_tmpdir_base"] = session
        t0 = time.monotonic()
        try:
            proc = subprocess.run(self.command(np, folder, samples), env=env,
                                  capture_output=True, text=True, errors="replace",
                                  timeout=max(60, 3 * self.a.within))
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = "timeout", (e.stderr or b"").decode(errors="replace")
        finally:
            shutil.rmtree(session, ignore_errors=True)
        return rc, time.monotonic() - t0, err


def record_path(folder):
    """Where the tool records a fault that fired: next to the run's folder, not in it."""
    return os.path.normpath(folder) + ".fault"


def fired(folder, line):
    try:
        with open(record_path(folder)) as f:
            return line in f.read().splitlines()
    except OSError:
        return False


def load_check(path, name):
    """Loads a present target in Python; returns a problem or None."""
    try:
        if name == "out.pt":
            torch.jit.load(path)
        elif name in ("stats.pt", "ckpt.pt"):
            obj = torch.load(path, weights_only=(name == "stats.pt"))
            if name == "stats.pt" and not (isinstance(obj, dict) and obj and all(
                    isinstance(v, torch.Tensor) for v in obj.values())):
                return f"{name}: not a dict of tensors"
        elif name == "report.json":
            with open(path) as f:
                json.load(f)
    except Exception as e:  # noqa: BLE001 (any failure to load is the finding)
        return f"{name} does not load: {type(e).__name__}: {str(e)[:200]}"
    return None


def sidecar_problem(folder):
    ckpt, side = os.path.join(folder, "ckpt.pt"), os.path.join(folder, "ckpt.pt.sha256")
    if not os.path.exists(side):
        return None
    if not os.path.exists(ckpt):
        return "ckpt.pt.sha256 without ckpt.pt"
    text = read(side).decode(errors="replace")
    want = f"{sha256(ckpt)}  ckpt.pt\n"
    return None if text == want else f"ckpt.pt.sha256 reads {text!r}, ckpt.pt hashes to {want!r}"


def classify(folder, name, prev, new, np, prev_allowed):
    """'absent', 'prev' or 'new' for a target, or raises ValueError with the problem."""
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        return "absent"
    if not os.path.isfile(path) or os.path.islink(path):
        raise ValueError(f"{name} is not a regular file")
    problem = load_check(path, name) if name != "ckpt.pt.sha256" else None
    if problem:
        raise ValueError(problem)
    data = read(path)
    if prev_allowed and data == prev[name]:
        return "prev"
    if name == "report.json":
        r = json.loads(data)
        if r.get("samples", {}).get("requested") == 40 and r.get("world_size") == np:
            return "new"
        raise ValueError("report.json is neither prev's nor a report of the new run")
    if data == new[np][name]:
        return "new"
    if data == prev[name]:
        raise ValueError(f"{name} is prev's, but no previous output was put there")
    raise ValueError(f"{name} ({len(data)} bytes) matches neither the previous nor the new output")


def check_folder(folder, prev, new, np, prev_allowed, allowed_extra=None):
    problems, states = [], {}
    for entry in sorted(os.listdir(folder)):
        if entry not in TARGETS and not (allowed_extra and allowed_extra.match(entry)):
            problems.append(f"left behind: {entry}")
    for name in TARGETS:
        try:
            states[name] = classify(folder, name, prev, new, np, prev_allowed)
        except ValueError as e:
            problems.append(str(e))
    side = sidecar_problem(folder)
    if side:
        problems.append(side)
    return states, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tool", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--np2-reps", type=int, default=4)
    ap.add_argument("--within", type=float, default=10.0)
    ap.add_argument("--recovery-reps", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--points", default=",".join(POINTS), help="comma-separated subset")
    a = ap.parse_args()
    t_start = time.monotonic()
    runner = Runner(a)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    input_hashes = {p: sha256(p) for p in runner.inputs}
    failures = []

    # 1. baselines
    base = {}
    for key, np, samples in (("prev", 1, 32), ("new1", 1, 40), ("new2", 2, 40)):
        folder = os.path.join(a.out, "baseline_" + key)
        os.makedirs(folder)
        rc, elapsed, err = runner.run(np, folder, samples)
        if rc != 0:
            sys.exit(f"baseline {key} failed (exit {rc}):\n{err}")
        base[key] = {n: read(os.path.join(folder, n)) for n in TARGETS}
        for n in TARGETS:
            problem = load_check(os.path.join(folder, n), n) if n != "ckpt.pt.sha256" else None
            if problem:
                failures.append(f"baseline {key}: {problem}")
        if sidecar_problem(folder):
            failures.append(f"baseline {key}: {sidecar_problem(folder)}")
        print(f"baseline {key}: np {np}, --samples {samples}, {elapsed:.1f}s")
    prev = base["prev"]
    new = {1: base["new1"], 2: base["new2"]}
    if prev["stats.pt"] == new[1]["stats.pt"]:
        failures.append("prev and new statistics are identical: the test could not tell them apart")

    # 2. kills
    points = [p for p in a.points.split(",") if p]
    jobs = []
    for point in points:
        for i in range(a.reps):
            jobs.append((point, i, 2 if i < a.np2_reps else 1, i % 2 == 1))

    def prepare_and_run(job):
        point, i, np, with_prev = job
        folder = os.path.join(a.out, f"{point}_{i:02d}")
        os.makedirs(folder)
        if with_prev:
            for n in TARGETS:
                shutil.copyfile(os.path.join(a.out, "baseline_prev", n), os.path.join(folder, n))
        return folder, runner.run(np, folder, 40, f"0:{point}:kill")

    tally = {p: collections.defaultdict(collections.Counter) for p in points}
    elapsed_max = collections.defaultdict(float)
    np_count = collections.defaultdict(collections.Counter)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        for job, (folder, (rc, elapsed, err)) in zip(jobs, pool.map(prepare_and_run, jobs)):
            point, i, np, with_prev = job
            variant = "previous outputs present" if with_prev else "fresh"
            label = f"{point} #{i} (np {np}, {variant})"
            problems = []
            if rc == 0 or rc == "timeout":
                problems.append(f"exit status {rc}, expected a failure")
            if elapsed > a.within:
                problems.append(f"took {elapsed:.1f}s, limit {a.within}s")
            # The record file (fsynced before the kill) is the evidence; the log line may be
            # lost: Open MPI need not drain the stderr of a rank it saw die by SIGKILL.
            if not fired(folder, f"0 {point} kill"):
                problems.append("rank 0 never reached the fault point (nothing recorded in "
                                f"{record_path(folder)})")
            states, folder_problems = check_folder(folder, prev, new, np, with_prev)
            problems += folder_problems
            for p, digest in input_hashes.items():
                if sha256(p) != digest:
                    problems.append(f"input {p} changed")
            for n, s in states.items():
                tally[point][n][s] += 1
            elapsed_max[point] = max(elapsed_max[point], elapsed)
            np_count[point][np] += 1
            if problems:
                failures.append(f"{label}: " + "; ".join(problems) +
                                f"\n  stderr tail: {err[-800:]}")

    # 3. recovery from the write-linked window
    recovered = 0
    for i in range(a.recovery_reps):
        folder = os.path.join(a.out, f"write-linked_{i:02d}")
        os.makedirs(folder)
        for n in TARGETS:
            shutil.copyfile(os.path.join(a.out, "baseline_prev", n), os.path.join(folder, n))
        rc, elapsed, err = runner.run(1, folder, 40, "0:write-linked:kill")
        problems = []
        if rc == 0 or rc == "timeout" or elapsed > a.within:
            problems.append(f"exit status {rc} after {elapsed:.1f}s, expected a failure")
        if not fired(folder, "0 write-linked kill"):
            problems.append("rank 0 never reached write-linked")
        states, fp = check_folder(folder, prev, new, 1, True, allowed_extra=TEMP_RE)
        problems += fp
        temps = [e for e in os.listdir(folder) if TEMP_RE.match(e)]
        if len(temps) != 1 or states.get("stats.pt") != "prev":
            problems.append(f"expected prev's stats.pt and one temp, found {states} and {temps}")
        rc, elapsed, err = runner.run(1, folder, 40)
        if rc != 0:
            problems.append(f"the rerun failed (exit {rc})")
        if "a temp file an interrupted earlier run left" not in err:
            problems.append("the rerun did not report removing the stale temp")
        states, fp = check_folder(folder, prev, new, 1, False)
        problems += fp
        if any(s != "new" for s in states.values()):
            problems.append(f"after the rerun: {states}")
        if problems:
            failures.append(f"recovery #{i}: " + "; ".join(problems) +
                            f"\n  stderr tail: {err[-800:]}")
        else:
            recovered += 1

    print(f"\ncrash-safe writing: {len(jobs)} killed runs "
          f"({', '.join(f'{sum(c.values())} at {p}' for p, c in np_count.items())}); "
          f"rank 0 SIGKILLed via BNADAPT_FAULT=0:<point>:kill")
    for point in points:
        nps = ", ".join(f"{c} at np {n}" for n, c in sorted(np_count[point].items()))
        print(f"  {point:14s} {nps}; max elapsed {elapsed_max[point]:.1f}s")
        for n in TARGETS:
            held = sorted(tally[point][n].items())
            print(f"      {n:16s} " + ", ".join(f"{s} {c}" for s, c in held))
    print(f"  write-linked recovery: {recovered}/{a.recovery_reps} (temp left by the kill, removed "
          f"by the next run)")
    print(f"  inputs unchanged: {all(sha256(p) == d for p, d in input_hashes.items())}; "
          f"total {time.monotonic() - t_start:.0f}s")
    if failures:
        print(f"\nFAILED ({len(failures)}):\n" + "\n".join(failures))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
