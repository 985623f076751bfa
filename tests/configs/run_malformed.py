#!/usr/bin/python3
"""Runs bnadapt_dist on every malformed config of tests/configs/malformed/.

  run_malformed.py BNADAPT_DIST [--corpus DIR] [--limit SECONDS] [--absolute] [--only REGEX]

Each file of EXPECTED.tsv (names starting with '@' are made here: too big to commit, or not a
regular file) runs as

  BNADAPT_DIST --config FILE --model m --data synthetic

(one process, a singleton MPI start; no mpiexec) in an empty working folder, and must:
  - exit with 2 (the config class);
  - print exactly one "error:" line, which names the config file and then matches the
    manifest's regex (the JSON path, or "invalid JSON at byte N", ...);
  - finish within the limit;
  - write nothing: the working folder stays empty and the corpus folder unchanged (some files
    name outputs, which would land beside them).

Time: starting the process (Open MPI's singleton start spawns an orted; LibTorch loads) takes
0.5 to 1.5 s on a small machine before any config is read, so by default the limit (1 s)
bounds the time beyond that start-up: the same binary's run without a config file, measured
here (median of 3), is subtracted. --absolute applies the limit to the whole run instead.
A run over the limit is repeated once, with a fresh start-up time, before it counts (load
from other jobs). Prints the largest time, both ways. Exit status 0 when every case passes.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def make_oversized(path):
    # 17 MiB of valid JSON: one long string. Refused by its size before it is read.
    head = b'{"bnadapt_dist": {"samples": 64}, "padding": "'
    tail = b'"}\n'
    with open(path, "wb") as f:
        f.write(head + b"x" * (17 * MIB - len(head) - len(tail)) + tail)
    return path


def make_near_limit(path):
    # Exactly 16 MiB (the largest size accepted): 8 million numbers under a key the tool
    # ignores, then a bad value in the section it reads.
    head = b'{"bnadapt_dist": {"samples": 64, "batch_size": 0},\n "ignored": [0'
    tail = b"]}\n"
    n = (16 * MIB - len(head) - len(tail)) // 2
    body = head + b",0" * n + tail
    body = body[:-len(tail)] + b" " * (16 * MIB - len(body)) + tail
    assert len(body) == 16 * MIB
    with open(path, "wb") as f:
        f.write(body)
    return path


def make_directory(path):
    os.mkdir(path)
    return path


GENERATED = {
    "@oversized_17mib.json": make_oversized,
    "@near_limit_16mib.json": make_near_limit,
    "@dev_zero": lambda _: "/dev/zero",
    "@directory": make_directory,
    "@missing.json": lambda path: path,
}


def read_manifest(corpus):
    cases = []
    with open(os.path.join(corpus, "EXPECTED.tsv"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                sys.exit(f"EXPECTED.tsv:{n}: expected 'file<TAB>regex[<TAB>what]'")
            cases.append((fields[0], re.compile(fields[1])))
    return cases


def snapshot(folder):
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def run(binary, config, cwd):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [binary] + (["--config", config] if config else []) + ["--model", "m", "--data",
                                                                  "synthetic"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=60)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        code, stderr = "timeout (60 s)", e.stderr or b""
    return code, stderr.decode("utf-8", errors="replace"), time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--corpus", default=os.path.join(HERE, "malformed"))
    ap.add_argument("--limit", type=float, default=1.0, help="seconds per file (default 1)")
    ap.add_argument("--absolute", action="store_true",
                    help="apply --limit to the whole run, start-up included")
    ap.add_argument("--only", default=None, help="run only the files whose name matches")
    ap.add_argument("--every", type=int, default=1,
                    help="run every Nth file of the manifest (a deterministic sample)")
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    corpus = os.path.abspath(a.corpus)
    cases = read_manifest(corpus)
    if a.only:
        cases = [c for c in cases if re.search(a.only, c[0])]
    sampled = a.every > 1
    if sampled:
        cases = cases[::a.every]
    listed = {name for name, _ in cases}
    on_disk = {n for n in os.listdir(corpus) if n != "EXPECTED.tsv"}
    unlisted = sorted(on_disk - listed) if not (a.only or sampled) else []

    scratch = tempfile.mkdtemp(prefix="bna_malformed_")
    work = os.path.join(scratch, "cwd")  # every run's working folder: must stay empty
    gen = os.path.join(scratch, "generated")
    os.mkdir(work)
    os.mkdir(gen)
    failures = []
    try:
        # Start-up without any config: the same MPI start and library loading, exit 2 from
        # the missing sample count.
        baseline = []
        for _ in range(3):
            code, err, dt = run(binary, None, work)
            if code != 2:
                sys.exit(f"baseline run without a config: exit {code}, expected 2\n{err}")
            baseline.append(dt)
        startup = statistics.median(baseline)
        print(f"start-up without a config: {startup:.2f} s (median of "
              f"{', '.join(f'{t:.2f}' for t in baseline)})")

        before = snapshot(corpus)
        worst_total = worst_config = (0.0, "")
        for name, regex in cases:
            if name.startswith("@"):
                if name not in GENERATED:
                    failures.append(f"{name}: no generator for this name")
                    continue
                path = GENERATED[name](os.path.join(gen, name[1:]))
            else:
                path = os.path.join(corpus, name)
                if not os.path.isfile(path):
                    failures.append(f"{name}: listed in EXPECTED.tsv, not in {corpus}")
                    continue
            gen_before = snapshot(gen)
            code, err, dt = run(binary, path, work)
            beyond = dt - startup
            if (dt if a.absolute else beyond) > a.limit:
                # Once more, against a fresh start-up time: other jobs on a small machine
                # slow single runs by a second; a slow parser is slow every time.
                _, _, fresh = run(binary, None, work)
                code, err, dt = run(binary, path, work)
                beyond = dt - fresh
            worst_total = max(worst_total, (dt, name))
            worst_config = max(worst_config, (beyond, name))
            problems = []
            if code != 2:
                problems.append(f"exit status {code}, expected 2")
            errors = [l for l in err.split("\n") if re.search(r"\] error: ", l)]
            if len(errors) != 1:
                problems.append(f"{len(errors)} error lines, expected 1")
            else:
                message = errors[0].split("] error: ", 1)[1]
                if not message.startswith(path + ": "):
                    problems.append("the error does not begin with the config path")
                elif not regex.search(message[len(path) + 2:]):
                    problems.append(f"the error does not match /{regex.pattern}/")
            elapsed = dt if a.absolute else beyond
            if elapsed > a.limit:
                problems.append(f"took {dt:.2f} s ({beyond:+.2f} s beyond start-up), limit "
                                f"{a.limit} s{'' if a.absolute else ' beyond start-up'}")
            if os.listdir(work):
                problems.append(f"wrote {sorted(os.listdir(work))} in the working folder")
                for entry in os.listdir(work):
                    p = os.path.join(work, entry)
                    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            if snapshot(gen) != gen_before:
                problems.append("changed the folder of the generated file")
            print(f"{'ok  ' if not problems else 'FAIL'} {name:48s} {dt:5.2f} s  "
                  f"{errors[0].split('] error: ', 1)[1][:150] if len(errors) == 1 else ''}")
            if problems:
                failures.append(f"{name}: " + "; ".join(problems) + "\n  stderr: " +
                                err.strip().replace("\n", "\n          ")[:2000])
            if name.startswith("@") and os.path.isfile(path) and path.startswith(gen):
                os.remove(path)  # up to 17 MiB each
        if snapshot(corpus) != before:
            failures.append(f"the corpus folder {corpus} changed (an output was written)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for name in unlisted:
        failures.append(f"{name}: in the corpus folder but not in EXPECTED.tsv")
    print(f"{len(cases)} configs; largest time {worst_total[0]:.2f} s ({worst_total[1]}), "
          f"largest beyond start-up {worst_config[0]:+.2f} s ({worst_config[1]}); "
          f"limit {a.limit} s{'' if a.absolute else ' beyond start-up'}")
    if failures:
        print(f"\n{len(failures)} FAILED:\n" + "\n".join(failures))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
