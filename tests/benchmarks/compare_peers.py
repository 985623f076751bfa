#!/usr/bin/python3
"""bnadapt_dist next to its peers, on the same model, data and batching.

Usage:
  compare_peers.py BUILD_DIR [--models tv/resnet18 timm/efficientnet_b0] [--samples 288]
                   [--batch-size 32] [--out DIR] [--threads 2]

For each model (a kind of tests/fixtures/zoo.py: random weights, stale BN statistics, saved
as TorchScript by this Python's torch; nothing is downloaded) and N seeded samples in global
batches of B, every method re-estimates the BN statistics and is measured against the
float64 truth (tests/reference/reference.py, "samples" estimator: the mean and unbiased
variance over every value each layer sees): max over layers and channels of |Δmean|/σ and of
the relative variance error, wall time of the adaptation (the tool: the whole process,
start-up included; the peers: their call, after the model is built) and peak RSS (the
tool: its largest rank; the peers: their process).

Methods:
  bnadapt_dist np 1, np 2   the tool on the TorchScript file (np 2: batches b mod 2, so with
                            an odd number of batches the shards are uneven)
  fvcore                    fvcore.nn.update_bn_stats (BN modules in train mode, rest eval)
  swa_utils                 torch.optim.swa_utils.update_bn
  nncf                      nncf.batch_norm_adaptation (NNCF 3.x)
  per-rank mean (2 ranks)   pycls / mmpretrain style precise BN: each rank averages its own
                            batches' mean and variance, then the ranks' results are averaged
                            (emulated: the two shards run one after the other in one process)
The peers take an nn.Module, not TorchScript: they get the eager architecture with the
TorchScript file's state_dict (the same weights and stale statistics). Each runs in its own
process. Prints a markdown table (also written to OUT/compare_peers.md).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "reference"))
sys.path.insert(0, os.path.join(TESTS, "fixtures"))
import check_outputs  # noqa: E402
import make_zoo  # noqa: E402
import models  # noqa: E402
import reference  # noqa: E402

PEERS = ("fvcore", "swa_utils", "nncf", "per_rank_mean")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def _batches(data_path, samples, batch_size):
    x = reference.load_inputs(data_path)
    used, nb = reference.budget(samples, batch_size, x.shape[0])
    return [x[b * batch_size:min((b + 1) * batch_size, used)] for b in range(nb)]


def _bn_train_only(model):
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()


def _per_rank_mean(model, batches, world=2):
    """pycls compute_precise_bn_stats per rank, then scaled_all_reduce (the mean of ranks)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    _bn_train_only(model)
    for bn in bns:
        bn.momentum = 1.0
    ranks = []
    for r in range(world):
        mine = batches[r::world]
        means = [torch.zeros_like(bn.running_mean) for bn in bns]
        vars_ = [torch.zeros_like(bn.running_var) for bn in bns]
        for x in mine:
            model(x)
            for i, bn in enumerate(bns):
                means[i] += bn.running_mean / len(mine)
                vars_[i] += bn.running_var / len(mine)
        ranks.append((means, vars_))
    for i, bn in enumerate(bns):
        bn.running_mean.copy_(sum(r[0][i] for r in ranks) / world)
        bn.running_var.copy_(sum(r[1][i] for r in ranks) / world)


def worker(args):
    """One peer in this process: writes {layer.running_mean/var} and prints its numbers."""
    torch.set_num_threads(args.threads)
    model = reference.load_eager(args.kind, args.model, torch.float32)
    batches = _batches(args.data, args.samples, args.batch_size)
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.worker == "fvcore":
            from fvcore.nn import update_bn_stats

            _bn_train_only(model)
            update_bn_stats(model, iter(batches), num_iters=len(batches))
        elif args.worker == "swa_utils":
            from torch.optim.swa_utils import update_bn

            update_bn(batches, model)
        elif args.worker == "nncf":
            import nncf

            nncf.batch_norm_adaptation(model, nncf.Dataset(batches))
        else:
            _per_rank_mean(model, batches)
    wall = time.perf_counter() - t0
    out = {}
    for name, m in models.bn_layers(model):
        out[f"{name}.running_mean"] = m.running_mean.detach().clone()
        out[f"{name}.running_var"] = m.running_var.detach().clone()
    torch.save(out, args.stats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"wall": wall, "rss": rss}))


