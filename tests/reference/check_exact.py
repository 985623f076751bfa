#!/usr/bin/python3
"""Checks the exact-arithmetic and precision fixtures' statistics (Identity -> BatchNorm1d).

Usage:
  check_exact.py --mode exact --data data_exact.pt --batches 4 --stats RUN/stats.pt...
  check_exact.py --mode precision --data data_precision.pt --stats RUN/stats.pt...

exact:      the data are multiples of 1/8, so every sum the tool forms is exact; its results
            must equal, bit for bit, the exact rational mean and unbiased variance (Python
            fractions) rounded to float64 and then to the buffers' float32, in every run;
            num_batches_tracked = 7 + --batches.
precision:  per channel, |var - var_ref| / var_ref <= 1e-4 against a float64 reference,
            no negative variance, and a constant channel's variance <= 1e-12.
Exit status 0 when every run passes, 1 otherwise.
"""
import argparse
import sys
from fractions import Fraction

import torch


def exact_reference(x):
    n = x.shape[0]
    means, variances = [], []
    for c in range(x.shape[1]):
        values = [Fraction(float(v)) for v in x[:, c].tolist()]
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        means.append(float(mean))  # correctly rounded to float64
        variances.append(float(var))
    return (torch.tensor(means, dtype=torch.float64).to(torch.float32),
            torch.tensor(variances, dtype=torch.float64).to(torch.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("exact", "precision"), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batches", type=int, default=0)
    ap.add_argument("--stats", nargs="+", required=True)
    a = ap.parse_args()
    x = torch.load(a.data)
    failures = []
    if a.mode == "exact":
        mean_ref, var_ref = exact_reference(x)
        for path in a.stats:
            s = torch.load(path)
            for key, ref in (("bn.running_mean", mean_ref), ("bn.running_var", var_ref)):
                if not torch.equal(s[key], ref):
                    failures.append(f"{path}: {key} {s[key].tolist()} != exact {ref.tolist()}")
            if int(s["bn.num_batches_tracked"]) != 7 + a.batches:
                failures.append(f"{path}: num_batches_tracked {int(s['bn.num_batches_tracked'])}")
        print(f"exact: {len(a.stats)} run(s) compared bit for bit with the rational reference")
    else:
        xd = x.to(torch.float64)
        var_ref = xd.var(dim=0, unbiased=True)
        for path in a.stats:
            var = torch.load(path)["bn.running_var"].to(torch.float64)
            if (var < 0).any():
                failures.append(f"{path}: negative variance {var.tolist()}")
            for c in range(x.shape[1]):
                if var_ref[c] == 0:
                    if var[c] > 1e-12:
                        failures.append(f"{path}: constant channel {c} has variance {var[c]:.3g}")
                    continue
                rel = abs(var[c] - var_ref[c]) / var_ref[c]
                print(f"{path}: channel {c}: mean/sigma {abs(xd[:, c].mean()) / var_ref[c].sqrt():.3g}, "
                      f"relative var error {rel:.3g}")
                if rel > 1e-4:
                    failures.append(f"{path}: channel {c}: relative var error {rel:.3g} > 1e-4")
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
