#!/usr/bin/python3
"""Checks the top-1 accuracy bnadapt_dist reported (--eval) against PyTorch.

Usage:
  check_eval.py --before MODEL.pt --after OUT.pt --data REF.pt --report report.json
                [--batch-size B] [--samples N] [--threads T]

REF.pt is {"inputs": [N, ...], "labels": [N]}: the evaluation samples as the tool must have
preprocessed them. The models run with torch.jit.load(...).eval(), in the tool's batches. The
report's eval.correct_before / correct_after / samples must equal the counts computed here.
Exit status 0 when they match, 1 otherwise.
"""
import argparse
import json
import sys

import torch


def top1(model_path, inputs, labels, batch_size):
    model = torch.jit.load(model_path, map_location="cpu").eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, inputs.shape[0], batch_size):
            logits = model(inputs[lo:lo + batch_size])
            correct += int((logits.argmax(1) == labels[lo:lo + batch_size]).sum())
    return correct


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ref = torch.load(a.data)
    n = a.samples or ref["inputs"].shape[0]
    inputs, labels = ref["inputs"][:n], ref["labels"][:n]
    before = top1(a.before, inputs, labels, a.batch_size)
    after = top1(a.after, inputs, labels, a.batch_size)
    with open(a.report) as f:
        got = json.load(f)["eval"]
    print(f"python: {before}/{n} before, {after}/{n} after; tool: {got['correct_before']}/"
          f"{got['samples']} before, {got['correct_after']}/{got['samples']} after "
          f"(top-1 {got['top1_before']:.4f} -> {got['top1_after']:.4f})")
    ok = (got["samples"], got["correct_before"], got["correct_after"]) == (n, before, after)
    if before == after:
        print("note: adaptation did not change the count on this data")
    print("eval check: " + ("ok" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
