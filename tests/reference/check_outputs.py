#!/usr/bin/python3
"""Checks bnadapt_dist's outputs of one or more world sizes against the float64 reference.

Usage:
  check_outputs.py --kind resnet --model M.pt --data D.pt --samples S --batch-size B
                   --weighting samples --runs DIR_np1 DIR_np2 DIR_np3
                   [--tol 1e-5] [--cross-tol 1e-6] [--forward-tol 1e-3] [--threads 2]
                   [--precision model|bf16] [--noise-margin 4]

Each DIR holds out.pt, stats.pt and report.json of one run. A DIR whose name ends with _npK
must report world_size K. Checks:
  stats.pt   torch.load-able dict with exactly "<layer>.running_mean/.running_var/
             .num_batches_tracked" of every adapted layer (BN with track_running_stats=True),
             dtype and shape of the model's buffers, finite; load_state_dict(strict=False) on
             the eager model reports no unexpected key.
  reference  max over channels of |mean - mean_ref| / sqrt(var_ref) <= tol_L and
             |var - var_ref| / var_ref <= tol_L; num_batches_tracked == old + global batches.
             tol_L, per layer L, is derived from the forward pass's own rounding noise:
               tol_L = max(tol, margin * noise_L)
             where noise_L is the error against the float64 reference of the same statistics
             computed with the tool's forward precision (float32, or bf16 autocast with
             --precision bf16) at 1 and at 2 threads, maximised over those runs and over the
             layers up to L (rounding noise compounds with depth). The tool's float32 forward
             uses other kernels and thread splits than Python's, so its noise differs in its
             realisation but not in size: margin (default 4) covers that. The statistics
             arithmetic itself is checked without forward noise by the float64-model case
             (--tol 1e-5 with noise ~1e-15) and by check_exact.py (bit for bit).
  cross      every DIR vs the first: same keys, the same two measures <= cross-tol, equal nbt.
  out.pt     torch.jit.load-able; modules saved in the input model's train/eval modes;
             state_dict bitwise equal to --model's except the adapted
             buffers, which equal stats.pt bitwise (untracked BN layers unchanged); its eval
             forward on the first 8 samples matches the eager float32 model carrying the
             reference statistics: max|y - y_ref| / max|y_ref| <= max(forward-tol, margin *
             the same error of the eager model carrying the noisiest low-precision reference).
  report     world_size (from _npK), estimator == --weighting, layers == [{name, channels}]
             of the adapted layers (order not checked); skipped_layers names, each with a
             reason, exactly the modules models.left_alone() lists (FrozenBatchNorm2d, an
             unobservable normalisation, track_running_stats=False), and the unreached layers
             exactly the reference's.
Exit status 0 when everything passes, 1 on any failure (all failures are listed), 2 on usage.
"""
import argparse
import json
import math
import os
import re
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference  # noqa: E402
from reference import models  # noqa: E402

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
FORWARD_SAMPLES = 8


class Checker:
    def __init__(self):
        self.failures = []
        self.notes = []

    def fail(self, where, msg):
        self.failures.append(f"{where}: {msg}")

    def expect(self, cond, where, msg):
        if not cond:
            self.fail(where, msg)
        return cond


def _short(items, k=6):
    items = list(items)
    if len(items) <= k:
        return str(items)
    return f"{items[:k]} ... ({len(items)} in all)"


