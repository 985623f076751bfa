#!/usr/bin/python3
"""A Python stand-in for bnadapt_dist, used to test check_outputs.py itself (not the tool).

It emulates K ranks with K threads in float32: every global batch is split into K contiguous
shards, each thread forwards its shard through an eager copy of the model whose adapted BN
layers are replaced by a synchronised BN (per-channel count/mean/M2 of every shard are
combined in rank order behind a barrier, then each shard is normalised with the global batch
statistics; BN layers with track_running_stats=False are synced the same way but not adapted).
Statistics are accumulated in float64, one batch observation per call of a layer (a layer
called twice in a forward observes each global batch twice: two equal-weight observations
under --weighting batches), and it writes out.pt, stats.pt and report.json like the tool does,
including skipped_layers for the modules the tool leaves alone.

  fake_tool.py --kind mlp --model M.pt --data D.pt --samples S --batch-size B
               --weighting samples --world-size 2 --out-dir DIR [--mutate NAME]

--mutate injects one defect (see MUTATIONS) so a test can assert that the checker fails.
"""
import argparse
import json
import os
import re
import sys
import threading

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference  # noqa: E402
from reference import models  # noqa: E402

MUTATIONS = (
    "none",
    "mean_shift",      # one layer's running_mean moved by 1e-3 sigma
    "var_scale",       # one layer's running_var scaled by 1 + 1e-4
    "nbt",             # num_batches_tracked off by one
    "extra_key",       # stats.pt has a key of a non-adapted tensor
    "missing_key",     # stats.pt lacks one key
    "float64_stats",   # stats.pt tensors in float64 instead of the model's float32
    "stale_out",       # out.pt is the unchanged input model
    "out_weight",      # out.pt also changes a conv/linear weight
    "other_weighting", # statistics of the other weighting
    "world_size",      # report world_size off by one
    "estimator",       # report estimator of the other weighting
    "report_layers",   # report misses a layer
    "startup_sum",     # report startup_seconds is not exec -> job + set-up
    "rank_local",      # BN normalises shards with rank-local statistics (no sync)
    "train_mode",      # out.pt saved with its BN layers left in train mode
)


class _Sync:
    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world


class SyncBNEmu(nn.Module):
    """Float32 BN in train-mode normalisation with statistics synced across emulated ranks."""

    def __init__(self, bn, sync, rank, acc, rank_local):
        super().__init__()
        self.bn, self.sync, self.rank, self.acc, self.rank_local = bn, sync, rank, acc, rank_local

    def forward(self, x):
        c = x.shape[1]
        xc = x.transpose(0, 1).reshape(c, -1).to(torch.float64)
        n = xc.shape[1]
        mean = xc.mean(dim=1)
        m2 = ((xc - mean[:, None]) ** 2).sum(dim=1)
        self.sync.slots[self.rank] = (n, mean, m2)
        self.sync.barrier.wait()
        g = reference._Moments()
        for sn, smean, sm2 in self.sync.slots:  # rank order: identical on every rank
            g.merge(sn, smean, sm2)
        self.sync.barrier.wait()  # slots may be reused by the next call
        if self.rank == 0 and self.acc is not None:
            self.acc.append(g)  # this call's global-batch moments: one batch observation
        if self.rank_local:
            g_mean, g_var = mean, m2 / n
        else:
            g_mean, g_var = g.mean, g.m2 / g.n
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = (1.0 / torch.sqrt(g_var + self.bn.eps)).to(torch.float32)
        y = (x - g_mean.to(torch.float32).view(shape)) * scale.view(shape)
        if self.bn.affine:
            y = y * self.bn.weight.view(shape) + self.bn.bias.view(shape)
        return y


_BN_KIND = re.compile(r"^(Sync)?BatchNorm(Act)?([123]d)?$")


def _skipped_layers(script_model, adapted):
    """The tool's skipped_layers, by its rules (src/model/adaptable_model.cpp leftAlone), read
    off the TorchScript module: every module not adapted that owns tensor running_mean and
    running_var (unreached without a forward, frozen, else not observable), or a BatchNorm
    without running buffers (track_running_stats=False)."""
    out = []
    for name, m in script_model.named_modules():
        name = name or "<root>"
        if name in adapted:
            continue
        kind = m.original_name
        mean = getattr(m, "running_mean", None) if hasattr(m, "running_mean") else "absent"
        var = getattr(m, "running_var", None) if hasattr(m, "running_var") else "absent"
        if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
            if not hasattr(m, "forward"):
                cat, why = "unreached", "the forward never reaches it: statistics left unchanged"
            elif "Frozen" in kind:
                cat, why = "frozen", "frozen by design: normalises with fixed running statistics"
            else:
                cat, why = "not observable", ("owns running_mean/running_var, but no forward graph "
                                              "hands them to batch_norm")
        elif (mean is None and "InstanceNorm" not in kind) or (_BN_KIND.match(kind) and
                                                              not isinstance(mean, torch.Tensor)):
            cat, why = "track_running_stats=False", "track_running_stats=False (no running buffers)"
        else:
            continue
        out.append({"name": name, "kind": kind, "category": cat, "reason": why})
    return out