def errors(stats, ref):
    worst = (0.0, 0.0)
    for name, _ in ref.layers:
        mean, var, _ = ref.stats["samples"][name]
        e = check_outputs._layer_errors(stats[f"{name}.running_mean"].reshape(-1),
                                        stats[f"{name}.running_var"].reshape(-1), mean, var)
        worst = (max(worst[0], e[0]), max(worst[1], e[1]))
    return worst


def run_tool(args, model, data, np_, out):
    stats, report = os.path.join(out, f"tool_np{np_}_stats.pt"), os.path.join(out, f"tool_np{np_}.json")
    cmd = ["mpirun", "-np", str(np_), os.path.join(args.build, "bnadapt_dist"), "--model", model,
           "--data", data, "--samples", str(args.samples), "--batch-size", str(args.batch_size),
           "--threads", str(max(1, args.threads // np_)), "--stats-output", stats,
           "--report", report, "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **MPI_ENV}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(report) as f:
        rss = max(r["peak_rss_mib"] for r in json.load(f)["ranks"])
    return torch.load(stats, weights_only=True), wall, rss


def run_peer(args, peer, kind, model, data, out):
    stats = os.path.join(out, f"{peer}_stats.pt")
    cmd = [sys.executable, os.path.abspath(__file__), args.build, "--worker", peer, "--kind", kind,
           "--model", model, "--data", data, "--stats", stats, "--samples", str(args.samples),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    numbers = json.loads(res.stdout.strip().splitlines()[-1])
    return torch.load(stats, weights_only=True), numbers["wall"], numbers["rss"]


LABELS = {"fvcore": ("fvcore update_bn_stats", 1), "swa_utils": ("torch swa_utils.update_bn", 1),
          "nncf": ("nncf.batch_norm_adaptation", 1),
          "per_rank_mean": ("per-rank mean (pycls/mmpretrain style)", 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", help="the build folder holding bnadapt_dist")
    ap.add_argument("--models", nargs="+", default=["tv/resnet18", "timm/efficientnet_b0"])
    ap.add_argument("--samples", type=int, default=288)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-tool-error", type=float, default=None,
                    help="exit 1 when a bnadapt_dist row errs more than this (the smoke test)")
    ap.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--stats", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    torch.set_num_threads(args.threads)
    out_root = args.out or os.path.join(args.build, "compare_peers")
    rows = []
    for kind in args.models:
        out = os.path.join(out_root, kind.replace("/", "_"))
        os.makedirs(out, exist_ok=True)
        model, data = os.path.join(out, "model.pt"), os.path.join(out, "data.pt")
        make_zoo.save_model(kind, "script", model)
        make_zoo.save_data(models.INPUT_SHAPES[kind], args.samples, data)
        ref = reference.compute_reference(kind, model, data, args.samples, args.batch_size)
        shape = "x".join(str(d) for d in models.INPUT_SHAPES[kind])
        what = f"{kind} ({len(ref.layers)} BN, {shape}, {ref.used} samples in {ref.num_batches} batches of {args.batch_size})"
        for np_ in (1, 2):
            stats, wall, rss = run_tool(args, model, data, np_, out)
            rows.append((what, "**bnadapt_dist**", np_, *errors(stats, ref), wall, rss))
        for peer in PEERS:
            stats, wall, rss = run_peer(args, peer, kind, model, data, out)
            label, ranks = LABELS[peer]
            rows.append((what, label, ranks, *errors(stats, ref), wall, rss))
    lines = ["| model | method | ranks | max \\|Δmean\\|/σ | max rel. var error | wall s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for what, label, ranks, dm, dv, wall, rss in rows:
        lines.append(f"| {what} | {label} | {ranks} | {dm:.1e} | {dv:.1e} | {wall:.2f} | {rss:.0f} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(out_root, "compare_peers.md"), "w") as f:
        f.write(table + "\n")
    if args.max_tool_error is not None:
        bad = [r for r in rows if "bnadapt_dist" in r[1] and max(r[3], r[4]) > args.max_tool_error]
        if bad:
            print(f"FAILED: bnadapt_dist rows above {args.max_tool_error:g}: {bad}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
