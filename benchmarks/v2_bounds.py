"""Order-0 bounds of candidate per-tensor models for format v2 (issue 14).

Measurement only: nothing here changes the library. For every .safetensors file
of a directory (the shared corpus by default) it computes, per float tensor and
per file, the order-0 size of a family of models, as a ratio to the original
file, next to what floatzip v1 writes today and, when installed, zipnn and lmz.

    .venv/bin/python benchmarks/v2_bounds.py [CORPUS_DIR] [--out benchmarks/results/v2_bounds.md]
        [--no-peers] [--no-v1] [--tensors]

Every model splits a value (sign rotated to the bottom, as in v1) into parts:

    exponent | top m mantissa bits | next k mantissa bits | residual mantissa bits | sign

and codes each part with an order-0 model or stores it raw. All entropies come from one
histogram per tensor over (sign, exponent, top min(M, 8) mantissa bits) plus, for FP32,
one over the low 16 mantissa bits: any part's entropy is a marginal of those, so the
whole grid of models costs two bincounts per tensor. Ratios of "bound" rows count the
tensor data at its order-0 entropy plus the original header (which v1 stores verbatim),
no tables and no container; the "(g)+overhead" row adds the estimates described in
MODELS below.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

# dtype -> (width, exponent bits, numpy uint type)
FLOATS = {"BF16": (16, 8, np.uint16), "F16": (16, 5, np.uint16), "F32": (32, 8, np.uint32),
          "F8_E4M3": (8, 4, np.uint8), "F8_E5M2": (8, 5, np.uint8)}
NUMPY_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_TABLE_BITS = 12          # v1 limit on a coded symbol (4096-entry tables)
LANE_K = 1024                # v1 default symbols per lane
TOP_MANT = 8                 # mantissa bits kept in the top histogram
COMPACT_PARAM_BYTES = 32     # a binary per-tensor parameter block
CHUNK = 1 << 16              # values per chunk of the adaptive rows (h)
CHUNK_PARAM_BYTES = 8        # a chunk's own parameters (model choice, sizes)

MODELS = [
    ("v1 actual", "floatzip 0.1 as it writes the file today (whole file, headers included)"),
    ("v1 actual, K=4096", "floatzip 0.1 with lane_symbols=4096 (v1 allows it; default 1024): "
                          "a quarter of the lane overhead"),
    ("(b) v1 bound", "symbol = exponent + top m mantissa bits (S <= 12) at its order-0 entropy, "
                     "the rest raw; best m per tensor"),
    ("(c) sign in symbol", "as (b) but the sign is coded jointly with the symbol (S+1 <= 12)"),
    ("(d) next k ctx exp", "as (b) plus the k mantissa bits just below the symbol coded with the "
                         "exponent as context, H(next k | exponent), k = 1..4; best m, k"),
    ("(d') next k ctx symbol", "reference: as (d) but the context is the whole symbol "
                             "(= one symbol of E+m+k bits without the 12-bit table limit)"),
    ("(e) low planes", "as (b) but the residual mantissa bits are cut into byte planes from the "
                       "bottom (top plane partial), each coded order-0"),
    ("(f) constant bits", "as (b) but raw bit positions that never vary in the tensor are not stored"),
    ("(g) best family", "min per tensor over every combination of sign {raw, joint}, m, k "
                        "(context = exponent), planes {raw, order-0}, constant bits {kept, removed}"),
    ("(g)+overhead", "(g) chosen per tensor including: tables at 2 bytes per nonzero entry, "
                     "lane overhead (32 lanes per 1024 symbols: 16-bit size + 4 bits padding + "
                     "12-bit state per coded part), a 32-byte binary parameter block per tensor "
                     "instead of v1's JSON; raw if smaller"),
    ("(h) (g) per chunk", "(g) with its own model and tables per chunk of 65,536 values "
                          "(adaptive; what zipnn's 256 KiB chunks get), bound only"),
    ("(h)+overhead", "(h) with (g)+overhead's costs per chunk plus 8 bytes of chunk parameters; "
                     "per tensor the smaller of (g)+overhead and this"),
]


# ---------------------------------------------------------------- safetensors

def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    tensors = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        tensors.append((name, e["dtype"], e["shape"], b, end))
    tensors.sort(key=lambda t: t[3])
    return n, tensors, data


# ---------------------------------------------------------------- entropies

def entropy_bits(counts) -> float:
    """Total bits of the counts at their order-0 entropy."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    if n == 0:
        return 0.0
    return float(n * math.log2(n) - (c * np.log2(c)).sum())


