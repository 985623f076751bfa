#!/usr/bin/python3
"""Trains the Fashion-MNIST demo model and makes its BatchNorm statistics stale.

A small CNN (three conv-BN-ReLU blocks with pooling, a BatchNorm1d before the classifier,
about 100k parameters) is trained on Fashion-MNIST, read directly from the Debian IDX .gz
files (package dataset-fashion-mnist), with deterministic settings on 2 CPU threads.
It is then compressed the way a user meets stale BN statistics: every conv and linear
weight is magnitude-pruned per layer (default: the 60% smallest entries set to zero, no
fine-tuning), optionally after averaging the weights with those of an earlier training step
(--average-step, weight averaging). The BN running buffers are left as they were: they no
longer match the compressed weights (top-1 falls from about 91% to about 75%; re-estimating
the statistics on 2048 training images brings it back to about 89%).

Printed and recorded top-1 accuracies on the 10000 test images:
  trained     the model as trained, with its own running statistics
  stale       the compressed model with the old (stale) running statistics
  reestimated the compressed model after a Python BN re-estimation: running stats reset,
              momentum=None (cumulative average), the first --adapt-samples training images
              in file order forwarded in batches of --adapt-batch-size with only the BN
              layers in train mode. This is the reference for bnadapt_dist.

Inputs are pixel / 255 normalised with mean 0.2860 and std 0.3530, as [N, 1, 28, 28] float32.

Outputs in OUT:
  model.pt         torch.jit.script of the compressed model, eval mode, stale statistics;
                   reloaded with torch.jit.load and checked to give the "stale" accuracy
  checkpoint.pt    torch.save({"epoch", "model": state_dict, "optimizer": state_dict}) of
                   the compressed model (stale statistics)
  expected.json    the three accuracies, sample counts, settings and the cache key

If OUT/model.pt and OUT/expected.json exist and expected.json records the same cache key
(a hash of this script and its arguments), nothing is done ("cached").

Usage: /usr/bin/python3 launch/demo/train_fashion_mnist.py OUT [--data DIR] [--force]
"""

import argparse
import gzip
import hashlib
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = 0.2860
STD = 0.3530
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


# ---- data ----------------------------------------------------------------------------------

