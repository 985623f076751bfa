#!/usr/bin/python3
"""Speed and memory of bnadapt_dist against the Python anchor, in one run.

Usage:
  perf_benchmark.py BUILD_DIR [--out DIR] [--repeat 3] [--samples 256] [--batch-size 32]
                    [--size 112] [--models resnet18 mobilenet_v2 efficientnet_b0] [--quick]

The anchor is what a user would run instead: precise BN in PyTorch on the same TorchScript
file (BN modules in train mode, the rest eval, 2 intra-op threads, forward passes under
no_grad). Random weights, seeded data; nothing is downloaded. Printed (and written to
OUT/perf_benchmark.md):

1. forward    tool forward / bare train-mode forward of the same batches in the same
              process with the same threads (tests/benchmarks/forward_benchmark.cpp,
              alternating ABBA, fastest pass of each), at np 1 x 2 threads (one process) and
              np 2 x 1 thread (two processes at once, each over all batches)
2. wall, RSS  `mpirun -np N bnadapt_dist --threads T` launched the plain way (the launcher's
              default binding) / the anchor in its own process; both whole processes,
              start-up included; runs alternate, the fastest of --repeat counts; peak RSS:
              the tool's largest rank (its report) / the anchor process's ru_maxrss
3. start-up   rank 0's, from its report: process exec -> the Job (loading LibTorch, MPI
              init, the settings), the Job's set-up (two model loads, BN discovery, hashes,
              consistency check) and their sum, exec -> the first forward
4. scaling    set-up and all-reduce seconds against the number of BN layers (a chain of
              1x1 conv + BN2d, np 2) and against the world size (a tiny model, np 1, 2, 4, 8,
              oversubscribed, 1 thread each)
Not a test: nothing here fails on a number.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn as nn

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


class BnChain(nn.Module):
    def __init__(self, layers, width=8):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
                                    for _ in range(layers)])

    def forward(self, x):
        return self.body(x).mean((2, 3))


def build(name):
    import torchvision

    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=10)
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(num_classes=10)
    if name == "efficientnet_b0":
        return torchvision.models.efficientnet_b0(num_classes=10)
    if name.startswith("bnchain"):
        return BnChain(int(name[len("bnchain"):]))
    if name == "tiny":
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 10))
    raise ValueError(name)


def prepare(out, name, shape, samples):
    model, data = os.path.join(out, f"{name}.pt"), os.path.join(out, f"{name}_data.pt")
    if not os.path.exists(model):
        torch.manual_seed(0)
        torch.jit.script(build(name).eval()).save(model)
    if not os.path.exists(data):
        g = torch.Generator().manual_seed(31)
        torch.save(torch.randn((samples,) + tuple(shape), generator=g).contiguous(), data)
    return model, data


def anchor(args):
    """The Python anchor, in this process: prints its wall (in-process) and peak RSS."""
    torch.set_num_threads(args.threads)
    m = torch.jit.load(args.model)
    m.eval()
    for sub in m.modules():
        if hasattr(sub, "running_mean"):
            sub.train()
    x = torch.load(args.data, weights_only=True)[:args.samples]
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(0, x.shape[0], args.batch_size):
            m(x[b:b + args.batch_size])
    fwd = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"forward": fwd, "rss": rss}))


def run_anchor(args, model, data, threads):
    cmd = [sys.executable, os.path.abspath(__file__), args.build, "--anchor", "--model", model,
           "--data", data, "--threads", str(threads), "--samples", str(args.samples),
           "--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, json.loads(res.stdout.strip().splitlines()[-1])


def run_tool(args, model, data, np_, threads, extra=()):
    report = os.path.join(args.out, f"report_np{np_}.json")
    cmd = ["mpirun", "-np", str(np_), *extra, os.path.join(args.build, "bnadapt_dist"), "--model",
           model, "--data", data, "--samples", str(args.samples), "--batch-size",
           str(args.batch_size), "--threads", str(threads), "--report", report, "--overwrite"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env={**os.environ, **MPI_ENV}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    with open(report) as f:
        rep = json.load(f)
    warnings = [line for line in res.stdout.splitlines() + res.stderr.splitlines() if "warn" in line]
    return wall, rep, warnings


def forward_ratios(args, model, shape):
    exe = os.path.join(args.build, "bnadapt_bench_forward")
    common = ["--model", model, "--shape", ",".join(map(str, shape)), "--batch-size",
              str(args.batch_size), "--batches", str(args.samples // args.batch_size),
              "--repeat", str(args.repeat)]
    one = json.loads(subprocess.run([exe, *common, "--threads", "2"], check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    procs = [subprocess.Popen([exe, *common, "--threads", "1"], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    two = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return one, two


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build")
    ap.add_argument("--out", default=None)
    ap.add_argument("--models", nargs="+",
                    default=["resnet18", "mobilenet_v2", "efficientnet_b0"])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bn-layers", type=int, nargs="+", default=[20, 100, 500])
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--anchor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.anchor:
        anchor(args)
        return 0
    args.out = args.out or os.path.join(args.build, "perf_benchmark")
    os.makedirs(args.out, exist_ok=True)
    shape = (3, args.size, args.size)
    lines = [f"{args.samples} samples of {'x'.join(map(str, shape))}, batch {args.batch_size}; "
             f"fastest of {args.repeat} alternating runs", "",
             "| model | BN | launch | tool fwd / bare fwd | tool wall / anchor wall | "
             "tool RSS / anchor RSS (MiB) | exec -> job s | job set-up s | start-up s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        model, data = prepare(args.out, name, shape, args.samples)
        one, two = forward_ratios(args, model, shape)
        for np_, threads, fwd in ((1, 2, one["ratio"]), (2, 1, max(t["ratio"] for t in two))):
            best_tool = best_anchor = None
            for _ in range(args.repeat):
                tool = run_tool(args, model, data, np_, threads)
                anc = run_anchor(args, model, data, 2)
                best_tool = tool if best_tool is None or tool[0] < best_tool[0] else best_tool
                best_anchor = anc if best_anchor is None or anc[0] < best_anchor[0] else best_anchor
            wall, rep, warnings = best_tool
            rss = max(r["peak_rss_mib"] for r in rep["ranks"])
            t = rep["timings"]
            lines.append(
                f"| {name} | {one['layers']} | `mpirun -np {np_} ... --threads {threads}` | {fwd:.3f} | "
                f"{wall / best_anchor[0]:.2f} ({wall:.2f} / {best_anchor[0]:.2f} s) | "
                f"{rss / best_anchor[1]['rss']:.2f} ({rss:.0f} / {best_anchor[1]['rss']:.0f}) | "
                f"{t['process_start_to_job_seconds']:.2f} | {t['setup_seconds']:.2f} | "
                f"{t['startup_seconds']:.2f} |")
            for w in warnings:
                lines.append(f"<!-- {w} -->")
            print(lines[-1], flush=True)
    lines += ["", "| scaling | np | setup s | all-reduce s | wall s |", "|---|---|---|---|---|"]
    small = argparse.Namespace(**{**vars(args), "samples": 64, "batch_size": 8})
    for layers in args.bn_layers:
        model, data = prepare(args.out, f"bnchain{layers}", (8, 8, 8), small.samples)
        wall, rep, _ = run_tool(small, model, data, 2, 1)
        t = rep["timings"]
        lines.append(f"| {layers} BN layers | 2 | {t['setup_seconds']:.3f} | "
                     f"{t['allreduce_seconds']:.4f} | {wall:.2f} |")
        print(lines[-1], flush=True)
    model, data = prepare(args.out, "tiny", (3, 16, 16), small.samples)
    for np_ in args.world_sizes:
        wall, rep, _ = run_tool(small, model, data, np_, 1, ("--oversubscribe",))
        t = rep["timings"]
        lines.append(f"| tiny model (1 BN) | {np_} | {t['setup_seconds']:.3f} | "
                     f"{t['allreduce_seconds']:.4f} | {wall:.2f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "perf_benchmark.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