class TensorStats:
    """Histograms of one float tensor, and the entropy of any set of its bits."""

    def __init__(self, raw: np.ndarray, dtype: str):
        width, E, ut = FLOATS[dtype]
        self.width, self.E, self.M = width, E, width - 1 - E
        v = raw.view(ut)
        self.n = v.size
        # mantissa bits in the top histogram: all of them up to 16-bit types
        self.T = min(self.M, TOP_MANT) if width == 32 else self.M
        # key bits, high to low: exponent (E), mantissa top T, sign
        if width == 32:
            v32 = v.astype(np.uint32, copy=False)
            key = ((v32 >> np.uint32(self.M - self.T)) & np.uint32((1 << (E + self.T)) - 1)) << np.uint32(1)
            key |= v32 >> np.uint32(31)
            lo = (v32 & np.uint32(0xFFFF)).astype(np.uint16)
            self.low = np.bincount(lo, minlength=1 << 16).reshape((2,) * 16)  # axis 0 = bit 15
            varying = np.bitwise_or.reduce(v32 ^ v32[0]) if v.size else 0
        else:
            vi = v.astype(np.uint32)
            key = ((vi << 1) | (vi >> (width - 1))) & ((1 << width) - 1)     # rotated: already exp|mant|sign
            self.low = None
            varying = int(np.bitwise_or.reduce(vi ^ vi[0])) if v.size else 0
        nb = E + self.T + 1
        self.nbits = nb
        self.top = np.bincount(key, minlength=1 << nb).reshape((2,) * nb)
        self.varying = int(varying)
        self.cache = {}

    # axes of the top histogram: 0..E-1 exponent, then mantissa bit M-1 (axis E) down to
    # M-T (axis E+T-1), then the sign (last axis)
    def marg(self, exp=False, mant=(), sign=False):
        """Histogram of the exponent / the given mantissa bit positions / sign, jointly.
        Mantissa positions are counted from the bottom (0 = lowest)."""
        key = (exp, tuple(sorted(mant)), sign)
        if key in self.cache:
            return self.cache[key]
        mant = key[1]
        if all(p >= self.M - self.T for p in mant):
            keep = set()
            if exp:
                keep |= set(range(self.E))
            keep |= {self.E + (self.M - 1 - p) for p in mant}
            if sign:
                keep.add(self.nbits - 1)
            drop = tuple(a for a in range(self.nbits) if a not in keep)
            r = self.top.sum(axis=drop) if drop else self.top
        elif not exp and not sign and all(p < 16 for p in mant) and self.low is not None:
            keep = {15 - p for p in mant}
            drop = tuple(a for a in range(16) if a not in keep)
            r = self.low.sum(axis=drop) if drop else self.low
        else:
            raise ValueError(f"bits {key} not in one histogram")
        r = (entropy_bits(np.ravel(r)), int(np.count_nonzero(r)))
        self.cache[key] = r
        return r

    def H(self, exp=False, mant=(), sign=False) -> float:
        """Total bits of those bits at their joint order-0 entropy."""
        if not exp and not mant and not sign:
            return 0.0
        return self.marg(exp, mant, sign)[0]

    def nonzero(self, exp=False, mant=(), sign=False) -> int:
        """Number of distinct values of those bits (table entries)."""
        return self.marg(exp, mant, sign)[1]

    def const_bits(self, positions) -> int:
        """How many of these bit positions (of the unrotated value) never vary."""
        return sum(1 for p in positions if not (self.varying >> p) & 1)

    # ------------------------------------------------------------ one model

    def model(self, m, k, sign_joint, planes, const, ctx="exp"):
        """(bits, description) of one configuration; None when it is not allowed."""
        E, M = self.E, self.M
        if m + k > self.T:
            return None
        S = E + m + (1 if sign_joint else 0)
        if S > MAX_TABLE_BITS:
            return None
        top = list(range(M - 1, M - 1 - m, -1))
        nxt = list(range(M - 1 - m, M - 1 - m - k, -1))
        resid = M - m - k                   # mantissa bits 0 .. resid-1
        bits = self.H(True, top, sign_joint)
        parts = 1
        if k:
            parts += 1
            if ctx == "exp":
                bits += self.H(True, nxt) - self.H(True)
            else:                           # the whole symbol as context
                bits += self.H(True, top + nxt) - self.H(True, top)
        if planes and resid:
            for lo_ in range(0, resid, 8):
                pos = list(range(lo_, min(lo_ + 8, resid)))
                bits += self.H(False, pos)
                parts += 1
        else:
            raw = resid - (self.const_bits(range(resid)) if const else 0)
            bits += raw * self.n
        if not sign_joint:
            bits += (0 if const and self.const_bits([self.width - 1]) == 1 else 1) * self.n
        return bits, parts

    def table_entries(self, m, k, sign_joint, planes, resid):
        e = self.nonzero(True, list(range(self.M - 1, self.M - 1 - m, -1)), sign_joint)
        if k:
            e += self.nonzero(True, list(range(self.M - 1 - m, self.M - 1 - m - k, -1)))
        if planes and resid:
            e += sum(self.nonzero(False, list(range(lo, min(lo + 8, resid))))
                     for lo in range(0, resid, 8))
        return e


