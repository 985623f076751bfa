#!/usr/bin/python3
"""Float64 reference of bnadapt_dist's new BatchNorm statistics.

Library:
  compute_reference(kind, model_path, data_path, samples, batch_size) -> Reference
    .stats[weighting][layer] = (mean float64 [C], var float64 [C], num_batches_tracked int)
    for weighting in ("samples", "batches"); plus .layers, .used, .num_batches, .old_nbt.

CLI:
  reference.py --kind mlp --model M.pt --data D.pt --samples S --batch-size B
               [--weighting samples|batches|both] [--save REF.pt] [--float32]
  prints per-layer statistics; --save writes a dict in the tool's stats.pt format
  ("<layer>.running_mean/.running_var/.num_batches_tracked"), float64 unless --float32.

Semantics (the tool's contract):
  used = round_half_up(S / B) * B, at least B, at most N; global batch b = samples
  [b*B, min((b+1)*B, used)) in data order. The eager architecture (tests/fixtures/models.py)
  gets the TorchScript file's state_dict and runs in float64; every BN layer with
  track_running_stats=True normalises with batch statistics (train mode), every other module is
  in eval mode (dropout off). Each global batch is forwarded as a whole. A forward-pre-hook
  captures each adapted BN layer's input x; per channel over batch and spatial dims:
    samples: mean = sum x / n, var = unbiased variance over all n elements;
    batches: per batch b mean_b and unbiased var_b; mean = avg_b mean_b,
             var = avg_b (var_b + mean_b^2) - mean^2.
  Every call of a layer is one batch observation: under samples, all calls' values are pooled;
  under batches, a layer called twice per forward contributes two observations per global
  batch (as momentum=None running averages count them; num_batches_tracked still counts the
  global batches once). A layer no batch calls is unreached: not in .layers, listed in
  .unreached.
  num_batches_tracked = old + number of global batches.
"""
import argparse
import os
import sys
from dataclasses import dataclass, field

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures"))
import models  # noqa: E402

WEIGHTINGS = ("samples", "batches")


def budget(samples, batch_size, n):
    """(used samples, number of global batches) for budget S, batch size B and N samples."""
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples ({samples}) and batch size ({batch_size}) must be >= 1")
    k = (2 * samples + batch_size) // (2 * batch_size)  # round half up of S / B
    used = max(k, 1) * batch_size
    used = min(used, n)
    return used, (used + batch_size - 1) // batch_size


def load_inputs(data_path):
    obj = torch.load(data_path, map_location="cpu")
    if isinstance(obj, dict):
        if "inputs" not in obj:
            raise ValueError(f"{data_path}: dict without an 'inputs' key (keys: {list(obj)})")
        obj = obj["inputs"]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{data_path}: expected a tensor or a dict with 'inputs', got {type(obj)}")
    return obj


def load_eager(kind, model_path, dtype=torch.float64):
    """Eager architecture with the TorchScript file's state_dict, converted to dtype."""
    sd = torch.jit.load(model_path, map_location="cpu").state_dict()
    return models.eager_from_state_dict(kind, sd).to(dtype)