def _replace(model, name, new):
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def run_fake(kind, model_path, data_path, samples, batch_size, weighting, world, out_dir,
             mutate="none"):
    assert mutate in MUTATIONS, mutate
    torch.set_num_threads(1)
    sd = torch.jit.load(model_path, map_location="cpu").state_dict()
    inputs = reference.load_inputs(data_path).to(torch.float32)
    used, nb = reference.budget(samples, batch_size, inputs.shape[0])
    base = models.eager_from_state_dict(kind, sd)
    layers = [(n, m.num_features) for n, m in models.bn_layers(base)]
    sync = {n: _Sync(world) for n, _ in models.bn_layers(base, tracked_only=False)}
    per_call = {n: [] for n, _ in layers}  # one _Moments per call of the layer, in call order
    current = {}
    replicas = []
    for r in range(world):
        rep = models.eager_from_state_dict(kind, sd).eval()
        # Untracked BN layers (track_running_stats=False) normalise with batch statistics in
        # every mode: they are synced too (global-batch semantics), but not accumulated.
        for n, m in models.bn_layers(rep, tracked_only=False):
            _replace(rep, n, SyncBNEmu(m, sync[n], r, None, mutate == "rank_local"))
        replicas.append(rep)

    def worker(r, shard, errors):
        try:
            with torch.no_grad():
                replicas[r](shard)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            for s in sync.values():
                s.barrier.abort()

    for b in range(nb):
        lo, hi = b * batch_size, min((b + 1) * batch_size, used)
        bounds = [lo + (hi - lo) * r // world for r in range(world + 1)]
        for n, _ in layers:
            current[n] = []
            for rep in replicas:
                rep.get_submodule(n).acc = current[n]
        errors = []
        threads = [threading.Thread(target=worker, args=(r, inputs[bounds[r]:bounds[r + 1]], errors))
                   for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for n, _ in layers:
            per_call[n].extend(current[n])

    w_used = {"samples": "batches", "batches": "samples"}[weighting] if mutate == "other_weighting" else weighting
    stats = {}
    for n, c in layers:
        if w_used == "samples":
            t = reference._Moments()
            for mo in per_call[n]:
                t.merge(mo.n, mo.mean, mo.m2)
            mean, var = t.mean, t.m2 / (t.n - 1)
        else:
            means = torch.stack([mo.mean for mo in per_call[n]])
            vars_ = torch.stack([mo.m2 / (mo.n - 1) for mo in per_call[n]])
            mean = means.mean(0)
            var = (vars_ + means ** 2).mean(0) - mean ** 2
        old = sd[f"{n}.num_batches_tracked"]
        stats[f"{n}.running_mean"] = mean.to(sd[f"{n}.running_mean"].dtype)
        stats[f"{n}.running_var"] = var.to(sd[f"{n}.running_var"].dtype)
        stats[f"{n}.num_batches_tracked"] = old + nb

    first = layers[0][0]
    if mutate == "mean_shift":
        stats[f"{first}.running_mean"] = stats[f"{first}.running_mean"] + 1e-3 * stats[f"{first}.running_var"].sqrt()
    elif mutate == "var_scale":
        stats[f"{first}.running_var"] = stats[f"{first}.running_var"] * (1 + 1e-4)
    elif mutate == "nbt":
        stats[f"{first}.num_batches_tracked"] = stats[f"{first}.num_batches_tracked"] + 1

    os.makedirs(out_dir, exist_ok=True)
    out = torch.jit.load(model_path, map_location="cpu")
    skipped = _skipped_layers(out, {n for n, _ in layers})
    if mutate != "stale_out":
        live = dict(out.named_buffers())
        with torch.no_grad():
            for k, v in stats.items():
                live[k].copy_(v)
            if mutate == "out_weight":
                dict(out.named_parameters())[next(k for k, _ in out.named_parameters())].mul_(1.001)
    if mutate == "train_mode":
        mods = dict(out.named_modules())
        for n, _ in layers:
            mods[n].train()
    out.save(os.path.join(out_dir, "out.pt"))

    if mutate == "extra_key":
        k = next(k for k in sd if k not in stats)
        stats[k] = sd[k].clone()
    elif mutate == "missing_key":
        del stats[f"{first}.running_var"]
    elif mutate == "float64_stats":
        stats = {k: (v.double() if v.is_floating_point() else v) for k, v in stats.items()}
    torch.save(stats, os.path.join(out_dir, "stats.pt"))

    report = {
        "world_size": world + (1 if mutate == "world_size" else 0),
        "estimator": ({"samples": "batches", "batches": "samples"}[weighting]
                      if mutate == "estimator" else weighting),
        "samples_used": used,
        "batches": nb,
        "layers": [{"name": n, "channels": c, "batch_observations": len(per_call[n])}
                   for n, c in layers[(1 if mutate == "report_layers" else 0):]],
        "unused_layers": [],
        "skipped_layers": skipped,
        "layer_counts": {"adapted": len(layers), "left_alone": len(skipped),
                         "left_alone_by_reason": ", ".join(
                             f"{c} x{sum(e['category'] == c for e in skipped)}"
                             for c in dict.fromkeys(e["category"] for e in skipped)),
                         "unreached": 0},
        "generator": "fake_tool.py",
        "timings": {"process_start_to_job_seconds": 1.25, "setup_seconds": 0.5,
                    "startup_seconds": 1.75 + (1.0 if mutate == "startup_sum" else 0.0),
                    "total_seconds": 3.0},
    }
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=models.KINDS)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--weighting", choices=reference.WEIGHTINGS, required=True)
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--mutate", choices=MUTATIONS, default="none")
    args = ap.parse_args(argv)
    run_fake(args.kind, args.model, args.data, args.samples, args.batch_size, args.weighting,
             args.world_size, args.out_dir, args.mutate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
