"""The `floatzip` command line."""
from __future__ import annotations

import argparse
import sys
import time

from .codecs.model import DEFAULT_LANE_SYMBOLS
from .errors import FloatzipError


def _output_args(p):
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-f", "--force", action="store_true", help="replace DST if it exists")


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of threads (0: all cores)")
    return value


def _workers_arg(p):
    p.add_argument("--workers", type=_thread_count, default=None,
                   help="threads to use (default, or 0: all cores)")
    p.add_argument("--backend", choices=["numba", "numpy"], default=None,
                   help="coding back end (default: numba if available)")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def cmd_compress(args) -> int:
    from . import api
    t0 = time.perf_counter()
    s = api.compress(args.src, args.dst, workers=args.workers, backend=args.backend,
                     progress=not args.quiet and sys.stderr.isatty(), overwrite=args.force,
                     lane_symbols=args.lane_symbols)
    dt = time.perf_counter() - t0
    print(f"{args.src} -> {args.dst}: {_human(s['original_bytes'])} -> "
          f"{_human(s['compressed_bytes'])} (ratio {s['compressed_bytes'] / max(s['original_bytes'], 1):.4f}) "
          f"in {dt:.2f} s, {s['original_bytes'] / dt / 1e6:.0f} MB/s")
    return 0


def cmd_decompress(args) -> int:
    from . import api
    t0 = time.perf_counter()
    s = api.decompress(args.src, args.dst, workers=args.workers, backend=args.backend,
                       progress=not args.quiet and sys.stderr.isatty(), overwrite=args.force)
    dt = time.perf_counter() - t0
    print(f"{args.src} -> {args.dst}: {_human(s['original_bytes'])} restored in {dt:.2f} s, "
          f"{s['original_bytes'] / dt / 1e6:.0f} MB/s")
    return 0


def _report(result, ok_line: str, problem_label: str) -> int:
    """verify's and check's outcome: 0 and one line, or 1 and every problem."""
    if result.ok:
        print(ok_line)
        return 0
    for problem in result.problems:
        print(f"{problem_label}: {problem}", file=sys.stderr)
    return 1


def cmd_verify(args) -> int:
    from . import api
    result = api.verify(args.original, args.compressed, workers=args.workers, backend=args.backend)
    return _report(result, f"OK: {args.compressed} restores {args.original} bit for bit",
                   "MISMATCH")


def cmd_check(args) -> int:
    from . import api
    result = api.check(args.path, workers=args.workers, backend=args.backend)
    return _report(result, f"OK: {args.path}: every stored checksum matches", "CORRUPT")


def cmd_info(args) -> int:
    from .info import print_info
    return print_info(args.path, per_tensor=not args.summary)


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(workers=args.workers, keep=args.keep)


def cmd_run(args) -> int:
    from .torch.run import run_text
    return run_text(args.path, args.text, max_new_tokens=args.max_new_tokens,
                    device=args.device, decode=args.decode)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="floatzip",
        description="Lossless compression of neural-network weights (safetensors).")
    parser.add_argument("--version", action="version", version=f"floatzip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, text in (
            ("compress", cmd_compress, "compress a .safetensors file or a model directory"),
            ("decompress", cmd_decompress, "restore the original file or directory, byte for byte")):
        p = sub.add_parser(name, help=text)
        p.add_argument("src")
        p.add_argument("dst")
        _output_args(p)
        _workers_arg(p)
        if name == "compress":
            p.add_argument("--lane-symbols", type=int, default=DEFAULT_LANE_SYMBOLS,
                           metavar="K",
                           help=f"symbols per lane, 1..4096 (default {DEFAULT_LANE_SYMBOLS}); "
                                "fewer give a GPU more lanes to decode at once: 256 costs "
                                "~0.6%% more bytes")
        p.set_defaults(func=func)

    p = sub.add_parser("verify", help="exit 0 only if COMPRESSED restores ORIGINAL bit for bit")
    p.add_argument("original")
    p.add_argument("compressed")
    _workers_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("check", help="exit 0 only if a compressed file or directory matches "
                                     "its stored checksums (no original needed, like "
                                     "zstd --test)")
    p.add_argument("path")
    _workers_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("info", help="per-tensor ratio, bits/weight and the entropy bound")
    p.add_argument("path")
    p.add_argument("--summary", action="store_true", help="totals only")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="compress the bundled all-MiniLM-L6-v2 model and check it")
    p.add_argument("--workers", type=_thread_count, default=None)
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep the demo's files in DIR instead of a temporary directory")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a compressed model directory on some text")
    p.add_argument("path")
    p.add_argument("--text", required=True)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--decode", choices=["on_the_fly", "at_load"], default="on_the_fly")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FloatzipError as exc:
        print(f"floatzip: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"floatzip: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"floatzip: error: {exc.filename}: no such file or directory", file=sys.stderr)
        return 2
    except OSError as exc:              # a full disk, a name too long, a read-only place...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"floatzip: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("floatzip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