class _Moments:
    """Per-channel count, mean and M2 (sum of squared deviations) with Chan's combination."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None

    def add(self, x):  # x: [C, m] float64
        m = x.shape[1]
        mean = x.mean(dim=1)
        m2 = ((x - mean[:, None]) ** 2).sum(dim=1)
        if self.n == 0:
            self.n, self.mean, self.m2 = m, mean, m2
            return
        self.merge(m, mean, m2)

    def merge(self, m, mean, m2):
        if self.n == 0:
            self.n, self.mean, self.m2 = m, mean.clone(), m2.clone()
            return
        n = self.n + m
        delta = mean - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * m / n)
        self.n = n


def _channels_first(x):
    # [N, C, *spatial] -> [C, N * prod(spatial)]
    return x.detach().transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)


@dataclass
class Reference:
    kind: str
    layers: list  # [(name, channels)] adapted layers in module order
    used: int
    num_batches: int
    n_data: int
    old_nbt: dict  # name -> int
    stats: dict = field(default_factory=dict)  # weighting -> name -> (mean, var, nbt)
    untracked: list = field(default_factory=list)  # names of BN layers left alone
    unreached: list = field(default_factory=list)  # adaptable layers the forward never calls
    elements: dict = field(default_factory=dict)  # name -> total element count per channel


def compute_reference(kind, model_path, data_path, samples, batch_size, dtype=torch.float64,
                      autocast=None):
    """Reference statistics; dtype=float32 gives a float32 forward (accumulation stays float64);
    autocast=torch.bfloat16 runs each forward under CPU autocast, as the tool's --autocast bf16."""
    model = load_eager(kind, model_path, dtype)
    inputs = load_inputs(data_path)
    used, nb = budget(samples, batch_size, inputs.shape[0])
    tracked = models.bn_layers(model, tracked_only=True)
    untracked = [n for n, m in models.bn_layers(model, tracked_only=False) if not m.track_running_stats]
    model.eval()

    # Train-mode normalisation, done cheaply: the pre-hook computes this call's batch
    # statistics in float64 and loads them (mean, biased var) into the running buffers of the
    # eval-mode BN, so F.batch_norm normalises exactly like train mode would (up to rounding).
    # The buffers of this throwaway model are not the result; the hook's moments are.
    old_nbt = {name: int(m.num_batches_tracked.item()) for name, m in tracked}
    current = {}
    handles = []
    for name, m in tracked:
        def hook(mod, args, name=name):
            x = _channels_first(args[0])
            call = _Moments()
            call.add(x)
            current[name].merge(call.n, call.mean, call.m2)
            # "batches" weighting: every call is one batch observation (a layer used twice
            # in a forward contributes two), as momentum=None running averages count them.
            per_batch[name].append(call)
            if call.n < 2:
                raise ValueError(f"BN layer {name}: expected more than 1 value per channel "
                                 f"when normalising with batch statistics, got {call.n}")
            mod.running_mean.copy_(call.mean)
            mod.running_var.copy_(call.m2 / call.n)

        handles.append(m.register_forward_pre_hook(hook))

    total = {name: _Moments() for name, _ in tracked}
    missing = {name: [] for name, _ in tracked}  # batches that did not call the layer
    per_batch = {name: [] for name, _ in tracked}
    try:
        with torch.no_grad():
            for b in range(nb):
                lo, hi = b * batch_size, min((b + 1) * batch_size, used)
                for name, _ in tracked:
                    current[name] = _Moments()
                if autocast is None:
                    model(inputs[lo:hi].to(dtype))
                else:
                    with torch.autocast("cpu", dtype=autocast):
                        model(inputs[lo:hi].to(dtype))
                for name, _ in tracked:
                    mo = current[name]
                    if mo.n == 0:
                        missing[name].append(b)
                        continue
                    total[name].merge(mo.n, mo.mean, mo.m2)
    finally:
        for h in handles:
            h.remove()

    # A layer the forward never reaches keeps its statistics (the tool names it unreached); one
    # reached in some batches only is not a case the contract covers.
    unreached = [name for name, _ in tracked if len(missing[name]) == nb]
    partial = {name: b for name, b in missing.items() if b and name not in unreached}
    if partial:
        raise RuntimeError(f"layers called in some batches only: {partial}")
    tracked = [(n, m) for n, m in tracked if n not in unreached]
    ref = Reference(kind=kind, layers=[(n, m.running_mean.numel()) for n, m in tracked], used=used,
                    num_batches=nb, n_data=int(inputs.shape[0]), old_nbt=old_nbt,
                    untracked=untracked, unreached=unreached)
    ref.stats = {w: {} for w in WEIGHTINGS}
    for name, _ in tracked:
        t = total[name]
        nbt = old_nbt[name] + nb
        ref.elements[name] = t.n
        ref.stats["samples"][name] = (t.mean, t.m2 / (t.n - 1), nbt)
        means = torch.stack([mo.mean for mo in per_batch[name]])
        vars_ = torch.stack([mo.m2 / (mo.n - 1) for mo in per_batch[name]])
        mean = means.mean(dim=0)
        e2 = (vars_ + means ** 2).mean(dim=0)
        ref.stats["batches"][name] = (mean, e2 - mean ** 2, nbt)
    return ref


def as_stats_dict(ref, weighting, dtype=torch.float64):
    """The reference in the tool's stats.pt format."""
    out = {}
    for name, _ in ref.layers:
        mean, var, nbt = ref.stats[weighting][name]
        out[f"{name}.running_mean"] = mean.to(dtype).clone()
        out[f"{name}.running_var"] = var.to(dtype).clone()
        out[f"{name}.num_batches_tracked"] = torch.tensor(nbt, dtype=torch.int64)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=models.KINDS)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--weighting", choices=WEIGHTINGS + ("both",), default="both")
    ap.add_argument("--save", help="write the reference in stats.pt format (needs one weighting)")
    ap.add_argument("--float32", action="store_true", help="--save as float32 instead of float64")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    ref = compute_reference(args.kind, args.model, args.data, args.samples, args.batch_size)
    print(f"{args.kind}: {ref.n_data} samples in data, used {ref.used} in {ref.num_batches} "
          f"global batches of {args.batch_size}; {len(ref.layers)} adapted layers"
          + (f", untouched: {', '.join(ref.untracked)}" if ref.untracked else ""))
    weightings = WEIGHTINGS if args.weighting == "both" else (args.weighting,)
    for w in weightings:
        print(f"[{w}]")
        for name, c in ref.layers:
            mean, var, nbt = ref.stats[w][name]
            print(f"  {name:24s} C={c:4d} mean[0]={mean[0].item(): .6e} var[0]={var[0].item():.6e} "
                  f"|mean|max={mean.abs().max().item():.3e} var min/max={var.min().item():.3e}/"
                  f"{var.max().item():.3e} nbt={nbt}")
    if args.save:
        if args.weighting == "both":
            ap.error("--save needs --weighting samples or batches")
        torch.save(as_stats_dict(ref, args.weighting, torch.float32 if args.float32 else torch.float64),
                   args.save)
        print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
