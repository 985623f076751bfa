#!/usr/bin/python3
"""Runs a command that must fail in a documented way.

  expect.py --code N [--stderr REGEX] [--max-error-lines K] [--absent PATH]...
            [--unchanged PATH]... [--within SECONDS] -- CMD...

Checks: the exit status is N (--code nonzero: any failure, for ranks killed by a signal);
stderr matches REGEX; the tool printed between --min-error-lines (default 1) and K "error:"
lines (default K = 1: one clear line, however many ranks); every --absent PATH does not
exist afterwards (it is removed before the run); every --unchanged PATH has the same SHA-256
before and after; the run took at most SECONDS.
"""
import argparse
import hashlib
import os
import re
import subprocess
import sys
import time


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", required=True, help="exit status, or 'nonzero'")
    ap.add_argument("--min-error-lines", type=int, default=1)
    ap.add_argument("--stderr", default=None)
    ap.add_argument("--max-error-lines", type=int, default=1)
    ap.add_argument("--absent", action="append", default=[])
    ap.add_argument("--unchanged", action="append", default=[])
    ap.add_argument("--within", type=float, default=60.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    for p in a.absent:
        if os.path.lexists(p):
            os.remove(p)
    before = {p: sha256(p) for p in a.unchanged}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    elapsed = time.time() - t0
    problems = []
    if a.code == "nonzero":
        if proc.returncode == 0:
            problems.append("exit status 0, expected a failure")
    elif proc.returncode != int(a.code):
        problems.append(f"exit status {proc.returncode}, expected {a.code}")
    if a.stderr and not re.search(a.stderr, proc.stderr):
        problems.append(f"stderr does not match /{a.stderr}/")
    errors = [l for l in proc.stderr.splitlines() if re.search(r"\] error: ", l)]
    if not a.min_error_lines <= len(errors) <= a.max_error_lines:
        problems.append(f"{len(errors)} error line(s), expected "
                        f"{a.min_error_lines}..{a.max_error_lines}")
    for p in a.absent:
        if os.path.lexists(p):
            problems.append(f"{p} was written")
    for p, digest in before.items():
        if sha256(p) != digest:
            problems.append(f"{p} changed")
    if elapsed > a.within:
        problems.append(f"took {elapsed:.1f}s, limit {a.within}s")
    print("command:", " ".join(cmd))
    print("exit status:", proc.returncode, f"({elapsed:.1f}s)")
    print("error lines:\n  " + "\n  ".join(errors))
    if problems:
        print("stdout:\n" + proc.stdout)
        print("stderr:\n" + proc.stderr)
        print("FAILED: " + "; ".join(problems))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