def read_idx(path):
    """An IDX ubyte file (raw or gzip, detected by its magic) as a numpy uint8 array."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        sys.exit(f"{path}: not an IDX ubyte file (magic {raw[:4].hex()})")
    ndims = raw[3]
    dims = struct.unpack(f">{ndims}I", raw[4:4 + 4 * ndims])
    payload = raw[4 + 4 * ndims:]
    expected = int(np.prod(dims))
    if len(payload) != expected:
        sys.exit(f"{path}: payload is {len(payload)} bytes, dims {dims} need {expected}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def load_split(data_dir, split):
    """(images [N, 1, 28, 28] float32 normalised, labels [N] int64) of 'train' or 't10k'."""
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0]:
        sys.exit(f"{data_dir}/{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - MEAN) / STD
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


# ---- model ---------------------------------------------------------------------------------

class FashionNet(nn.Module):
    """conv-BN-ReLU x3 with max pooling, then linear-BN1d-ReLU-linear; ~98k parameters."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),                                           # 28 -> 14
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),                                           # 14 -> 7
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),                                           # 7 -> 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def top1(model, x, y, batch_size=1000):
    """Top-1 accuracy in percent, with the model in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / x.shape[0]


def train(model, x, y, args):
    """SGD with Nesterov momentum and a one-cycle (cosine) schedule. Returns (optimizer, epochs, early_state)."""
    steps_per_epoch = x.shape[0] // args.batch_size
    total = steps_per_epoch * args.epochs
    if not 0 <= args.average_step <= total:
        sys.exit(f"--average-step {args.average_step}: training has {total} steps")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total,
                                                pct_start=0.2)
    gen = torch.Generator().manual_seed(args.seed)
    early_state = None
    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == args.average_step:
                early_state = {k: v.clone() for k, v in model.state_dict().items()}
        print(f"epoch {epoch + 1}/{args.epochs}: last loss {loss.item():.4f}", flush=True)
    return opt, args.epochs, early_state


# ---- compression ---------------------------------------------------------------------------

@torch.no_grad()
def compress(model, early_state, prune_ratio):
    """Weight-average with `early_state` (BN buffers kept), then magnitude-prune each
    conv and linear weight per layer. The BN running statistics are not touched."""
    if early_state is not None:
        for name, p in model.named_parameters():
            p.copy_(0.5 * (p + early_state[name]))
    if prune_ratio > 0:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(round(prune_ratio * w.numel()))
                if k > 0:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w.mul_((w.abs() > threshold).to(w.dtype))


@torch.no_grad()
def reestimate_bn(model, x, batch_size):
    """Python reference BN re-estimation: cumulative average over batches of `x`."""
    saved = [(m, m.momentum) for m in bn_layers(model)]
    model.eval()
    for m, _ in saved:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, x.shape[0], batch_size):
        model(x[i:i + batch_size])
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()


# ---- main ----------------------------------------------------------------------------------

def cache_key(args):
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "force")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def is_cached(out, key):
    try:
        with open(os.path.join(out, "expected.json")) as f:
            recorded = json.load(f).get("cache_key")
    except (OSError, ValueError):
        return False
    return recorded == key and os.path.isfile(os.path.join(out, "model.pt"))


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def atomic_write(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder of the Fashion-MNIST IDX .gz files")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prune-ratio", type=float, default=0.6,
                   help="fraction of each conv/linear weight set to zero")
    p.add_argument("--average-step", type=int, default=0,
                   help="average the final weights with those at this step (0: no averaging)")
    p.add_argument("--adapt-samples", type=int, default=2048)
    p.add_argument("--adapt-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="ignore the cache")
    args = p.parse_args()

    if not 0.0 <= args.prune_ratio < 1.0:
        sys.exit(f"--prune-ratio {args.prune_ratio}: expected a fraction in [0, 1)")
    key = cache_key(args)
    if not args.force and is_cached(args.out, key):
        print(f"cached: {args.out}/model.pt")
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    start = time.time()
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")

    model = FashionNet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"FashionNet: {n_params} parameters, {len(bn_layers(model))} BN layers; "
          f"training {args.epochs} epochs on {x_train.shape[0]} images", flush=True)
    opt, epochs, early_state = train(model, x_train, y_train, args)
    train_s = time.time() - start
    acc_trained = top1(model, x_test, y_test)

    compress(model, early_state, args.prune_ratio)
    acc_stale = top1(model, x_test, y_test)
    model.eval()
    stale_state = {k: v.clone() for k, v in model.state_dict().items()}

    scripted = torch.jit.script(model)
    atomic_write(os.path.join(args.out, "model.pt"), lambda t: scripted.save(t))
    ckpt = {"epoch": epochs, "model": stale_state, "optimizer": opt.state_dict()}
    atomic_write(os.path.join(args.out, "checkpoint.pt"), lambda t: torch.save(ckpt, t))

    loaded = torch.jit.load(os.path.join(args.out, "model.pt"))
    acc_loaded = top1(loaded, x_test, y_test)
    if acc_loaded != acc_stale:
        sys.exit(f"scripted model gives {acc_loaded:.2f}% but the module {acc_stale:.2f}%")

    n_adapt = min(args.adapt_samples, x_train.shape[0])
    reestimate_bn(model, x_train[:n_adapt], args.adapt_batch_size)
    acc_reest = top1(model, x_test, y_test)
    total_s = time.time() - start

    print(f"top-1 trained      {acc_trained:6.2f}%")
    print(f"top-1 stale        {acc_stale:6.2f}%  (pruned {args.prune_ratio:.0%}"
          + (f", averaged with step {args.average_step}" if early_state is not None else "")
          + ", old BN statistics)")
    print(f"top-1 re-estimated {acc_reest:6.2f}%  ({n_adapt} training samples, "
          f"batch {args.adapt_batch_size})")
    print(f"training {train_s:.1f} s, total {total_s:.1f} s")

    expected = {
        "cache_key": key,
        "top1": {"trained": acc_trained, "stale": acc_stale, "reestimated": acc_reest},
        "test_samples": int(x_test.shape[0]),
        "train_samples": int(x_train.shape[0]),
        "adapt_samples": n_adapt,
        "adapt_batch_size": args.adapt_batch_size,
        "adapt_data": "first adapt_samples images of train-images-idx3-ubyte.gz, file order",
        "adapt_estimator": "momentum=None cumulative average over batches",
        "input": {"shape": [1, 28, 28], "scale": 1.0 / 255.0, "mean": MEAN, "std": STD},
        "compression": {"prune_ratio": args.prune_ratio, "average_step": args.average_step},
        "training": {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "seed": args.seed, "threads": args.threads, "seconds": round(train_s, 1)},
        "parameters": n_params,
        "data": os.path.abspath(args.data),
    }
    atomic_write(os.path.join(args.out, "expected.json"),
                 lambda t: write_text(t, json.dumps(expected, indent=2) + "\n"))


if __name__ == "__main__":
    main()
