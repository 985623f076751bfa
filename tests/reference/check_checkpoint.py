#!/usr/bin/python3
"""Checks a checkpoint written by `bnadapt_dist --checkpoint IN --checkpoint-output OUT`.

Usage:
  check_checkpoint.py --in IN --out OUT --stats STATS.pt [--key PATH] [--prefix P]
                      [--fixtures FIXDIR]
  check_checkpoint.py --selftest FIXDIR      (FIXDIR holds make_checkpoints.py's files)

  --key PATH     where the state_dict lies in the checkpoint: '/'-separated keys ("model",
                 "state_dict", "a/b"; "" = the root); alias --prefix-path.
  --prefix P     the state_dict's key prefix ("module.", "model.", "" ...).
  --fixtures D   take key and prefix from D/checkpoints.json (entry basename(IN)) when not given.
  Without key / prefix the location is inferred: the one (dict, prefix) holding every STATS key
  as prefix + key; two or more candidates (e.g. "model" and "ema") are a failure.

IN is the original checkpoint (for --in-place runs: a copy taken before the run), OUT the
tool's output, STATS.pt the tool's --stats-output ({"bn1.running_mean": tensor, ...}, the
model's buffer names without prefix). Checks (all failures are listed; exit 1 on any, 2 on
usage errors):
  * OUT.sha256 exists, reads exactly "<64 hex>  <basename(OUT)>\\n" and matches OUT's bytes.
  * torch files: OUT loads with torch.load, and with weights_only=True when IN does; the
    container format (zip / legacy) is the same as IN's. IN and OUT are walked in parallel:
    dicts (same type, same keys in the same order, same instance attributes such as
    OrderedDict._metadata), lists, tuples (incl. namedtuple / torch.Size), argparse.Namespace
    (via vars), numpy scalars and arrays (type, dtype, bytes), floats bitwise, other objects by
    type and value (vars / reduce). Every tensor that is not an adapted BN buffer is bitwise
    equal (type, dtype, shape, stride, requires_grad, bytes); this includes the optimizer state.
    The storage-sharing structure of all tensors is the same.
  * adapted BN buffers (prefix + every STATS key, in the located state_dict): same dtype /
    shape / stride as in IN, bytes equal to STATS converted to that dtype (.to(dtype));
    num_batches_tracked equal as int64.
  * safetensors (IN ends with .safetensors): both files parsed by the reader below; header
    bytes identical; data size identical; non-BN tensors' bytes identical; BN tensors' bytes
    equal to STATS converted to the header dtype; every byte outside the BN regions identical.
Summary line: counts, max|OUT - STATS| over adapted float buffers (the dtype-conversion error,
0 for float32 checkpoints), max|OUT - expected| (0 when bitwise).
"""
import argparse
import collections
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures"))
import models  # noqa: E402

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_MISSING = object()


class Result:
    def __init__(self):
        self.failures = []
        self.notes = []
        self.tensors = 0  # non-adapted tensors compared
        self.tensors_ok = 0
        self.adapted = 0
        self.adapted_ok = 0
        self.objects = 0  # non-tensor leaves compared
        self.max_vs_stats = 0.0
        self.max_vs_expected = 0.0
        self.sha_ok = False

    def fail(self, where, msg):
        self.failures.append(f"{where}: {msg}")

    @property
    def ok(self):
        return not self.failures

    def summary(self):
        return (f"check_checkpoint: {'PASS' if self.ok else 'FAIL'} {len(self.failures)} failure(s); "
                f"tensors {self.tensors_ok}/{self.tensors} bitwise equal, "
                f"adapted buffers {self.adapted_ok}/{self.adapted} ok, objects {self.objects} compared, "
                f"sha256 {'ok' if self.sha_ok else 'BAD'}; max|out-stats| {self.max_vs_stats:.3g}, "
                f"max|out-expected| {self.max_vs_expected:.3g}")


# ---------------------------------------------------------------------------------------------
# helpers

def _fmt_path(path):
    if not path:
        return "<root>"
    out = ""
    for p in path:
        out += f"[{p!r}]" if not isinstance(p, str) or not p.startswith(".") else p
    return out