def _exc(e, limit=400):
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _bitwise_equal(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.detach().contiguous().numpy().tobytes() == b.detach().contiguous().numpy().tobytes()


def _layer_errors(mean, var, ref_mean, ref_var):
    """(max |dmean|/sigma_ref, max rel var err) over channels, NaN-propagating."""
    mean = mean.detach().to(torch.float64)
    var = var.detach().to(torch.float64)
    sigma = ref_var.clamp_min(1e-30).sqrt()
    dmean = ((mean - ref_mean).abs() / sigma).max().item()
    dvar = ((var - ref_var).abs() / ref_var.abs().clamp_min(1e-30)).max().item()
    if not (math.isfinite(dmean) and math.isfinite(dvar)):
        return math.inf, math.inf
    return dmean, dvar


def _expected_keys(ref):
    return {f"{name}.{b}" for name, _ in ref.layers for b in BUFFERS}


def forward_noise(args, ref, model_dtype):
    """Per layer: (noise, tolerance), and the low-precision references, as the docstring says."""
    if args.precision == "bf16":
        dtype, autocast = torch.float32, torch.bfloat16
    else:
        dtype, autocast = model_dtype, None
    lows = []
    noise = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            lows.append(reference.compute_reference(args.kind, args.model, args.data, args.samples,
                                                    args.batch_size, dtype=dtype, autocast=autocast))
    finally:
        torch.set_num_threads(args.threads)
    envelope = (0.0, 0.0)
    for name, _ in ref.layers:  # module order: the envelope grows with depth
        ref_mean, ref_var, _ = ref.stats[args.weighting][name]
        for low in lows:
            m, v, _ = low.stats[args.weighting][name]
            e = _layer_errors(m, v, ref_mean, ref_var)
            envelope = (max(envelope[0], e[0]), max(envelope[1], e[1]))
        noise[name] = envelope
    tols = {name: tuple(max(args.tol, args.noise_margin * e) for e in noise[name]) for name in noise}
    return noise, tols, lows


def check_stats(chk, where, stats, ref, weighting, model_sd, tols):
    """Returns the worst (dmean, dvar) of this run vs the reference."""
    worst = (0.0, 0.0)
    if not chk.expect(isinstance(stats, dict), where, f"stats.pt holds a {type(stats).__name__}, "
                      "expected a dict"):
        return (math.inf, math.inf)
    expected = _expected_keys(ref)
    keys = set(stats)
    missing, extra = sorted(expected - keys), sorted(keys - expected)
    chk.expect(not missing, where, f"stats.pt lacks keys {_short(missing)}")
    chk.expect(not extra, where, f"stats.pt has unexpected keys {_short(extra)} (only the adapted layers' "
               f"{', '.join(BUFFERS)} belong there)")
    for k in sorted(keys & expected):
        v = stats[k]
        if not chk.expect(isinstance(v, torch.Tensor), where, f"stats.pt[{k!r}] is a "
                          f"{type(v).__name__}, expected a tensor"):
            continue
        orig = model_sd[k]
        chk.expect(v.dtype == orig.dtype and tuple(v.shape) == tuple(orig.shape), where,
                   f"stats.pt[{k!r}] is {v.dtype} {tuple(v.shape)}, the model's buffer is "
                   f"{orig.dtype} {tuple(orig.shape)}")
        if v.is_floating_point():
            chk.expect(bool(torch.isfinite(v).all()), where, f"stats.pt[{k!r}] has non-finite values")
    for name, _ in ref.layers:
        ref_mean, ref_var, ref_nbt = ref.stats[weighting][name]
        km, kv, kn = (f"{name}.{b}" for b in BUFFERS)
        if not all(isinstance(stats.get(k), torch.Tensor) for k in (km, kv, kn)):
            continue
        m, v, n = stats[km], stats[kv], stats[kn]
        if m.numel() != ref_mean.numel() or v.numel() != ref_var.numel():
            chk.fail(where, f"layer {name}: {m.numel()}/{v.numel()} channels, expected {ref_mean.numel()}")
            continue
        dmean, dvar = _layer_errors(m.reshape(-1), v.reshape(-1), ref_mean, ref_var)
        worst = (max(worst[0], dmean), max(worst[1], dvar))
        tol_m, tol_v = tols[name]
        chk.expect(dmean <= tol_m, where, f"layer {name}: max |dmean|/sigma vs reference = {dmean:.3e} "
                   f"> tol {tol_m:.3g} (mean[0] {m.reshape(-1)[0].item():.8g}, ref {ref_mean[0].item():.8g})")
        chk.expect(dvar <= tol_v, where, f"layer {name}: max rel var error vs reference = {dvar:.3e} "
                   f"> tol {tol_v:.3g} (var[0] {v.reshape(-1)[0].item():.8g}, ref {ref_var[0].item():.8g})")
        chk.expect(n.numel() == 1 and int(n.reshape(-1)[0].item()) == ref_nbt, where,
                   f"layer {name}: num_batches_tracked = {n.tolist()}, expected {ref_nbt} "
                   f"(old {ref.old_nbt[name]} + {ref.num_batches} global batches)")
    return worst


def check_load_state_dict(chk, where, stats, eager):
    try:
        res = models.load_state(eager, stats, strict=False)
    except Exception as e:  # size mismatch and the like
        chk.fail(where, f"model.load_state_dict(stats, strict=False) failed: {_exc(e)}")
        return
    chk.expect(not res.unexpected_keys, where, f"load_state_dict(stats, strict=False) reports "
               f"unexpected keys {_short(res.unexpected_keys)}")


def check_out_model(chk, where, path, stats, ref, model_sd, modes_in, x, y_ref, y_stale, forward_tol):
    """Returns (forward error, stale-model forward difference) or None."""
    try:
        out = torch.jit.load(path, map_location="cpu")
    except Exception as e:
        chk.fail(where, f"torch.jit.load({path}) failed: {_exc(e)}")
        return None
    out_sd = out.state_dict()
    modes_out = {n: m.training for n, m in out.named_modules()}
    flipped = sorted(n or "<root>" for n in modes_in if modes_out.get(n, modes_in[n]) != modes_in[n])
    chk.expect(not flipped, where, f"out.pt saved modules in another train/eval mode than the input "
               f"model: {_short(flipped)}")
    adapted = _expected_keys(ref)
    missing, extra = sorted(set(model_sd) - set(out_sd)), sorted(set(out_sd) - set(model_sd))
    chk.expect(not missing and not extra, where, f"out.pt state_dict keys differ from the input "
               f"model's: missing {_short(missing)}, extra {_short(extra)}")
    changed = []
    for k in sorted(set(model_sd) & set(out_sd)):
        if k in adapted:
            if isinstance(stats, dict) and isinstance(stats.get(k), torch.Tensor):
                chk.expect(_bitwise_equal(out_sd[k], stats[k]), where,
                           f"out.pt buffer {k} is not bitwise equal to stats.pt[{k!r}]")
        elif not _bitwise_equal(out_sd[k], model_sd[k]):
            changed.append(k)
    untracked_changed = [k for k in changed if any(k.startswith(u + ".") for u in ref.untracked)]
    chk.expect(not untracked_changed, where, f"out.pt changed the untracked BN layers' entries "
               f"{_short(untracked_changed)}")
    chk.expect(not changed, where, f"out.pt changed entries that are not adapted BN buffers: "
               f"{_short(changed)}")

    try:
        out.eval()
        with torch.no_grad():
            y = out(x)
    except Exception as e:
        chk.fail(where, f"out.pt forward in eval mode failed: {_exc(e)}")
        return None
    if not chk.expect(isinstance(y, torch.Tensor) and y.shape == y_ref.shape, where,
                      f"out.pt forward returned {getattr(y, 'shape', type(y))}, expected {tuple(y_ref.shape)}"):
        return None
    scale = y_ref.abs().max().item()
    err = (y - y_ref).abs().max().item() / max(scale, 1e-12)
    stale = (y_stale - y_ref).abs().max().item() / max(scale, 1e-12)
    if not math.isfinite(err):
        err = math.inf
    chk.expect(err <= forward_tol, where, f"out.pt eval forward differs from the eager model with "
               f"the reference statistics: max|dy|/max|y_ref| = {err:.3e} > {forward_tol:g} "
               f"(the stale model differs by {stale:.3e})")
    if stale <= 10 * forward_tol:
        chk.notes.append(f"{where}: note: the stale model's output is only {stale:.2e} away; the "
                         "forward check does not discriminate well")
    return err, stale


def check_report(chk, where, path, run_dir, ref, weighting, left_alone):
    try:
        with open(path) as f:
            rep = json.load(f)
    except Exception as e:
        chk.fail(where, f"cannot read report {path}: {_exc(e)}")
        return
    if not chk.expect(isinstance(rep, dict), where, "report.json is not a JSON object"):
        return
    ws = rep.get("world_size")
    chk.expect(isinstance(ws, int) and not isinstance(ws, bool) and ws >= 1, where,
               f"report world_size = {ws!r}, expected a positive integer")
    m = re.search(r"_np(\d+)$", os.path.basename(os.path.normpath(run_dir)))
    if m:
        chk.expect(ws == int(m.group(1)), where, f"report world_size = {ws!r}, the run directory "
                   f"says np={m.group(1)}")
    chk.expect(rep.get("estimator") == weighting, where,
               f"report estimator = {rep.get('estimator')!r}, expected {weighting!r}")
    # Start-up: process exec -> Job, the Job's set-up, and their sum (exec -> first forward).
    t = rep.get("timings") or {}
    keys = ("process_start_to_job_seconds", "setup_seconds", "startup_seconds", "total_seconds")
    if chk.expect(all(isinstance(t.get(k), (int, float)) for k in keys), where,
                  f"report timings lack one of {keys}: {t!r}"):
        chk.expect(0 < t["process_start_to_job_seconds"] < 600 and t["setup_seconds"] > 0,
                   where, f"report start-up times out of range: {t!r}")
        chk.expect(abs(t["startup_seconds"] - t["process_start_to_job_seconds"]
                       - t["setup_seconds"]) < 1e-6, where,
                   f"report startup_seconds is not exec -> job + set-up: {t!r}")
    layers = rep.get("layers")
    if not chk.expect(isinstance(layers, list), where, f"report layers = {type(layers).__name__}, "
                      "expected a list"):
        return
    got = []
    for i, entry in enumerate(layers):
        if not (isinstance(entry, dict) and "name" in entry and "channels" in entry):
            chk.fail(where, f"report layers[{i}] = {entry!r} lacks name/channels")
            continue
        if entry.get("adapted", True):
            got.append((entry["name"], entry["channels"]))
    # Nothing silent: every other owner of running statistics is named with a reason, and
    # every layer the forward never reached is named as unreached.
    skipped = rep.get("skipped_layers") or []
    unreached = set(rep.get("unused_layers") or [])
    unreached |= {e.get("name") for e in skipped if e.get("category") == "unreached"}
    named = {e.get("name") for e in skipped if e.get("category") != "unreached" and e.get("reason")}
    chk.expect(named == set(left_alone), where, f"report skipped_layers with a reason: "
               f"{_short(sorted(named))}, expected {_short(sorted(left_alone))}")
    chk.expect(unreached == set(ref.unreached), where, f"report names as unreached "
               f"{_short(sorted(unreached))}, expected {_short(sorted(ref.unreached))}")
    exp = list(ref.layers)
    chk.expect(sorted(got, key=str) == sorted(exp, key=str), where,
               f"report layers differ: missing {_short(sorted(set(exp) - set(got)))}, "
               f"unexpected {_short(sorted(set(got) - set(exp), key=str))}"
               + (f", duplicates" if len(got) != len(set(got)) else ""))


def check_cross(chk, where, stats, first, ref, weighting, cross_tol):
    worst = (0.0, 0.0)
    if not (isinstance(stats, dict) and isinstance(first, dict)):
        return (math.inf, math.inf)
    if not chk.expect(set(stats) == set(first), where, f"keys differ from the first run's: "
                      f"{_short(sorted(set(stats) ^ set(first)))}"):
        pass
    for name, _ in ref.layers:
        _, ref_var, _ = ref.stats[weighting][name]
        km, kv, kn = (f"{name}.{b}" for b in BUFFERS)
        try:
            dmean = _layer_errors(stats[km].reshape(-1), stats[kv].reshape(-1),
                                  first[km].reshape(-1).to(torch.float64), ref_var)[0]
            dvar = ((stats[kv].reshape(-1).double() - first[kv].reshape(-1).double()).abs()
                    / ref_var.abs().clamp_min(1e-30)).max().item()
            same_nbt = torch.equal(stats[kn], first[kn])
        except Exception:  # missing keys / shapes: already reported per run
            continue
        if not math.isfinite(dvar):
            dvar = math.inf
        worst = (max(worst[0], dmean), max(worst[1], dvar))
        chk.expect(dmean <= cross_tol, where, f"layer {name}: max |dmean|/sigma vs the first run = "
                   f"{dmean:.3e} > cross-tol {cross_tol:g}")
        chk.expect(dvar <= cross_tol, where, f"layer {name}: max rel var diff vs the first run = "
                   f"{dvar:.3e} > cross-tol {cross_tol:g}")
        chk.expect(same_nbt, where, f"layer {name}: num_batches_tracked {stats[kn].tolist()} differs "
                   f"from the first run's {first[kn].tolist()}")
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=models.KINDS)
    ap.add_argument("--model", required=True, help="the input TorchScript model given to the tool")
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--weighting", choices=reference.WEIGHTINGS, required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="run directories (out.pt, stats.pt, report.json)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--cross-tol", type=float, default=1e-6)
    ap.add_argument("--forward-tol", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("model", "bf16"), default="model",
                    help="the tool's forward precision, for the noise-derived tolerances: the "
                         "model's dtype, or bf16 autocast (--autocast bf16)")
    ap.add_argument("--noise-margin", type=float, default=4.0,
                    help="tolerance = max(--tol, margin * measured forward noise), per layer")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    chk = Checker()
    ref = reference.compute_reference(args.kind, args.model, args.data, args.samples, args.batch_size)
    model_in = torch.jit.load(args.model, map_location="cpu")
    model_sd = model_in.state_dict()
    modes_in = {n: m.training for n, m in model_in.named_modules()}
    inputs = reference.load_inputs(args.data)
    # The eager model (in the model's own dtype) with the reference statistics, and the
    # stale input model.
    dtype = next((t.dtype for t in model_sd.values() if t.is_floating_point()), torch.float32)
    x = inputs[:FORWARD_SAMPLES].to(dtype)
    ref_sd = dict(model_sd)
    ref_sd.update(reference.as_stats_dict(ref, args.weighting, dtype))
    eager = models.eager_from_state_dict(args.kind, ref_sd).to(dtype)
    noise, tols, lows = forward_noise(args, ref, dtype)
    with torch.no_grad():
        y_ref = eager(x)
        y_noise = 0.0  # the forward error that the low-precision references themselves cause
        scale = max(y_ref.abs().max().item(), 1e-12)
        for low in lows:
            models.load_state(eager, reference.as_stats_dict(low, args.weighting, dtype), strict=False)
            y_noise = max(y_noise, (eager(x) - y_ref).abs().max().item() / scale)
        models.load_state(eager, model_sd)
        y_stale = eager(x)
    forward_tol = max(args.forward_tol, args.noise_margin * y_noise)
    loosened = [(n, noise[n], tols[n]) for n, _ in ref.layers if max(tols[n]) > args.tol]
    print(f"{args.kind}/{args.weighting}: forward noise ({args.precision} precision, 1 and 2 threads) "
          f"up to {max((max(e) for e in noise.values()), default=0.0):.1e}; "
          f"{len(loosened)} of {len(ref.layers)} layers get tol = {args.noise_margin:g} x noise > "
          f"{args.tol:g}; forward tol {forward_tol:.2e} (noise {y_noise:.1e})")
    for n, e, t in loosened:
        print(f"  {n}: noise {e[0]:.1e} / {e[1]:.1e} -> tol {t[0]:.2e} / {t[1]:.2e} (mean / var)")

    all_stats = []
    worst_ref = (0.0, 0.0)
    fwd = []
    for run in args.runs:
        where = f"{args.kind}/{args.weighting} {run}"
        paths = {n: os.path.join(run, n) for n in ("out.pt", "stats.pt", "report.json")}
        for n, p in paths.items():
            chk.expect(os.path.isfile(p), where, f"{n} was not written ({p})")
        stats = None
        if os.path.isfile(paths["stats.pt"]):
            try:
                # as torch >= 2.6 loads by default: a plain dict of tensors, no type tags
                stats = torch.load(paths["stats.pt"], map_location="cpu", weights_only=True)
            except Exception as e:
                chk.fail(where, f"torch.load(stats.pt) failed: {_exc(e)}")
        if stats is not None:
            w = check_stats(chk, where, stats, ref, args.weighting, model_sd, tols)
            worst_ref = (max(worst_ref[0], w[0]), max(worst_ref[1], w[1]))
            if isinstance(stats, dict):
                models.load_state(eager, model_sd)
                check_load_state_dict(chk, where, stats, eager)
        if os.path.isfile(paths["out.pt"]):
            r = check_out_model(chk, where, paths["out.pt"], stats, ref, model_sd, modes_in, x, y_ref, y_stale,
                                forward_tol)
            if r:
                fwd.append(r)
        if os.path.isfile(paths["report.json"]):
            check_report(chk, where, paths["report.json"], run, ref, args.weighting,
                         models.left_alone(eager))
        all_stats.append((run, stats))

    worst_cross = (0.0, 0.0)
    if all_stats and all_stats[0][1] is not None:
        first = all_stats[0][1]
        for run, stats in all_stats[1:]:
            if stats is None:
                continue
            w = check_cross(chk, f"{args.kind}/{args.weighting} {run} vs {all_stats[0][0]}", stats,
                            first, ref, args.weighting, args.cross_tol)
            worst_cross = (max(worst_cross[0], w[0]), max(worst_cross[1], w[1]))

    summary = (f"{args.kind}/{args.weighting}: max |dmean|/sigma {worst_ref[0]:.1e}, max rel var err "
               f"{worst_ref[1]:.1e} ({len(args.runs)} world size{'s' if len(args.runs) != 1 else ''}, "
               f"{len(ref.layers)} layers, {ref.used} samples in {ref.num_batches} batches)")
    if len(args.runs) > 1:
        summary += f"; across runs {worst_cross[0]:.1e} / {worst_cross[1]:.1e}"
    if fwd:
        summary += (f"; forward err {max(e for e, _ in fwd):.1e} (stale model "
                    f"{min(s for _, s in fwd):.1e})")
    print(summary)
    for n in chk.notes:
        print(n)
    if chk.failures:
        print(f"FAILED: {len(chk.failures)} check(s)", file=sys.stderr)
        for f in chk.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
