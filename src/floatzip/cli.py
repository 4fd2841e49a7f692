"""The `floatzip` command line."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from .codecs.model import DEFAULT_LANE_SYMBOLS
from .errors import FloatzipError, OutputExistsError


def _quiet_arg(p):
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _output_args(p):
    _quiet_arg(p)
    p.add_argument("-f", "--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--no-fsync", dest="fsync", action="store_false",
                   help="do not wait for the output to reach the disk (faster: most of a "
                        "large decompress's time is that wait); after a power failure or OS "
                        "crash the output may be lost or partial on disk, though no other "
                        "process ever sees a partial output (it is renamed into place when "
                        "complete)")


def _show_progress(args) -> bool:
    """A bar only for a person watching: not with -q, not into a file or pipe."""
    return not args.quiet and sys.stderr.isatty()


def _thread_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of threads (0 or negative: all cores)") from None


def _input_path(text: str) -> str:
    if text == "-":
        raise argparse.ArgumentTypeError("reading standard input ('-') is not supported; name "
                                         "a file or directory (./- for one named '-')")
    return text


def _output_path(text: str) -> str:
    if text == "-":
        raise argparse.ArgumentTypeError("writing to standard output ('-') is not supported; "
                                         "name an output file or directory (./- for one "
                                         "named '-')")
    return text


def _workers_arg(p):
    # As the API (and joblib's n_jobs=-1): 0 or a negative number is every core.
    p.add_argument("--workers", type=_thread_count, default=None,
                   help="threads to use (default, 0 or negative: all cores)")
    p.add_argument("--backend", choices=["numba", "numpy"], default=None,
                   help="coding back end (default: numba if available)")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def _ratio(after: int, before: int) -> str:
    return f"ratio {after / max(before, 1):.4f}"


def _speed(nbytes: int, seconds: float) -> str:
    return f"in {seconds:.2f} s, {nbytes / max(seconds, 1e-9) / 1e6:.0f} MB/s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _directory_lines(s: dict, compressing: bool) -> list[str]:
    """A directory job's parts: coded files, copied files, and what was left
    out, so that the totals above them can be accounted for."""
    coded, copied = s["coded_files"], s["copied_files"]
    before, after = s["coded_original_bytes"], s["coded_compressed_bytes"]
    if compressing:
        lines = [(f"  compressed: {_count(coded, 'file')}, {_human(before)} -> {_human(after)} "
                  f"({_ratio(after, before)})")]
    else:
        lines = [f"  decompressed: {_count(coded, 'file')}, {_human(after)} -> {_human(before)}"]
    lines.append(f"  copied as they are: {_count(copied, 'file')}, {_human(s['copied_bytes'])}")
    for why in s.get("uncoded", {}).values():
        lines.append(f"  not compressed (copied as is): {why}")
    for rel in s.get("skipped", []):
        lines.append(f"  left out: {rel} (version control)")
    return lines


def _output_exists(args) -> OutputExistsError:
    # The API's message speaks of overwrite=True; here the switch is --force.
    return OutputExistsError(f"{args.dst}: already exists; use --force to replace it")


def cmd_compress(args) -> int:
    from . import api
    t0 = time.perf_counter()
    try:
        s = api.compress(args.src, args.dst, workers=args.workers, backend=args.backend,
                         progress=_show_progress(args), overwrite=args.force,
                         lane_symbols=args.lane_symbols, fsync=args.fsync,
                         format_version=args.format_version)
    except OutputExistsError:
        raise _output_exists(args) from None
    dt = time.perf_counter() - t0
    before, after = s["original_bytes"], s["compressed_bytes"]
    head = f"{args.src} -> {args.dst}: {_human(before)} -> {_human(after)} ({_ratio(after, before)})"
    return _summary(head, s, before, dt, compressing=True)


def _summary(head: str, s: dict, nbytes: int, dt: float, *, compressing: bool) -> int:
    """compress's and decompress's last lines: the totals, then a
    directory's coded, copied and left-out lines or a file's tensor count."""
    if "files" in s:
        print(f"{head} {_speed(nbytes, dt)}")
        print("\n".join(_directory_lines(s, compressing=compressing)))
    else:
        print(f"{head}, {_count(s['tensors'], 'tensor')}, {_speed(nbytes, dt)}")
    return 0


def cmd_decompress(args) -> int:
    from . import api
    t0 = time.perf_counter()
    try:
        s = api.decompress(args.src, args.dst, workers=args.workers, backend=args.backend,
                           progress=_show_progress(args), overwrite=args.force,
                           fsync=args.fsync)
    except OutputExistsError:
        raise _output_exists(args) from None
    dt = time.perf_counter() - t0
    restored = s["original_bytes"]
    head = (f"{args.src} -> {args.dst}: {_human(s['compressed_bytes'])} -> "
            f"{_human(restored)} restored")
    return _summary(head, s, restored, dt, compressing=False)


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
    result = api.verify(args.original, args.compressed, workers=args.workers,
                        backend=args.backend, progress=_show_progress(args))
    return _report(result, f"OK: {args.compressed} restores {args.original} bit for bit",
                   "MISMATCH")


def cmd_check(args) -> int:
    from . import api
    result = api.check(args.path, workers=args.workers, backend=args.backend,
                       progress=_show_progress(args))
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
                    device=args.device, decode=args.decode, memory=args.memory)


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
        p.add_argument("src", type=_input_path)
        p.add_argument("dst", type=_output_path)
        _output_args(p)
        _workers_arg(p)
        if name == "compress":
            p.add_argument("--lane-symbols", type=int, default=DEFAULT_LANE_SYMBOLS,
                           metavar="K",
                           help=f"symbols per lane, 1..4096 (default {DEFAULT_LANE_SYMBOLS}); "
                                "fewer give a GPU more lanes to decode at once: 256 costs "
                                "~0.6%% more bytes")
            p.add_argument("--format-version", type=int, choices=(1, 2), default=2,
                           help="newest file format the output may use (default 2); 1 keeps "
                                "it readable by floatzip 0.1, without what format 2 saves. "
                                "A file is written in the lowest version it needs either way")
        p.set_defaults(func=func)

    p = sub.add_parser("verify", help="exit 0 only if COMPRESSED restores ORIGINAL bit for bit")
    p.add_argument("original")
    p.add_argument("compressed")
    _quiet_arg(p)
    _workers_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("check", help="exit 0 only if a compressed file or directory matches "
                                     "its stored checksums (no original needed, like "
                                     "zstd --test)")
    p.add_argument("path")
    _quiet_arg(p)
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
    p.add_argument("--memory", choices=["compact", "fast"], default="compact",
                   help="on the fly, keep weights in the file's code (compact, the default) or "
                        "transcode BF16 weights at load into the fast in-memory code (CPU)")
    p.set_defaults(func=cmd_run)
    return parser


def _reader_went_away() -> int:
    """The reader of our output left (``floatzip info X | head -3``): stop
    without a word, as tools killed by SIGPIPE do, with their status."""
    try:
        # Python would flush what is left at exit, fail again and say so.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass                        # no file descriptor (captured output): nothing to flush
    return 128 + signal.SIGPIPE


class _Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, kill) unwinds as Ctrl-C does, so that
    temporaries are removed and an existing output is left as it was."""


def _terminated(signum, frame):
    raise _Terminated


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    except BrokenPipeError:
        return _reader_went_away()
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
    except _Terminated:
        print("floatzip: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("floatzip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