def best_models(st: TensorStats) -> dict:
    """Bits of each model row for one tensor, plus the (g)+overhead choice."""
    res = {}
    ms = range(0, 5)
    ks = range(0, 5)
    grid = {}
    for m, k, sj, pl, co in itertools.product(ms, ks, (False, True), (False, True), (False, True)):
        r = st.model(m, k, sj, pl, co)
        if r is not None:
            grid[(m, k, sj, pl, co)] = r

    def best(pred):
        cands = [(b, key) for key, (b, _) in grid.items() if pred(*key)]
        return min(cands)

    res["(b) v1 bound"] = best(lambda m, k, sj, pl, co: k == 0 and not sj and not pl and not co)
    res["(c) sign in symbol"] = best(lambda m, k, sj, pl, co: k == 0 and sj and not pl and not co)
    res["(d) next k ctx exp"] = best(lambda m, k, sj, pl, co: k > 0 and not sj and not pl and not co)
    dp = []
    for m in ms:
        for k in range(1, 5):
            r = st.model(m, k, False, False, False, ctx="sym")
            if r is not None:
                dp.append((r[0], (m, k, False, False, False)))
    res["(d') next k ctx symbol"] = min(dp) if dp else res["(b) v1 bound"]
    res["(e) low planes"] = best(lambda m, k, sj, pl, co: k == 0 and not sj and pl and not co)
    res["(f) constant bits"] = best(lambda m, k, sj, pl, co: k == 0 and not sj and not pl and co)
    res["(g) best family"] = best(lambda *a: True)
    # ablations: (g) without one component
    res["g-no-sign"] = best(lambda m, k, sj, pl, co: not sj)
    res["g-no-ctx"] = best(lambda m, k, sj, pl, co: k == 0)
    res["g-no-planes"] = best(lambda m, k, sj, pl, co: not pl)
    res["g-no-const"] = best(lambda m, k, sj, pl, co: not co)
    # with overhead
    n = st.n
    lanes = 32 * math.ceil(n / (32 * LANE_K))
    oh = []
    for key, (b, parts) in grid.items():
        m, k, sj, pl, co = key
        tab = 16 * st.table_entries(m, k, sj, pl, st.M - m - k)
        lane = lanes * (16 + 4 + 12 * parts)
        oh.append((b + tab + lane, key))
    res["(g)+overhead"] = min(oh)
    return res


# ---------------------------------------------------------------- v1 / peers

