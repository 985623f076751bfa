#!/usr/bin/python3
"""Self-test of the Python test side (needs no bnadapt_dist):

  1. budget(): round-half-up of S/B, at least B, at most N.
  2. reference vs a hand-written numpy float64 forward of the mlp and the reuse model
     (plain concatenation + np.var(ddof=1), no Chan merging, no hooks; "batches": every call
     of a BN layer is one batch observation, so reuse's bn observes two per global batch).
  3. reference vs torch's own train-mode BatchNorm (momentum=1: after each global batch the
     running buffers hold that batch's mean and unbiased var) for resnet (scripted, traced),
     mixed (scripted, traced); partial last batches included.
  4. check_outputs.py passes on fake_tool.py outputs of world sizes 1, 2, 3 and fails on every
     injected defect.

  selftest.py [--fixtures DIR] [--quick]   (DIR defaults to a fresh temp dir, built with
                                            make_fixtures.py; --quick skips resnet)
Exit status 0 when everything passes.
"""
import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures"))
import check_outputs  # noqa: E402
import fake_tool  # noqa: E402
import make_fixtures  # noqa: E402
import models  # noqa: E402
import reference  # noqa: E402

FAILURES = []


def expect(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print(f"  FAIL: {msg}")
    return cond


def rel_err(a, b):
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()


def test_budget():
    cases = [  # (S, B, N) -> (used, batches)
        ((50, 16, 100), (48, 3)),   # 3.125 -> 3
        ((40, 16, 100), (48, 3)),   # 2.5 rounds up -> 3
        ((24, 16, 100), (32, 2)),   # 1.5 -> 2
        ((23, 16, 100), (16, 1)),   # 1.4375 -> 1
        ((5, 16, 100), (16, 1)),    # 0.3125 -> 0 -> at least B
        ((1, 1, 100), (1, 1)),
        ((10, 7, 100), (7, 1)),     # 1.43 -> 1
        ((11, 7, 100), (14, 2)),    # 1.57 -> 2
        ((1000, 16, 100), (100, 7)),  # capped at N: 6 full batches + 4
        ((100, 16, 100), (96, 6)),  # 6.25 -> 6: the budget, not N, decides
        ((5, 200, 100), (100, 1)),  # B > N
    ]
    for (s, b, n), exp in cases:
        expect(reference.budget(s, b, n) == exp, f"budget({s}, {b}, {n}) = {reference.budget(s, b, n)}, expected {exp}")


def _np_sd(model_path):
    return {k: v.detach().double().numpy() for k, v in torch.jit.load(model_path).state_dict().items()}


def _bn_np(h, sd, name):
    mean, var = h.mean(0), h.var(0)  # biased var normalises, like F.batch_norm in training
    return (h - mean) / np.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _np_stats(per_call):
    """per_call: list of [n_b, C] arrays, one per call of the layer (a layer called twice in
    a forward gives two per global batch) -> {weighting: (mean, var)} by plain numpy."""
    allx = np.concatenate(per_call, 0)
    means = np.stack([b.mean(0) for b in per_call])
    vars_ = np.stack([b.var(0, ddof=1) for b in per_call])
    bm = means.mean(0)
    return {"samples": (allx.mean(0), allx.var(0, ddof=1)),
            "batches": (bm, (vars_ + means ** 2).mean(0) - bm ** 2)}


def test_manual(fx):
    x_all = torch.load(os.path.join(fx, "data_vec48.pt")).double().numpy()
    for kind, S, B in (("mlp", 60, 8), ("mlp", 1000, 16), ("reuse", 75, 10), ("reuse", 30, 9)):
        path = os.path.join(fx, f"{kind}_scripted.pt")
        sd = _np_sd(path)
        used, nb = reference.budget(S, B, x_all.shape[0])
        caps = {}
        for b in range(nb):
            x = x_all[b * B:min((b + 1) * B, used)]
            lin = lambda h, n: h @ sd[f"{n}.weight"].T + sd[f"{n}.bias"]  # noqa: E731
            if kind == "mlp":
                h1 = lin(x, "fc1")
                h2 = lin(np.maximum(_bn_np(h1, sd, "bn1"), 0), "fc2")  # dropout off
                caps.setdefault("bn1", []).append(h1)
                caps.setdefault("bn2", []).append(h2)
            else:
                h1 = lin(x, "fc1")
                h2 = lin(np.maximum(_bn_np(h1, sd, "bn"), 0), "fc2")
                # Two calls, two batch observations ("samples" pools them all anyway).
                caps.setdefault("bn", []).extend([h1, h2])
        ref = reference.compute_reference(kind, path, os.path.join(fx, "data_vec48.pt"), S, B)
        expect(ref.num_batches == nb and ref.used == used, f"{kind}: batches {ref.num_batches}/{nb}")
        worst = 0.0
        for name, per_call in caps.items():
            manual = _np_stats(per_call)
            for w in reference.WEIGHTINGS:
                m, v, nbt = ref.stats[w][name]
                e = max((np.abs(m.numpy() - manual[w][0]) / np.sqrt(manual[w][1])).max(),
                        rel_err(v, manual[w][1]))
                worst = max(worst, e)
                expect(e < 1e-10, f"{kind} S={S} B={B} {w} {name}: reference vs numpy error {e:.2e}")
                expect(nbt == models.STALE_NBT + nb, f"{kind} {w} {name}: nbt {nbt}")
        print(f"  manual numpy {kind} S={S} B={B} ({used} samples, {nb} batches): max err {worst:.1e}")


def _torch_bn_stats(kind, model_path, inputs, S, B):
    """Per-layer stats from torch's own train-mode BN (momentum=1) and plain combination."""
    model = reference.load_eager(kind, model_path)
    used, nb = reference.budget(S, B, inputs.shape[0])
    tracked = models.bn_layers(model)
    counts = {}
    for name, m in tracked:
        m.train()
        m.momentum = 1.0
        m.register_forward_hook(lambda mod, a, out, name=name: counts.__setitem__(name, out.numel() // out.shape[1]))
    per = {name: [] for name, _ in tracked}
    with torch.no_grad():
        for b in range(nb):
            model(inputs[b * B:min((b + 1) * B, used)].double())
            for name, m in tracked:
                per[name].append((counts[name], m.running_mean.clone(), m.running_var.clone()))
    out = {"samples": {}, "batches": {}}
    for name, lst in per.items():
        n = sum(c for c, _, _ in lst)
        mean = sum(c * mb for c, mb, _ in lst) / n
        m2 = sum((c - 1) * vb + c * (mb - mean) ** 2 for c, mb, vb in lst)
        out["samples"][name] = (mean, m2 / (n - 1))
        bm = torch.stack([mb for _, mb, _ in lst]).mean(0)
        e2 = torch.stack([vb + mb ** 2 for _, mb, vb in lst]).mean(0)
        out["batches"][name] = (bm, e2 - bm ** 2)
    return out, nb


def test_torch_bn(fx, tmp, quick):
    cases = [("mixed", "mixed_scripted.pt", "data_img16.pt", None, 33, 9),
             ("mixed", "mixed_traced.pt", "data_img16.pt", None, 1000, 16)]
    if not quick:
        sub = os.path.join(tmp, "img32_30.pt")
        torch.save(torch.load(os.path.join(fx, "data_img32.pt"))[:30].clone(), sub)
        cases += [("resnet", "resnet_scripted.pt", "data_img32_dict.pt", None, 24, 12),
                  ("resnet", "resnet_traced.pt", None, sub, 1000, 12)]  # 12, 12, 6
    for kind, model, data, data_path, S, B in cases:
        data_path = data_path or os.path.join(fx, data)
        mp = os.path.join(fx, model)
        ref = reference.compute_reference(kind, mp, data_path, S, B)
        tb, nb = _torch_bn_stats(kind, mp, reference.load_inputs(data_path), S, B)
        worst = 0.0
        for w in reference.WEIGHTINGS:
            for name, _ in ref.layers:
                m, v, nbt = ref.stats[w][name]
                tm, tv = tb[w][name]
                e = max(((m - tm).abs() / tv.sqrt()).max().item(), rel_err(v, tv))
                worst = max(worst, e)
                expect(e < 1e-9, f"{kind} {model} {w} {name}: reference vs torch BN error {e:.2e}")
                expect(nbt == models.STALE_NBT + nb, f"{kind} {w} {name}: nbt {nbt}")
        print(f"  torch BN {kind} {model} S={S} B={B} ({ref.used} samples, {nb} batches, "
              f"{len(ref.layers)} layers): max err {worst:.1e}")


def _check(argv):
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        rc = check_outputs.main(argv)
    return rc, buf_out.getvalue(), buf_err.getvalue()


def test_checker(fx, tmp):
    def setup(kind, model, data, S, B):
        return dict(kind=kind, model_path=os.path.join(fx, model), data_path=os.path.join(fx, data),
                    samples=S, batch_size=B)

    def argv(cfg, w, runs, extra=()):
        return ["--kind", cfg["kind"], "--model", cfg["model_path"], "--data", cfg["data_path"],
                "--samples", str(cfg["samples"]), "--batch-size", str(cfg["batch_size"]),
                "--weighting", w, "--runs", *runs, *extra]

    # Good runs of 1, 2, 3 emulated ranks pass.
    for cfg, w in ((setup("mlp", "mlp_scripted.pt", "data_vec48.pt", 60, 8), "samples"),
                   (setup("reuse", "reuse_scripted.pt", "data_vec48.pt", 75, 10), "batches"),
                   (setup("mixed", "mixed_traced.pt", "data_img16.pt", 40, 16), "batches")):
        runs = []
        for np_ in (1, 2, 3):
            d = os.path.join(tmp, f"{cfg['kind']}_{w}_np{np_}")
            fake_tool.run_fake(weighting=w, world=np_, out_dir=d, **cfg)
            runs.append(d)
        rc, out, err = _check(argv(cfg, w, runs))
        expect(rc == 0, f"check_outputs failed on good {cfg['kind']}/{w} runs:\n{out}{err}")
        print(f"  good runs: {out.strip().splitlines()[0]}")
        # The other weighting must not pass.
        rc, out, err = _check(argv(cfg, {"samples": "batches", "batches": "samples"}[w], runs[:1]))
        expect(rc == 1, f"check_outputs accepted {cfg['kind']} runs under the other weighting")

    # Every injected defect fails.
    cfg = setup("mlp", "mlp_scripted.pt", "data_vec48.pt", 60, 8)
    good = os.path.join(tmp, "mlp_samples_np1")
    for mut in fake_tool.MUTATIONS[1:]:
        np_ = 2 if mut == "rank_local" else 1
        d = os.path.join(tmp, f"mut_{mut}_np{np_}")
        fake_tool.run_fake(weighting="samples", world=np_, out_dir=d, mutate=mut, **cfg)
        runs = [d] if mut != "rank_local" else [good, d]
        rc, out, err = _check(argv(cfg, "samples", runs))
        first = next((l.strip() for l in err.splitlines()[1:2]), "")
        expect(rc == 1, f"check_outputs accepted mutation {mut!r}:\n{out}{err}")
        print(f"  mutation {mut:16s} -> rc {rc}: {first[:150]}")
    # Missing files and a corrupt stats.pt fail, without a traceback.
    d = os.path.join(tmp, "broken_np1")
    shutil.copytree(good, d)
    os.remove(os.path.join(d, "report.json"))
    with open(os.path.join(d, "stats.pt"), "wb") as f:
        f.write(b"not a pickle")
    rc, out, err = _check(argv(cfg, "samples", [d]))
    expect(rc == 1 and "report.json was not written" in err and "torch.load(stats.pt) failed" in err,
           f"broken run dir not reported properly:\n{out}{err}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", help="fixture dir (built/updated with make_fixtures.py)")
    ap.add_argument("--quick", action="store_true", help="skip the resnet cases")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bnadapt_selftest_") as tmp:
        fx = args.fixtures or os.path.join(tmp, "fixtures")
        with contextlib.redirect_stdout(io.StringIO()):
            make_fixtures.make_fixtures(fx)
        for name, fn in (("budget", lambda: test_budget()),
                         ("reference vs numpy", lambda: test_manual(fx)),
                         ("reference vs torch BN", lambda: test_torch_bn(fx, tmp, args.quick)),
                         ("check_outputs on fake_tool runs", lambda: test_checker(fx, tmp))):
            t = time.time()
            print(f"[{name}]")
            fn()
            print(f"  ({time.time() - t:.1f} s)")
            torch.set_num_threads(2)  # fake_tool sets 1
    print(f"selftest: {'FAILED (' + str(len(FAILURES)) + ')' if FAILURES else 'OK'} in {time.time() - t0:.1f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