def _u8(t):
    """uint8 view of a tensor's elements in logical (row-major) order."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8)


def tensor_bytes(t):
    return _u8(t).numpy().tobytes()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sha256(path):
    with open(path + ".sha256", "w") as f:
        f.write(f"{sha256_file(path)}  {os.path.basename(path)}\n")


def load_stats(stats):
    if isinstance(stats, (str, os.PathLike)):
        # The tool's stats file is a plain dict of tensors: it must load with the
        # weights_only=True that torch >= 2.6 uses by default.
        stats = torch.load(stats, map_location="cpu", weights_only=True)
    if not isinstance(stats, dict):
        raise ValueError(f"STATS must be a dict, got {type(stats).__name__}")
    return stats


def _stats_tensor(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, (int, float, numpy.number)):
        return torch.tensor(v)
    raise ValueError(f"stats value of type {type(v).__name__}")


def check_stats_keys(stats, res):
    layers = collections.OrderedDict()
    for k in stats:
        if not isinstance(k, str) or "." not in k or k.rsplit(".", 1)[1] not in BUFFERS:
            res.fail("STATS", f"unexpected key {k!r} (expected '<layer>.running_mean/running_var/"
                     f"num_batches_tracked')")
            continue
        layer, buf = k.rsplit(".", 1)
        layers.setdefault(layer, set()).add(buf)
    for layer, bufs in layers.items():
        if set(BUFFERS) - bufs:
            res.fail("STATS", f"layer {layer!r} lacks {sorted(set(BUFFERS) - bufs)}")
    if not stats:
        res.fail("STATS", "no entries")


# ---------------------------------------------------------------------------------------------
# safetensors reader

def read_safetensors(path):
    """(header_bytes, header OrderedDict, body bytes); raises ValueError on a malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"header length {n} beyond the file ({len(data)} bytes)")
    hb = data[8:8 + n]
    try:
        header = json.loads(hb.decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON: {e}") from None
    body = data[8 + n:]
    regions = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e.get("dtype") not in ST_DTYPES:
            raise ValueError(f"{name}: unknown dtype {e.get('dtype')!r}")
        b, en = e["data_offsets"]
        numel = math.prod(e["shape"])
        size = numel * torch.empty((), dtype=ST_DTYPES[e["dtype"]]).element_size()
        if en - b != size:
            raise ValueError(f"{name}: data_offsets {b}..{en} hold {en - b} bytes, shape needs {size}")
        regions.append((b, en, name))
    regions.sort()
    pos = 0
    for b, en, name in regions:
        if b != pos:
            raise ValueError(f"{name}: data starts at {b}, expected {pos} (gap or overlap)")
        pos = en
    if pos != len(body):
        raise ValueError(f"data section has {len(body)} bytes, tensors cover {pos}")
    return hb, header, body


def st_tensor(header, body, name):
    e = header[name]
    b, en = e["data_offsets"]
    dt = ST_DTYPES[e["dtype"]]
    if en == b:
        return torch.empty(e["shape"], dtype=dt)
    raw = torch.frombuffer(bytearray(body[b:en]), dtype=torch.uint8)
    if dt == torch.bool:
        return raw.to(torch.bool).reshape(e["shape"])
    return raw.view(dt).reshape(e["shape"])


# ---------------------------------------------------------------------------------------------
# locating the state_dict

def _children(obj):
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    if isinstance(obj, argparse.Namespace):
        return [("." + k, v) for k, v in vars(obj).items()]
    return []


def _navigate(obj, key):
    path = ()
    if key in (None, ""):
        return obj, path
    for part in key.split("/"):
        if isinstance(obj, dict) and part in obj:
            obj, path = obj[part], path + (part,)
        elif isinstance(obj, (list, tuple)) and part.isdigit() and int(part) < len(obj):
            obj, path = obj[int(part)], path + (int(part),)
        else:
            raise KeyError(f"no entry {part!r} on the way to {key!r}")
    return obj, path


def _prefixes(keys, stats_keys, prefix):
    keys = set(k for k in keys if isinstance(k, str))
    k0 = stats_keys[0]
    cands = {k[: len(k) - len(k0)] for k in keys if k.endswith(k0)}
    if prefix is not None:
        cands &= {prefix}
    return sorted(p for p in cands if all(p + k in keys for k in stats_keys))


def locate(root, stats_keys, key=None, prefix=None):
    """[(path tuple, prefix)] of every dict holding all stats keys under one prefix."""
    if key is not None:
        d, path = _navigate(root, key)
        if not isinstance(d, dict):
            raise KeyError(f"{key!r} is a {type(d).__name__}, not a dict")
        return [(path, p) for p in _prefixes(d.keys(), stats_keys, prefix)]
    found, seen = [], set()

    def walk(obj, path):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            found.extend((path, p) for p in _prefixes(obj.keys(), stats_keys, prefix))
        for k, v in _children(obj):
            if isinstance(v, (dict, list, tuple, argparse.Namespace)):
                walk(v, path + (k,))

    walk(root, ())
    return found


# ---------------------------------------------------------------------------------------------
# parallel walk of IN and OUT

def _float_bits(x):
    return struct.pack("<d", x)


class Walker:
    def __init__(self, res, adapted_path, adapted):
        self.res = res
        self.adapted_path = adapted_path
        self.adapted = adapted  # full key -> stats tensor
        self.storages = ([], [])  # per side: storage key of every tensor in walk order
        self.active = set()

    def compare(self, a, b, path):
        res = self.res
        where = _fmt_path(path)
        if type(a) is not type(b):
            res.fail(where, f"type {type(a).__module__}.{type(a).__qualname__} became "
                     f"{type(b).__module__}.{type(b).__qualname__}")
            return
        if isinstance(a, torch.Tensor):
            self.tensor(a, b, path)
            return
        pair = (id(a), id(b))
        if pair in self.active:  # recursive structure
            return
        self.active.add(pair)
        try:
            self._compare_container_or_leaf(a, b, path, where)
        finally:
            self.active.discard(pair)

    def _compare_container_or_leaf(self, a, b, path, where):
        res = self.res
        if isinstance(a, dict):
            ka, kb = list(a.keys()), list(b.keys())
            if ka != kb:
                if set(ka) == set(kb):
                    res.fail(where, "key order changed")
                else:
                    extra = [k for k in kb if k not in a]
                    missing = [k for k in ka if k not in b]
                    res.fail(where, f"keys differ: missing {missing[:6]}, extra {extra[:6]}")
            is_loc = self.adapted_path is not None and tuple(path) == self.adapted_path
            for k in ka:
                if k not in b:
                    continue
                if is_loc and k in self.adapted:
                    self.adapted_tensor(a[k], b[k], path + (k,))
                else:
                    self.compare(a[k], b[k], path + (k,))
            self._attrs(a, b, path)
            return
        if isinstance(a, (list, tuple)):
            if len(a) != len(b):
                res.fail(where, f"length {len(a)} became {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                self.compare(x, y, path + (i,))
            self._attrs(a, b, path)
            return
        if isinstance(a, argparse.Namespace):
            self.compare(vars(a), vars(b), path + (".__dict__",))
            return
        if isinstance(a, numpy.ndarray):
            res.objects += 1
            if a.dtype != b.dtype or a.shape != b.shape:
                res.fail(where, f"numpy array {a.dtype}{list(a.shape)} became {b.dtype}{list(b.shape)}")
            elif a.dtype == object:
                for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
                    self.compare(x, y, path + (i,))
            elif a.tobytes() != b.tobytes():
                res.fail(where, "numpy array values changed")
            return
        if isinstance(a, numpy.generic):
            res.objects += 1
            if a.dtype != b.dtype or a.tobytes() != b.tobytes():
                res.fail(where, f"numpy scalar {a!r} ({a.dtype}) became {b!r} ({b.dtype})")
            return
        if isinstance(a, float):
            res.objects += 1
            if _float_bits(a) != _float_bits(b):
                res.fail(where, f"{a!r} became {b!r}")
            return
        if a is None or isinstance(a, (bool, int, str, bytes, bytearray, complex, torch.dtype,
                                       torch.device, torch.memory_format, torch.layout)):
            res.objects += 1
            if a != b:
                res.fail(where, f"{a!r} became {b!r}")
            return
        if isinstance(a, (set, frozenset)):
            res.objects += 1
            if a != b:
                res.fail(where, f"set {a!r} became {b!r}")
            return
        # other objects: instance dict, else the reduce tuple, else ==
        if hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:
            self.compare(vars(a), vars(b), path + (".__dict__",))
            return
        try:
            eq = a == b
            if isinstance(eq, bool) and type(a).__eq__ is not object.__eq__:
                res.objects += 1
                if not eq:
                    res.fail(where, f"{a!r} became {b!r}")
                return
        except Exception:  # noqa: BLE001
            pass
        try:
            ra, rb = a.__reduce_ex__(4), b.__reduce_ex__(4)
        except Exception:  # noqa: BLE001
            res.objects += 1
            if repr(a) != repr(b):
                res.fail(where, f"{a!r} became {b!r}")
            return
        self.compare(tuple(ra[1:]) if isinstance(ra, tuple) else ra,
                     tuple(rb[1:]) if isinstance(rb, tuple) else rb, path + (".__reduce__",))

    def _attrs(self, a, b, path):
        """Instance attributes of dict / list / tuple subclasses (OrderedDict._metadata, ...)."""
        va = getattr(a, "__dict__", _MISSING)
        vb = getattr(b, "__dict__", _MISSING)
        if va is _MISSING and vb is _MISSING:
            return
        if (va is _MISSING) != (vb is _MISSING):
            self.res.fail(_fmt_path(path), "instance attributes appeared / disappeared")
            return
        for name in sorted(set(va) | set(vb)):
            if name not in vb:
                self.res.fail(_fmt_path(path), f"attribute {name} lost")
            elif name not in va:
                self.res.fail(_fmt_path(path), f"attribute {name} added")
            else:
                self.compare(va[name], vb[name], path + ("." + name,))

    def _record_storage(self, a, b):
        for side, t in enumerate((a, b)):
            try:
                s = t.storage()
                self.storages[side].append((s.data_ptr(), s.nbytes()) if s.nbytes() else ("empty", id(t)))
            except Exception:  # noqa: BLE001
                self.storages[side].append(("?", id(t)))

    def _meta(self, a, b, where):
        ok = True
        for what, x, y in (("dtype", a.dtype, b.dtype), ("shape", list(a.shape), list(b.shape)),
                           ("layout", a.layout, b.layout), ("device", a.device, b.device),
                           ("requires_grad", a.requires_grad, b.requires_grad)):
            if x != y:
                self.res.fail(where, f"{what} {x} became {y}")
                ok = False
        if ok and a.layout == torch.strided and a.numel() > 1 and a.stride() != b.stride():
            self.res.fail(where, f"stride {a.stride()} became {b.stride()}")
            ok = False
        return ok

    def tensor(self, a, b, path):
        res = self.res
        where = _fmt_path(path)
        res.tensors += 1
        self._record_storage(a, b)
        if not self._meta(a, b, where):
            return
        try:
            same = torch.equal(_u8(a), _u8(b))
        except Exception:  # noqa: BLE001 - sparse / quantized: fall back to values
            same = bool(torch.equal(a, b))
        if not same:
            if a.is_floating_point():
                d = (a.double() - b.double()).abs()
                d = d[torch.isfinite(d)]
                n = int((_u8(a).view(-1) != _u8(b).view(-1)).sum())
                res.fail(where, f"tensor changed (not an adapted BN buffer): {n} byte(s) differ, "
                         f"max abs diff {float(d.max()) if d.numel() else float('nan'):.3g}")
            else:
                res.fail(where, "tensor changed (not an adapted BN buffer)")
            return
        res.tensors_ok += 1

    def adapted_tensor(self, a, b, path):
        res = self.res
        where = _fmt_path(path)
        res.adapted += 1
        if not isinstance(a, torch.Tensor):
            res.fail(where, f"IN holds a {type(a).__name__}, not a tensor")
            return
        if type(a) is not type(b):
            res.fail(where, f"type {type(a).__name__} became {type(b).__name__}")
            return
        self._record_storage(a, b)
        if not self._meta(a, b, where):
            return
        ok = self.check_adapted_values(where, path[-1], a.dtype, list(a.shape), b)
        if ok:
            res.adapted_ok += 1

    def check_adapted_values(self, where, key, dtype, shape, out_tensor):
        res = self.res
        stat = self.adapted[key]
        if list(stat.shape) != list(shape) and not (stat.numel() == 1 and math.prod(shape) == 1):
            res.fail(where, f"STATS has shape {list(stat.shape)}, the checkpoint {shape}")
            return False
        expected = stat.to(dtype).reshape(shape)
        if not torch.equal(_u8(expected), _u8(out_tensor)):
            if dtype.is_floating_point:
                dv = float((out_tensor.double() - expected.double()).abs().max())
                res.max_vs_expected = max(res.max_vs_expected, dv)
                n = int((expected != out_tensor).sum())
                res.fail(where, f"adapted buffer != STATS converted to {dtype}: {n} element(s), "
                         f"max abs diff {dv:.3g}")
            else:
                res.fail(where, f"adapted buffer {out_tensor.reshape(-1)[:4].tolist()} != STATS "
                         f"{expected.reshape(-1)[:4].tolist()}")
            return False
        if dtype.is_floating_point:
            d = float((out_tensor.double() - stat.double().reshape(shape)).abs().max()) if stat.numel() else 0.0
            res.max_vs_stats = max(res.max_vs_stats, d)
        return True

    def storage_structure(self):
        def partition(keys):
            ids = {}
            return [ids.setdefault(k, len(ids)) for k in keys]
        if partition(self.storages[0]) != partition(self.storages[1]):
            self.res.fail("<storages>", "the storage-sharing structure of the tensors changed")


# ---------------------------------------------------------------------------------------------
# the checks

def check_sha256(out, res):
    side = out + ".sha256"
    if not os.path.exists(side):
        res.fail(side, "missing")
        return
    with open(side, "rb") as f:
        text = f.read()
    m = re.fullmatch(rb"([0-9a-f]{64})  (.+)\n", text, flags=re.S)
    if not m:
        res.fail(side, f"not in sha256sum format '<hex>  <name>\\n': {text[:120]!r}")
        return
    if m.group(2).decode(errors="replace") != os.path.basename(out):
        res.fail(side, f"names {m.group(2)!r}, expected {os.path.basename(out)!r}")
        return
    if os.path.exists(out) and m.group(1).decode() != sha256_file(out):
        res.fail(side, "hash does not match OUT's bytes")
        return
    res.sha_ok = True


def _weights_only(path):
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True, None
    except Exception as e:  # noqa: BLE001
        return False, e


def _resolve(root, stats_keys, key, prefix, res, label):
    try:
        cands = locate(root, stats_keys, key, prefix)
    except KeyError as e:
        res.fail(label, f"--key {key!r}: {e}")
        return None
    if not cands:
        res.fail(label, f"no state_dict holds all {len(stats_keys)} STATS keys "
                 f"(key={key!r}, prefix={prefix!r})")
        return None
    if len(cands) > 1:
        res.fail(label, "ambiguous: several state_dicts match: "
                 + ", ".join(f"{_fmt_path(p)} prefix {q!r}" for p, q in cands) + " (pass --key)")
        return None
    return cands[0]


def check_torch(inp, out, stats, key, prefix, res):
    # Full unpickling (the fixtures hold argparse.Namespace, numpy scalars, ...): whether OUT
    # also loads with weights_only=True is checked separately, against IN.
    a = torch.load(inp, map_location="cpu", weights_only=False)
    try:
        b = torch.load(out, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        res.fail(out, f"torch.load failed: {type(e).__name__}: {e}")
        return
    if zipfile.is_zipfile(inp) != zipfile.is_zipfile(out):
        res.fail(out, f"container format changed: IN {'zip' if zipfile.is_zipfile(inp) else 'legacy'}, "
                 f"OUT {'zip' if zipfile.is_zipfile(out) else 'legacy'}")
    wi, _ = _weights_only(inp)
    if wi:
        wo, err = _weights_only(out)
        if not wo:
            res.fail(out, f"IN loads with weights_only=True, OUT does not: {type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else ''}")
    skeys = list(stats)
    loc = _resolve(a, skeys, key, prefix, res, inp)
    if loc is None:
        return
    path, pfx = loc
    res.notes.append(f"state_dict at {_fmt_path(path)}, prefix {pfx!r}, {len(skeys)} adapted buffers")
    adapted = {pfx + k: _stats_tensor(v) for k, v in stats.items()}
    w = Walker(res, path, adapted)
    w.compare(a, b, ())
    w.storage_structure()
    if res.adapted != len(skeys):
        res.fail(out, f"{res.adapted} of {len(skeys)} adapted buffers reached in OUT's walk")
    stale = 0
    sd_in = _navigate(a, "/".join(map(str, path)))[0] if path else a
    for k in adapted:
        if torch.equal(_u8(sd_in[k]), _u8(adapted[k].to(sd_in[k].dtype).reshape(sd_in[k].shape))):
            stale += 1
    if stale:
        res.notes.append(f"note: {stale} STATS entries equal IN's values (nothing to change there)")


def check_safetensors(inp, out, stats, key, prefix, res):
    try:
        hb_a, ha, body_a = read_safetensors(inp)
    except ValueError as e:
        res.fail(inp, f"IN is not valid safetensors: {e}")
        return
    try:
        hb_b, hb, body_b = read_safetensors(out)
    except (ValueError, OSError) as e:
        res.fail(out, f"OUT is not valid safetensors: {e}")
        return
    if hb_a != hb_b:
        res.fail(out, "header bytes differ")
    if len(body_a) != len(body_b):
        res.fail(out, f"data section {len(body_a)} bytes became {len(body_b)}")
    if key not in (None, ""):
        res.fail(inp, f"--key {key!r} given for a flat safetensors file")
        return
    names = [n for n in ha if n != "__metadata__"]
    pfxs = _prefixes(names, list(stats), prefix)
    if len(pfxs) != 1:
        res.fail(inp, f"{'no' if not pfxs else 'several'} prefix(es) hold all STATS keys: {pfxs}")
        return
    pfx = pfxs[0]
    res.notes.append(f"safetensors, prefix {pfx!r}, {len(stats)} adapted buffers")
    adapted = {pfx + k: _stats_tensor(v) for k, v in stats.items()}
    w = Walker(res, None, adapted)
    expected_body = bytearray(body_a)
    for n in names:
        e = ha[n]
        lo, hi = e["data_offsets"]
        dt = ST_DTYPES[e["dtype"]]
        if n in adapted:
            res.adapted += 1
            stat = adapted[n]
            if list(stat.shape) == list(e["shape"]) or stat.numel() == math.prod(e["shape"]) == 1:
                expected_body[lo:hi] = tensor_bytes(stat.to(dt).reshape(e["shape"]))
            if n not in hb or hb[n] != e or len(body_b) < hi:
                res.fail(n, "entry changed or missing in OUT")
                continue
            if w.check_adapted_values(n, n, dt, list(e["shape"]), st_tensor(hb, body_b, n)):
                res.adapted_ok += 1
        else:
            res.tensors += 1
            if body_a[lo:hi] != body_b[lo:hi]:
                res.fail(n, "tensor bytes changed (not an adapted BN buffer)")
            else:
                res.tensors_ok += 1
    if len(body_a) == len(body_b) and bytes(expected_body) != body_b and not res.failures:
        res.fail(out, "bytes outside the tensors' regions differ")


def check(inp, out, stats, key=None, prefix=None):
    """Result of all checks of OUT against IN and STATS (a path or a loaded dict)."""
    res = Result()
    try:
        stats = load_stats(stats)
    except Exception as e:  # noqa: BLE001
        res.fail("STATS", f"cannot load: {e}")
        return res
    check_stats_keys(stats, res)
    if res.failures:
        return res
    if not os.path.exists(out):
        res.fail(out, "missing")
        return res
    check_sha256(out, res)
    if inp.endswith(".safetensors"):
        check_safetensors(inp, out, stats, key, prefix, res)
    else:
        check_torch(inp, out, stats, key, prefix, res)
    return res


_C10_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
              torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int"}


def weights_sha256(tensors):
    """The tool's SHA-256 of a state_dict (checkpoint/weights.h weightsSha256): per tensor in name
    order, name NUL c10-dtype-name [shape] NUL, then its raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        shape = "[" + ", ".join(str(s) for s in t.shape) + "]"
        h.update(f"{name}\0{_C10_NAMES[t.dtype]}{shape}\0".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def check_weights_report(report_path, inp, key, prefix, res):
    """The report's "weights": from the checkpoint IN, the dict at KEY with PREFIX, the number
    of its tensors under PREFIX and their SHA-256 as the tool computes it."""
    with open(report_path) as f:
        w = json.load(f).get("weights", {})
    if inp.endswith(".safetensors"):
        _, header, body = read_safetensors(inp)
        d = {n: st_tensor(header, body, n) for n in header if n != "__metadata__"}
    else:
        d, _ = _navigate(torch.load(inp, map_location="cpu", weights_only=False), key or "")
    sd = {k[len(prefix):]: v for k, v in d.items()
          if isinstance(v, torch.Tensor) and k.startswith(prefix)}
    want = {"from": "checkpoint", "file": inp, "dict": key or "", "prefix": prefix,
            "tensors": len(sd), "sha256": weights_sha256(sd)}
    for field, value in want.items():
        if w.get(field) != value:
            res.fail(report_path, f"weights.{field} is {w.get(field)!r}, expected {value!r}")


def fixture_location(fixdir, inp):
    """(key, prefix) recorded in FIXDIR/checkpoints.json for basename(IN), or (None, None)."""
    with open(os.path.join(fixdir, "checkpoints.json")) as f:
        info = json.load(f)
    e = info.get(os.path.basename(inp))
    if e is None:
        return None, None
    return e.get("key"), e.get("prefix")


# ---------------------------------------------------------------------------------------------
# self-test

def make_out(inp, out, stats, key=None, prefix=None, mutate=None, legacy=None):
    """A correct OUT made in Python by patching IN with STATS (then `mutate(obj)` on the loaded
    object for torch files), plus OUT.sha256."""
    if inp.endswith(".safetensors"):
        hb, header, body = read_safetensors(inp)
        names = [n for n in header if n != "__metadata__"]
        pfx = _prefixes(names, list(stats), prefix)[0]
        body = bytearray(body)
        for k, v in stats.items():
            e = header[pfx + k]
            lo, hi = e["data_offsets"]
            body[lo:hi] = tensor_bytes(_stats_tensor(v).to(ST_DTYPES[e["dtype"]]).reshape(e["shape"]))
        with open(out, "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb + bytes(body))
    else:
        obj = torch.load(inp, map_location="cpu", weights_only=False)
        (path, pfx), = locate(obj, list(stats), key, prefix)
        sd = _navigate(obj, "/".join(map(str, path)))[0]
        for k, v in stats.items():
            t = sd[pfx + k]
            sd[pfx + k] = _stats_tensor(v).to(t.dtype).reshape(t.shape).clone()
        if mutate is not None:
            mutate(obj)  # in place; its return value is ignored
        if legacy is None:
            legacy = not zipfile.is_zipfile(inp)
        torch.save(obj, out, _use_new_zipfile_serialization=not legacy)
    write_sha256(out)
    return out


def fake_stats(fixdir, entry, seed=0):
    """STATS in the tool's format for the fixture's model: new values for every adapted layer."""
    sd = torch.jit.load(os.path.join(fixdir, entry["model"]), map_location="cpu").state_dict()
    model = models.eager_from_state_dict(entry["kind"], sd)
    g = torch.Generator().manual_seed(seed + 4242)
    stats = collections.OrderedDict()
    for name, m in models.bn_layers(model, tracked_only=True):
        c = m.num_features
        stats[f"{name}.running_mean"] = (0.3 * torch.randn(c, generator=g)).to(m.running_mean.dtype)
        stats[f"{name}.running_var"] = (0.2 + torch.rand(c, generator=g)).to(m.running_var.dtype)
        stats[f"{name}.num_batches_tracked"] = m.num_batches_tracked + 9
    return stats


_INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def _nudge(t, i=0):
    """t with element i changed minimally: floats to the neighbouring representable value (bit
    pattern + 1), integers + 1."""
    t = t.clone()
    flat = t.reshape(-1)
    if t.is_floating_point():
        flat.view(_INT_VIEW[t.element_size()])[i] += 1
    else:
        flat[i] += 1
    return t


def _file_mutation(fn):
    def apply(path):
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data = fn(data)
        with open(path, "wb") as f:
            f.write(bytes(data))
    return apply


def selftest(fixdir, verbose=False):
    t0 = time.time()
    with open(os.path.join(fixdir, "checkpoints.json")) as f:
        info = json.load(f)
    tmp = tempfile.mkdtemp(prefix="check_ckpt_selftest_")
    problems = []
    ncase = 0

    def p(name):
        return os.path.join(fixdir, name)

    stats_cache = {}

    def stats_for(name):
        e = info[name]
        if e["kind"] not in stats_cache:
            stats_cache[e["kind"]] = fake_stats(fixdir, e)
        return stats_cache[e["kind"]]

    def case(label, name, expect_pass, must_contain=None, key=_MISSING, prefix=_MISSING,
             mutate=None, file_mutation=None, legacy=None, sha=None):
        nonlocal ncase
        ncase += 1
        e = info[name]
        k = e["key"] if key is _MISSING else key
        pf = e["prefix"] if prefix is _MISSING else prefix
        stats = stats_for(name)
        ext = ".safetensors" if name.endswith(".safetensors") else ".pt"
        out = os.path.join(tmp, f"case{ncase:02d}{ext}")
        make_key = k if k is not None else (e["key"] if e["key"] is not None else "ema")
        make_out(p(name), out, stats, key=make_key, prefix=pf,
                 mutate=mutate, legacy=legacy)
        if file_mutation is not None:
            file_mutation(out)
            write_sha256(out)
        if sha == "missing":
            os.remove(out + ".sha256")
        elif sha is not None:
            sha(out + ".sha256")
        res = check(p(name), out, stats, key=k, prefix=pf)
        good = res.ok == expect_pass
        if good and must_contain and not any(must_contain in f for f in res.failures):
            good = False
        status = "ok  " if good else "BAD "
        line = f"{status}{label:55s} {'pass' if res.ok else 'fail'} ({len(res.failures)} failure(s))"
        if not good:
            problems.append(f"{label}: expected {'pass' if expect_pass else 'fail'}"
                            f"{' mentioning ' + repr(must_contain) if must_contain else ''}; got "
                            f"{res.failures[:4] or 'pass'}")
        if verbose or not good:
            print(line)
            if verbose and res.failures:
                print("      " + res.failures[0][:150])
        return res, out

    # --- ckpt_nested.pt: correct, then one defect at a time
    res, good_nested = case("nested: correct OUT", "ckpt_nested.pt", True)
    if res.adapted != 6 or res.tensors < 20:
        problems.append(f"nested: walk reached {res.adapted} adapted / {res.tensors} other tensors")
    case("nested: fc1.weight 1 ulp", "ckpt_nested.pt", False, "fc1.weight",
         mutate=lambda o: o["model"].__setitem__("fc1.weight", _nudge(o["model"]["fc1.weight"], 5)))
    case("nested: optimizer momentum buffer changed", "ckpt_nested.pt", False, "momentum_buffer",
         mutate=lambda o: o["optimizer"]["state"][0].__setitem__(
             "momentum_buffer", _nudge(o["optimizer"]["state"][0]["momentum_buffer"], 0)))
    case("nested: optimizer lr changed", "ckpt_nested.pt", False, "'lr'",
         mutate=lambda o: o["optimizer"]["param_groups"][0].__setitem__("lr", 0.2))
    case("nested: epoch 12 -> 13", "ckpt_nested.pt", False, "'epoch'",
         mutate=lambda o: o.__setitem__("epoch", 13))
    case("nested: epoch int -> float", "ckpt_nested.pt", False, "'epoch'",
         mutate=lambda o: o.__setitem__("epoch", 12.0))
    case("nested: Namespace lr 0.1 -> 0.2", "ckpt_nested.pt", False, "lr",
         mutate=lambda o: setattr(o["args"], "lr", 0.2))
    case("nested: Namespace tags changed", "ckpt_nested.pt", False, "tags",
         mutate=lambda o: o["args"].tags.__setitem__(1, "c"))
    case("nested: Namespace field added", "ckpt_nested.pt", False, "args",
         mutate=lambda o: setattr(o["args"], "bn_adapted", True))
    case("nested: best_acc numpy.float64 -> float", "ckpt_nested.pt", False, "best_acc",
         mutate=lambda o: o.__setitem__("best_acc", 0.8125))
    case("nested: step numpy.int64 -> numpy.int32", "ckpt_nested.pt", False, "step",
         mutate=lambda o: o.__setitem__("step", numpy.int32(4000)))
    case("nested: arch string changed", "ckpt_nested.pt", False, "arch",
         mutate=lambda o: o.__setitem__("arch", "mlp2"))
    case("nested: extra root key", "ckpt_nested.pt", False, "extra",
         mutate=lambda o: o.__setitem__("bnadapt", {"done": True}))
    case("nested: bn2.running_var one element wrong", "ckpt_nested.pt", False, "bn2.running_var",
         mutate=lambda o: o["model"].__setitem__("bn2.running_var", _nudge(o["model"]["bn2.running_var"], 3)))
    case("nested: bn1.running_mean left stale", "ckpt_nested.pt", False, "bn1.running_mean",
         mutate=lambda o: o["model"].__setitem__(
             "bn1.running_mean", torch.load(p("ckpt_nested.pt"), weights_only=False)["model"]["bn1.running_mean"]))
    case("nested: num_batches_tracked not updated", "ckpt_nested.pt", False, "num_batches_tracked",
         mutate=lambda o: o["model"].__setitem__("bn1.num_batches_tracked", torch.tensor(7)))
    case("nested: BN buffer saved as float64", "ckpt_nested.pt", False, "dtype",
         mutate=lambda o: o["model"].__setitem__("bn2.running_mean", o["model"]["bn2.running_mean"].double()))
    case("nested: _metadata dropped (plain dict)", "ckpt_nested.pt", False, "type",
         mutate=lambda o: o.__setitem__("model", dict(o["model"])))
    case("nested: _metadata attribute deleted", "ckpt_nested.pt", False, "_metadata",
         mutate=lambda o: delattr(o["model"], "_metadata"))
    case("nested: _metadata version changed", "ckpt_nested.pt", False, "_metadata",
         mutate=lambda o: o["model"]._metadata["bn1"].__setitem__("version", 1))
    case("nested: state_dict key order changed", "ckpt_nested.pt", False, "order",
         mutate=lambda o: o["model"].move_to_end("fc1.weight"))
    case("nested: two nbt buffers share one storage", "ckpt_nested.pt", False, "storage",
         mutate=lambda o: o["model"].__setitem__("bn2.num_batches_tracked", o["model"]["bn1.num_batches_tracked"]))
    case("nested: sha256 wrong", "ckpt_nested.pt", False, "hash",
         sha=_file_mutation(lambda d: bytearray(b"0" * 64) + d[64:]))
    case("nested: sha256 missing", "ckpt_nested.pt", False, "missing", sha="missing")
    case("nested: sha256 one space", "ckpt_nested.pt", False, "format",
         sha=_file_mutation(lambda d: d[:64] + d[65:]))
    case("nested: sha256 names another file", "ckpt_nested.pt", False, "names",
         sha=_file_mutation(lambda d: d[:-1] + b".bak\n"))
    case("nested: OUT truncated", "ckpt_nested.pt", False, "torch.load",
         file_mutation=_file_mutation(lambda d: d[: len(d) // 2]))
    case("nested: stored in legacy format", "ckpt_nested.pt", False, "container", legacy=True)

    # --- float16
    case("half: correct OUT (stats converted)", "ckpt_half.pt", True)
    case("half: BN buffers left float32", "ckpt_half.pt", False, "dtype",
         mutate=lambda o: [o["model"].__setitem__(k, stats_for("ckpt_half.pt")[k].clone())
                           for k in stats_for("ckpt_half.pt") if "running" in k])
    case("half: one BN element 1 ulp off", "ckpt_half.pt", False, "bn1.running_var",
         mutate=lambda o: o["model"].__setitem__("bn1.running_var", _nudge(o["model"]["bn1.running_var"], 2)))
    case("half: a float16 weight 1 ulp off", "ckpt_half.pt", False, "fc2.weight",
         mutate=lambda o: o["model"].__setitem__("fc2.weight", _nudge(o["model"]["fc2.weight"], 7)))

    # --- prefixes
    case("module. prefix: correct OUT", "ckpt_module_prefix.pt", True)
    case("module. prefix: correct OUT, location inferred", "ckpt_module_prefix.pt", True,
         key=None, prefix=None)
    case("module. prefix: unprefixed keys added", "ckpt_module_prefix.pt", False, "extra",
         mutate=lambda o: o["state_dict"].update(
             {k: v.clone() for k, v in stats_for("ckpt_module_prefix.pt").items()}))
    case("module. prefix: epoch changed", "ckpt_module_prefix.pt", False, "epoch",
         mutate=lambda o: o.__setitem__("epoch", 4))
    case("model. prefix (root sd): correct OUT", "ckpt_model_prefix.pt", True)
    case("model. prefix: _metadata entry dropped", "ckpt_model_prefix.pt", False, "_metadata",
         mutate=lambda o: o._metadata.pop("model.bn1"))

    # --- ambiguous: written into ema with --checkpoint-key ema
    case("ambiguous: correct OUT with key ema", "ckpt_ambiguous.pt", True, key="ema")
    case("ambiguous: no key given -> checker refuses", "ckpt_ambiguous.pt", False, "ambiguous",
         key=None)
    case("ambiguous: 'model' changed too", "ckpt_ambiguous.pt", False, "'model'", key="ema",
         mutate=lambda o: o.__setitem__("model", o["ema"]))

    # --- legacy
    case("legacy: correct OUT (legacy format)", "ckpt_legacy.pt", True)
    case("legacy: OUT written as zip", "ckpt_legacy.pt", False, "container", legacy=False)

    # --- safetensors
    case("safetensors: correct OUT", "ckpt_mlp.safetensors", True)
    hb, header, _ = read_safetensors(p("ckpt_mlp.safetensors"))
    base = 8 + len(hb)
    fc1 = base + header["fc1.weight"]["data_offsets"][0]
    bnv = base + header["bn2.running_var"]["data_offsets"][0]
    nbt = base + header["bn1.num_batches_tracked"]["data_offsets"][0]

    def flip(off):
        def f(d):
            d[off] ^= 1
            return d
        return f
    case("safetensors: fc1.weight byte flipped", "ckpt_mlp.safetensors", False, "fc1.weight",
         file_mutation=_file_mutation(flip(fc1 + 1)))
    case("safetensors: BN running_var byte flipped", "ckpt_mlp.safetensors", False, "bn2.running_var",
         file_mutation=_file_mutation(flip(bnv + 4)))
    case("safetensors: num_batches_tracked wrong", "ckpt_mlp.safetensors", False, "num_batches_tracked",
         file_mutation=_file_mutation(flip(nbt)))
    case("safetensors: header metadata changed", "ckpt_mlp.safetensors", False, "header",
         file_mutation=_file_mutation(lambda d: d.replace(b'"format":"pt"', b'"format":"pu"')))
    case("safetensors: trailing bytes", "ckpt_mlp.safetensors", False, "safetensors",
         file_mutation=_file_mutation(lambda d: d + b"\0" * 8))
    case("safetensors: sha256 wrong", "ckpt_mlp.safetensors", False, "hash",
         sha=_file_mutation(lambda d: bytearray(b"f" * 64) + d[64:]))

    # --- bigger / other models
    res, _ = case("resnet nested: correct OUT", "ckpt_resnet_nested.pt", True)
    if res.adapted != 60:
        problems.append(f"resnet: {res.adapted} adapted buffers checked, expected 60")
    case("resnet nested: layer4.1.bn2.running_mean stale", "ckpt_resnet_nested.pt", False,
         "layer4.1.bn2.running_mean",
         mutate=lambda o: o["model"].__setitem__("layer4.1.bn2.running_mean", torch.zeros(512)))
    case("mixed: correct OUT", "ckpt_mixed.pt", True)
    case("mixed: untracked BN weight changed", "ckpt_mixed.pt", False, "bn_untracked.weight",
         mutate=lambda o: o["model"].__setitem__("bn_untracked.weight", _nudge(o["model"]["bn_untracked.weight"], 0)))

    # --- weights_only: IN loads with weights_only=True, OUT gains a Namespace
    case("weights_only lost", "ckpt_half.pt", False, "weights_only",
         mutate=lambda o: o.__setitem__("args", argparse.Namespace(x=1)))

    # --- the CLI: exit status 0 on the correct nested OUT, 1 on a defect, --fixtures lookup
    stats_path = os.path.join(tmp, "stats_mlp.pt")
    torch.save(stats_for("ckpt_nested.pt"), stats_path)
    bad = os.path.join(tmp, "cli_bad.pt")
    make_out(p("ckpt_nested.pt"), bad, stats_for("ckpt_nested.pt"), key="model", prefix="",
             mutate=lambda o: o.__setitem__("epoch", 99))
    me = os.path.abspath(__file__)
    for label, out, want in (("CLI: correct OUT -> exit 0", good_nested, 0), ("CLI: defect -> exit 1", bad, 1)):
        ncase += 1
        r = subprocess.run([sys.executable, me, "--in", p("ckpt_nested.pt"), "--out", out, "--stats",
                            stats_path, "--fixtures", fixdir], capture_output=True, text=True)
        if r.returncode != want:
            problems.append(f"{label}: exit {r.returncode}\n{r.stdout[-800:]}{r.stderr[-800:]}")
            print(f"BAD {label}")
        elif verbose:
            print(f"ok  {label}")

    for root, _, files in os.walk(tmp, topdown=False):
        for fn in files:
            os.remove(os.path.join(root, fn))
        os.rmdir(root)
    print(f"check_checkpoint selftest: {ncase} cases, {len(problems)} problem(s), {time.time() - t0:.1f} s")
    for pr in problems:
        print("  PROBLEM " + pr)
    return 0 if not problems else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp")
    ap.add_argument("--out")
    ap.add_argument("--stats")
    ap.add_argument("--key", "--prefix-path", dest="key", default=None)
    ap.add_argument("--prefix", default=None)
    ap.add_argument("--fixtures", help="FIXDIR with checkpoints.json (key / prefix of IN by basename)")
    ap.add_argument("--weights-report", metavar="REPORT",
                    help="the run's report.json: its \"weights\" must name IN's dict and hash")
    ap.add_argument("--selftest", metavar="FIXDIR")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.selftest:
        return selftest(args.selftest, verbose=args.verbose)
    if not (args.inp and args.out and args.stats):
        ap.error("--in, --out and --stats are required (or --selftest FIXDIR)")
    key, prefix = args.key, args.prefix
    if args.fixtures and (key is None or prefix is None):
        fk, fp = fixture_location(args.fixtures, args.inp)
        key = fk if key is None else key
        prefix = fp if prefix is None else prefix
    res = check(args.inp, args.out, args.stats, key=key, prefix=prefix)
    if args.weights_report:
        check_weights_report(args.weights_report, args.inp, key, prefix or "", res)
    for n in res.notes:
        print(n)
    for f in res.failures:
        print("FAIL " + f)
    print(res.summary())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
