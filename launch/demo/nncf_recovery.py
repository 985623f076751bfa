#!/usr/bin/python3
"""Accuracy recovery after NNCF 3.x compression: bnadapt_dist next to nncf.batch_norm_adaptation.

The demo network (train_fashion_mnist.py's FashionNet, trained the same way: 2 epochs,
seed 0) is compressed with NNCF itself: nncf.prune(UNSTRUCTURED_MAGNITUDE_LOCAL, ratio
0.6), masks applied to the weights with nncf.strip(IN_PLACE), no fine-tuning, so the BN
statistics are stale. Then the statistics are re-estimated from the first 2048 training
images in batches of 64, by
  - bnadapt_dist on 2 ranks (the TorchScript of the compressed model, IDX data, --eval),
  - nncf.batch_norm_adaptation (NNCF 3.x, on the eager compressed model, BN momentum 0.1
    as the layers have it),
  - PyTorch's own re-estimation (running stats reset, momentum=None), for reference,
and top-1 on the 10000 test images is measured for each. Prints a markdown table (also
OUT/nncf_recovery.md).

Usage: .venv/bin/python launch/demo/nncf_recovery.py [OUT] [--build BUILD] [--np 2]
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import train_fashion_mnist as tfm  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def compress_with_nncf(model, example):
    import nncf

    pruned = nncf.prune(model, nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=0.6,
                        examples_inputs=example)
    stripped = nncf.strip(pruned, example_input=example, strip_format=nncf.StripFormat.IN_PLACE)
    clean = tfm.FashionNet().eval()  # a plain module: scriptable, no NNCF hooks
    clean.load_state_dict({k: v for k, v in stripped.state_dict().items() if k in clean.state_dict()})
    return clean


def run_tool(args, model_path, out):
    report = os.path.join(out, "report_bnadapt.json")
    cmd = ["mpirun", "-np", str(args.np), os.path.join(args.build, "bnadapt_dist"),
           "--model", model_path, "--data", os.path.join(args.data, "train-images-idx3-ubyte.gz"),
           "--samples", str(args.samples), "--batch-size", str(args.batch_size),
           "--mean", str(tfm.MEAN), "--std", str(tfm.STD), "--eval",
           "--eval-data", os.path.join(args.data, "t10k-images-idx3-ubyte.gz"),
           "--output", os.path.join(out, "nncf_pruned_bnadapt.pt"), "--report", report, "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **MPI_ENV}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(report) as f:
        ev = json.load(f)["eval"]
    return 100 * ev["top1_before"], 100 * ev["top1_after"], wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=os.path.join(ROOT, "build", "demo", "nncf_recovery"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--data", default=tfm.DEFAULT_DATA)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x_train, y_train = tfm.load_split(args.data, "train")
    x_test, y_test = tfm.load_split(args.data, "t10k")

    model = tfm.FashionNet()
    train_args = argparse.Namespace(epochs=2, batch_size=128, lr=0.1, seed=0, average_step=0)
    tfm.train(model, x_train, y_train, train_args)
    acc_trained = tfm.top1(model, x_test, y_test)

    compressed = compress_with_nncf(model.eval(), x_train[:4])
    acc_stale = tfm.top1(compressed, x_test, y_test)
    model_path = os.path.join(args.out, "nncf_pruned.pt")
    torch.jit.script(compressed).save(model_path)

    tool_before, tool_after, tool_wall = run_tool(args, model_path, args.out)

    import nncf

    calib = x_train[:args.samples]
    batches = [calib[i:i + args.batch_size] for i in range(0, calib.shape[0], args.batch_size)]
    by_nncf = copy.deepcopy(compressed)
    t0 = time.perf_counter()
    nncf.batch_norm_adaptation(by_nncf, nncf.Dataset(batches))
    nncf_wall = time.perf_counter() - t0
    acc_nncf = tfm.top1(by_nncf, x_test, y_test)

    by_torch = copy.deepcopy(compressed)
    tfm.reestimate_bn(by_torch, calib, args.batch_size)
    acc_torch = tfm.top1(by_torch, x_test, y_test)

    n = args.samples
    rows = [
        ("trained (no compression)", f"{acc_trained:.2f}", ""),
        ("NNCF 3.x nncf.prune 60% (magnitude, per layer), stale BN statistics", f"{acc_stale:.2f}", ""),
        (f"+ bnadapt_dist, {args.np} ranks ({n} images, batch {args.batch_size})", f"{tool_after:.2f}",
         f"{tool_wall:.1f} (whole process, both evaluations included)"),
        (f"+ nncf.batch_norm_adaptation ({n} images, batch {args.batch_size})", f"{acc_nncf:.2f}",
         f"{nncf_wall:.1f}"),
        (f"+ PyTorch re-estimation, momentum=None ({n} images, batch {args.batch_size})",
         f"{acc_torch:.2f}", ""),
    ]
    lines = ["| Fashion-MNIST demo network | top-1 % (10000 test images) | seconds |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    table = "\n".join(lines)
    print(table)
    if abs(tool_before - acc_stale) > 1e-9:
        print(f"note: the tool measured {tool_before:.2f}% before adaptation, PyTorch {acc_stale:.2f}%")
    with open(os.path.join(args.out, "nncf_recovery.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