def v1_actual(path, tmp, lane_symbols=None):
    """floatzip v1: whole-file ratio, per-tensor blob bytes and the JSON bytes of the
    per-tensor parameters and of the header."""
    from floatzip.api import compress_file
    from floatzip.format.container import FloatzipFile
    dst = os.path.join(tmp, os.path.basename(path) + ".fz")
    t0 = time.perf_counter()
    compress_file(path, dst, workers=1, **({"lane_symbols": lane_symbols} if lane_symbols else {}))
    dt = time.perf_counter() - t0
    fz = FloatzipFile(dst)
    size = os.path.getsize(dst)
    blobs = {name: t.blob_bytes for name, t in fz.tensors.items()}
    with open(dst, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
    meta = header["__metadata__"]
    params = json.loads(meta["floatzip.tensors"])
    # the per-tensor parameters as the header holds them: an escaped JSON string value
    params_json = len(json.dumps("floatzip.tensors")) + 1 + len(json.dumps(meta["floatzip.tensors"]))
    with open(dst, "rb") as f:
        f.seek(8)
        raw = f.read(hlen)
    padding = hlen - len(raw.rstrip(b" "))
    os.remove(dst)
    return dict(size=size, blobs=blobs, header=8 + hlen, params_json=params_json, padding=padding,
                ntensors=len(params), seconds=dt,
                codecs={name: p["codec"] for name, p in params.items()})


def zipnn_size(path):
    """zipnn per tensor (bytes mode, the tensor's dtype), plus the original header."""
    try:
        from zipnn import ZipNN
    except Exception:
        return None
    hlen, tensors, data = read_safetensors(path)
    total = 8 + hlen
    dmap = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    zs = {}
    for name, dt, shape, b, e in tensors:
        buf = bytes(data[b:e])
        if dt in dmap and len(buf):
            z = zs.get(dt) or zs.setdefault(dt, ZipNN(input_format="byte", bytearray_dtype=dmap[dt],
                                                       threads=1))
            c = len(z.compress(buf))
            total += min(c, len(buf)) if c else len(buf)
        else:
            total += len(buf)
    return total


def lmz_size(path, tmp):
    import importlib.util
    if importlib.util.find_spec("lmz") is None:
        return None
    cmd = [sys.executable, "-m", "lmz"]
    out = os.path.join(tmp, os.path.basename(path) + ".lmz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run(cmd + ["compress", "-q", "-f", "-j", "1", path, out],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0 or not os.path.exists(out):
        return None
    s = os.path.getsize(out)
    os.remove(out)
    return s


# ---------------------------------------------------------------- main

ROWS = [name for name, _ in MODELS]


def analyse(path, args, tmp, log):
    hlen, tensors, data = read_safetensors(path)
    fsize = os.path.getsize(path)
    t0 = time.perf_counter()
    per = {}          # row -> total bits of tensor data
    per_tensor = []
    comp = {}
    for name, dt, shape, b, e in tensors:
        nbytes = e - b
        if dt in FLOATS and nbytes >= NUMPY_BYTES[dt]:
            arr = np.asarray(data[b:e])
            st = TensorStats(arr, dt)
            res = best_models(st)
            hb, ho = res["(g) best family"][0], res["(g)+overhead"][0]
            w = NUMPY_BYTES[dt]
            if not args.no_chunks and nbytes > 2 * CHUNK * w:
                cb = co = 0.0
                for off in range(0, nbytes, CHUNK * w):
                    rc = best_models(TensorStats(arr[off:off + CHUNK * w], dt))
                    cb += rc["(g) best family"][0]
                    co += rc["(g)+overhead"][0] + 8 * CHUNK_PARAM_BYTES
                hb, ho = min(hb, cb), min(ho, co)
            res["(h) (g) per chunk"] = (hb, None)
            res["(h)+overhead"] = (ho, None)
        else:
            res = None
        for row in [r for r in ROWS if not r.startswith("v1")] + ["g-no-sign", "g-no-ctx", "g-no-planes", "g-no-const"]:
            bits = 8 * nbytes if res is None else res[row][0]
            if row in ("(g)+overhead", "(h)+overhead") and res is not None:
                bits = min(bits, 8 * nbytes)
            per[row] = per.get(row, 0.0) + bits
        if res is not None:
            per_tensor.append((name, dt, nbytes, {r: res[r] for r in res}))
            key = res["(g)+overhead"][1]
            comp[key] = comp.get(key, 0) + nbytes
    secs = time.perf_counter() - t0
    out = {"file": os.path.basename(path), "size": fsize, "header": 8 + hlen,
           "ntensors": len(tensors), "seconds": secs}
    out["bits"] = per
    out["per_tensor"] = per_tensor
    out["choices"] = comp
    if not args.no_v1:
        out["v1"] = v1_actual(path, tmp)
        out["v1k4096"] = v1_actual(path, tmp, lane_symbols=4096)
    if not args.no_peers:
        t = time.perf_counter()
        out["zipnn"] = zipnn_size(path)
        out["lmz"] = lmz_size(path, tmp)
        out["peer_seconds"] = time.perf_counter() - t
    log(f"  {out['file']}: {len(tensors)} tensors, models {secs:.1f} s")
    return out


def compact_header(r):
    """v1's header less its per-tensor JSON and its reserved padding, plus a binary
    parameter block per tensor."""
    v = r["v1"]
    return v["header"] - v["params_json"] - v["padding"] + COMPACT_PARAM_BYTES * r["ntensors"]


def ratios(r):
    size, hdr = r["size"], r["header"]
    rows = {}
    if "v1" in r:
        rows["v1 actual"] = r["v1"]["size"] / size
        rows["v1 actual, K=4096"] = r["v1k4096"]["size"] / size
    for row, bits in r["bits"].items():
        if row in ("(g)+overhead", "(h)+overhead"):
            # container: v1's header less its per-tensor JSON, plus a binary block per tensor
            if "v1" in r:
                cont = compact_header(r)
            else:
                cont = hdr + COMPACT_PARAM_BYTES * r["ntensors"]
            rows[row] = (bits / 8 + cont) / size
        else:
            rows[row] = (bits / 8 + hdr) / size
    if r.get("zipnn"):
        rows["zipnn"] = r["zipnn"] / size
    if r.get("lmz"):
        rows["lmz"] = r["lmz"] / size
    return rows


def render(results, args, started):
    L = []
    L.append(f"# Order-0 bounds of candidate v2 models ({started:%Y-%m-%d %H:%M} UTC)")
    L.append("")
    L.append("Made by `benchmarks/v2_bounds.py` on the shared corpus (`" + args.corpus + "`), "
             "one run. Ratios are to the original file (whole file, original header included). "
             "Bound rows count each float tensor at its order-0 entropy under the model, every "
             "other tensor raw, plus the original header; no tables, no lanes, no container, "
             "unless the row says so. zipnn: per tensor (`ZipNN(input_format='byte')`, one "
             "thread), no container, plus the original header; lmz: `lmz compress -j 1`, whole file.")
    import importlib.metadata as md
    vers = []
    for pkg in ("floatzip", "zipnn", "lmzip", "numpy"):
        try:
            vers.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            vers.append(f"{pkg} not installed")
    L.append("")
    L.append("Versions: " + ", ".join(vers) + ". Peers are optional: install `zipnn` and `lmzip` "
             "(e.g. `pip install --target DIR zipnn lmzip` and `PYTHONPATH=DIR`) to get their rows. "
             "Run: `.venv/bin/python benchmarks/v2_bounds.py CORPUS_DIR --tensors`.")
    L.append("")
    L.append("Models (sign rotated to the bottom as in v1; m = mantissa bits in the symbol, "
             "k = mantissa bits coded below it):")
    L.append("")
    for name, desc in MODELS:
        L.append(f"- **{name}**: {desc}.")
    L.append("- **g-no-X** (ablation): (g) with component X forbidden; (g-no-X) - (g) is what X "
             "adds on top of the others.")
    L.append("")
    # summary
    L.append("## Summary")
    L.append("")
    hdr = ["file", "v1 actual", "v1 K=4096", "v1 bound (b)", "best family (g)", "(g)+overhead", "(h)+overhead",
           "zipnn", "lmz", "v1 json hdr", "compact hdr"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" + "--:|" * (len(hdr) - 1))
    for r in results:
        q = ratios(r)
        f = lambda k: f"{q[k]:.4f}" if k in q else "n/a"
        if "v1" in r:
            jh = f"{r['v1']['header'] / r['size']:.4f}"
            ch = f"{compact_header(r) / r['size']:.4f}"
        else:
            jh = ch = "n/a"
        L.append(f"| {r['file'].replace('.safetensors', '')} | {f('v1 actual')} | {f('v1 actual, K=4096')} | "
                 f"{f('(b) v1 bound')} | "
                 f"{f('(g) best family')} | {f('(g)+overhead')} | {f('(h)+overhead')} | {f('zipnn')} | "
                 f"{f('lmz')} | {jh} | {ch} |")
    L.append("")
    # components
    L.append("## What each component pays (ratio points = 100 x ratio difference)")
    L.append("")
    L.append("Alone: (b) minus the model (v1 bound + that component). In (g): (g-no-X) minus (g).")
    L.append("")
    comps = [("sign in symbol", "(c) sign in symbol", "g-no-sign"),
             ("next k ctx exp", "(d) next k ctx exp", "g-no-ctx"),
             ("low planes", "(e) low planes", "g-no-planes"),
             ("constant bits", "(f) constant bits", "g-no-const")]
    hdr = ["file"] + [f"{c[0]} alone" for c in comps] + [f"{c[0]} in (g)" for c in comps] + \
          ["(g) total", "next k ctx symbol (ref)", "tables+lanes+params cost", "per-chunk models (h)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" + "--:|" * (len(hdr) - 1))
    for r in results:
        q = ratios(r)
        b = r["bits"]
        pt = lambda x: f"{100 * x / 8 / r['size']:.2f}"
        cells = [pt(b["(b) v1 bound"] - b[c[1]]) for c in comps]
        cells += [pt(b[c[2]] - b["(g) best family"]) for c in comps]
        cells += [pt(b["(b) v1 bound"] - b["(g) best family"]),
                  pt(b["(b) v1 bound"] - b["(d') next k ctx symbol"]),
                  f"{100 * (q['(g)+overhead'] - q['(g) best family']):.2f}",
                  f"{100 * (q['(g)+overhead'] - q['(h)+overhead']):.2f}"]
        L.append(f"| {r['file'].replace('.safetensors', '')} | " + " | ".join(cells) + " |")
    L.append("")
    # per file
    for r in results:
        q = ratios(r)
        L.append(f"## {r['file']}")
        L.append("")
        extra = f"; floatzip v1 compress {r['v1']['seconds']:.1f} s" if "v1" in r else ""
        L.append(f"{r['size']:,} bytes, {r['ntensors']} tensors, header {r['header']:,} bytes; "
                 f"models computed in {r['seconds']:.1f} s{extra}.")
        L.append("")
        L.append("| model | ratio | vs (b), points |")
        L.append("|---|--:|--:|")
        for row in ROWS + ["zipnn", "lmz"]:
            if row in q:
                d = 100 * (q["(b) v1 bound"] - q[row])
                L.append(f"| {row} | {q[row]:.4f} | {d:+.2f} |")
        L.append("")
        ch = sorted(r["choices"].items(), key=lambda kv: -kv[1])[:5]
        tot = sum(r["choices"].values())
        desc = ", ".join(f"m={k[0]} k={k[1]} sign={'joint' if k[2] else 'raw'} "
                         f"planes={'yes' if k[3] else 'no'} const={'rm' if k[4] else 'kept'}: "
                         f"{100 * v / tot:.0f}%" for k, v in ch)
        L.append(f"(g)+overhead's choices (whole-tensor models), by bytes: {desc}.")
        L.append("")
        if args.tensors:
            L.append("| tensor | dtype | MB | (b) | (c) | (d) | (e) | (f) | (g) | (g)+oh | (h)+oh |")
            L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
            big = sorted(r["per_tensor"], key=lambda t: -t[2])[:12]
            for name, dt, nb, res in big:
                c = lambda k: f"{res[k][0] / 8 / nb:.4f}"
                L.append(f"| {name[:40]} | {dt} | {nb / 1e6:.1f} | {c('(b) v1 bound')} | "
                         f"{c('(c) sign in symbol')} | {c('(d) next k ctx exp')} | {c('(e) low planes')} | "
                         f"{c('(f) constant bits')} | {c('(g) best family')} | {c('(g)+overhead')} | "
                         f"{c('(h)+overhead')} |")
            L.append("")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("corpus", nargs="?", default=os.path.join(tempfile.gettempdir(), "floatzip-corpus"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "v2_bounds.md"))
    p.add_argument("--no-peers", action="store_true", help="skip zipnn and lmz")
    p.add_argument("--no-v1", action="store_true", help="skip compressing with floatzip v1")
    p.add_argument("--no-chunks", action="store_true", help="skip the per-chunk rows (h)")
    p.add_argument("--tensors", action="store_true", help="per-tensor table of the largest tensors")
    args = p.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    files = sorted(f for f in os.listdir(args.corpus) if f.endswith(".safetensors"))
    log = lambda s: print(s, file=sys.stderr, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="v2bounds-") as tmp:
        for f in files:
            results.append(analyse(os.path.join(args.corpus, f), args, tmp, log))
    text = render(results, args, started)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
