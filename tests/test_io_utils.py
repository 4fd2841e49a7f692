"""Outputs getting their final names: no-clobber that holds when jobs race,
temporaries that a later job recognises and removes when their owner died,
errors that name the output, and reads and writes that loop on short counts."""
import errno
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from conftest import write_safetensors

import floatzip
from floatzip import io_utils

RACE_ROUNDS = 400


def _race_worker(barrier, out_dir, kind, fallback, tag, report):
    """One of two processes racing to create the same outputs, round after
    round; the barrier lets both reach the point of publishing together."""
    from floatzip import io_utils
    if fallback:                             # as where renameat2 is missing
        io_utils._renameat2_function = lambda: None
    outcomes = []
    for i in range(RACE_ROUNDS):
        path = os.path.join(out_dir, f"out-{i}")
        try:
            if kind == "file":
                with io_utils.atomic_output(path, overwrite=False) as f:
                    f.write(tag.encode())
                    barrier.wait(30)
            else:                            # as floatzip.directory makes and publishes one
                staging = tempfile.mkdtemp(prefix=io_utils.temporary_prefix(path), dir=out_dir)
                try:
                    with open(os.path.join(staging, "owner"), "w") as f:
                        f.write(tag)
                    barrier.wait(30)
                    io_utils.publish_directory(staging, path, overwrite=False)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            outcomes.append("won")
        except floatzip.OutputExistsError as exc:
            outcomes.append("lost" if "already exists" in str(exc) else repr(exc))
        except Exception as exc:  # noqa: BLE001 - recorded: the test shows it
            outcomes.append(repr(exc))
    with open(report, "w") as f:
        f.write("\n".join(outcomes))


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "fallback"])
def test_two_processes_racing_to_one_output_one_wins_one_gets_output_exists(
        tmp_path, kind, fallback):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_race_worker,
                           args=(barrier, str(tmp_path), kind, fallback, tag,
                                 str(tmp_path / f"{tag}.report")))
               for tag in ("A", "B")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    reports = {tag: (tmp_path / f"{tag}.report").read_text().split("\n") for tag in "AB"}
    for i in range(RACE_ROUNDS):
        outcome = {tag: reports[tag][i] for tag in "AB"}
        assert sorted(outcome.values()) == ["lost", "won"], (i, outcome)
        winner = next(tag for tag in "AB" if outcome[tag] == "won")
        out = tmp_path / f"out-{i}"
        assert (out.read_text() if kind == "file" else (out / "owner").read_text()) == winner
    # The losers' temporaries are gone: only the outputs and the reports.
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"out-{i}" for i in range(RACE_ROUNDS)] + ["A.report", "B.report"])


HOLDER = textwrap.dedent("""
    import os, sys, tempfile, time
    from floatzip import io_utils
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "file":
        out = io_utils.atomic_output(path)
        f = out.__enter__()
        f.write(os.urandom(1 << 20))
        f.flush()
    else:                                     # as floatzip.directory makes one
        staging = tempfile.mkdtemp(prefix=io_utils.temporary_prefix(path),
                                   dir=os.path.dirname(os.path.abspath(path)))
        open(os.path.join(staging, "half-written"), "wb").write(os.urandom(1 << 20))
    print("ready", flush=True)
    time.sleep(600)
""")


def _hold_temporary(kind, path):
    """A process in the middle of writing ``path``: it has made its
    temporary and waits."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def _hidden(directory):
    return {name for name in os.listdir(directory) if name.startswith(".")}


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_temporaries_of_killed_jobs_are_removed_by_the_next_job_and_live_ones_kept(
        tmp_path, small_checkpoint):
    # A 250-byte output name with characters of 1 to 4 bytes, cut anywhere.
    name = "é" * 41 + "\N{GRINNING FACE}" * 30 + "z" * 33 + ".fz.safetensors"
    assert len(name.encode()) == 250
    out = tmp_path / name
    dead = _hold_temporary("file", out)
    (dead_temporary,) = _hidden(tmp_path)
    live = _hold_temporary("file", out)
    (live_temporary,) = _hidden(tmp_path) - {dead_temporary}
    for temporary in (dead_temporary, live_temporary):
        assert len(os.fsencode(temporary)) <= 255
        assert temporary.startswith("." + name[:30]) and "floatzip" in temporary
    _kill(dead)
    # A pid now used by another process than the one that made the temporary:
    # the live holder's pid, another start time.
    head, host, _, _, rand = dead_temporary.rsplit(".", 4)
    reused = f"{head}.{host}.{live.pid}.1.{rand}"
    (tmp_path / reused).write_bytes(b"left by a process long gone")
    # Not floatzip's, or not this output's: never touched.
    cut = name.encode()[:100].decode("utf-8", "ignore")
    foreign = [f".{cut}.x2kd9a1b.tmp", f".{cut}.floatzip-tmp.notes", ".other.fz.tmp",
               dead_temporary.replace(name[:20], "other-output", 1)]
    for f in foreign:
        (tmp_path / f).write_bytes(b"keep me")
    try:
        floatzip.compress(small_checkpoint, out)
        assert floatzip.check(out).ok
        assert _hidden(tmp_path) == {live_temporary, *foreign}
    finally:
        _kill(live)
    # Its owner gone, the next job removes the last one too.
    io_utils.remove_stale_temporaries(out)
    assert _hidden(tmp_path) == set(foreign)


def test_staging_directories_of_killed_jobs_are_removed_by_the_next_job(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    write_safetensors(src / "w.safetensors", [("w", "F32", [4], np.ones(4, np.float32))])
    out = tmp_path / ("\N{GRINNING FACE}" * 62)      # 248 bytes
    dead = _hold_temporary("dir", out)
    (dead_staging,) = _hidden(tmp_path)
    assert len(os.fsencode(dead_staging)) <= 255
    _kill(dead)
    floatzip.compress(src, out)
    assert _hidden(tmp_path) == set() and (out / "floatzip.json").exists()


def test_replacing_a_directory_leaves_no_moment_without_one(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kw):
        seen.append(sorted(os.listdir(out)) if out.is_dir() else None)
        return real_rmtree(path, *args, **kw)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    staging = tempfile.mkdtemp(prefix=io_utils.temporary_prefix(out), dir=tmp_path)
    (pathlib.Path(staging) / "new").write_text("new")
    io_utils.publish_directory(staging, str(out), overwrite=True)
    assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["out"]
    assert seen and all(s == ["new"] for s in seen)  # the old one removed after the swap
    # Where the system cannot swap, the old one is removed first.
    real_renameat2 = io_utils._renameat2_function()
    monkeypatch.setattr(io_utils, "_renameat2_function", lambda: None)
    staging = io_utils.make_staging_directory(out)
    (pathlib.Path(staging) / "newer").write_text("newer")
    io_utils.publish_directory(staging, str(out), overwrite=True)
    assert os.listdir(out) == ["newer"] and os.listdir(tmp_path) == ["out"]
    # Without overwrite an empty directory is an output too, with or without renameat2.
    (out / "newer").unlink()
    for renameat2 in (None, real_renameat2):
        monkeypatch.setattr(io_utils, "_renameat2_function", lambda r=renameat2: r)
        staging = io_utils.make_staging_directory(out)
        with pytest.raises(floatzip.OutputExistsError, match="already exists"):
            io_utils.publish_directory(staging, str(out), overwrite=False)
        shutil.rmtree(staging)
        assert os.listdir(out) == [] and os.listdir(tmp_path) == ["out"]


def test_write_errors_inside_atomic_output_name_the_output(tmp_path, monkeypatch):
    out = str(tmp_path / "m.fz.safetensors")

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    for patched, write in (("pwrite", lambda fd: io_utils.pwrite_all(fd, b"abc", 1 << 20)),
                           ("write", lambda fd: io_utils.write_all(fd, b"abc")),
                           ("fsync", lambda fd: None)):
        with monkeypatch.context() as m, pytest.raises(OSError) as info, \
                io_utils.atomic_output(out) as f:
            f.write(b"header")
            m.setattr(os, patched, no_space)
            write(f.fileno())
        assert info.value.errno == errno.ENOSPC and info.value.filename == out, patched
        assert "m.fz.safetensors" in str(info.value)
        assert os.listdir(tmp_path) == []
    # An error that names another file (the input, read inside) stays its own.
    with pytest.raises(FileNotFoundError) as info, io_utils.atomic_output(out):
        os.stat(tmp_path / "missing-input")
    assert info.value.filename == str(tmp_path / "missing-input")
    assert os.listdir(tmp_path) == []


def test_file_too_large_names_the_output(tmp_path, small_checkpoint):
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    restored = tmp_path / "restored.safetensors"
    limit = os.path.getsize(small_checkpoint) // 2

    def small_files():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "floatzip.cli", "decompress", str(packed),
                           str(restored)], capture_output=True, text=True, check=False,
                          preexec_fn=small_files)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(restored) in proc.stderr and "File too large" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.fz.safetensors", "model.safetensors"]


def _short(real, most):
    """``real`` (os.preadv, os.write or os.pwrite) moving at most ``most``
    bytes a call, as reads and writes may."""
    def call(fd, data, *args):
        if isinstance(data, list):
            data = [memoryview(data[0])[:most]]
        else:
            data = memoryview(data)[:most]
        return real(fd, data, *args)
    return call


def test_reads_and_writes_loop_on_short_counts(tmp_path, monkeypatch):
    data = np.random.default_rng(5).integers(0, 256, 10_000, dtype=np.uint8)
    path = tmp_path / "data"
    path.write_bytes(data.tobytes())
    monkeypatch.setattr(os, "preadv", _short(os.preadv, 999))
    monkeypatch.setattr(os, "write", _short(os.write, 777))
    monkeypatch.setattr(os, "pwrite", _short(os.pwrite, 555))
    fd = os.open(path, os.O_RDWR)
    try:
        out = np.zeros(9_000, np.uint8)
        io_utils.pread_exact(fd, out, 1_000, "data")
        assert np.array_equal(out, data[1_000:])
        with pytest.raises(floatzip.FormatError, match="data: file ended while reading 9001 "
                                                       "bytes at offset 1000"):
            io_utils.pread_exact(fd, np.zeros(9_001, np.uint8), 1_000, "data")
        io_utils.pwrite_all(fd, data[::-1].copy(), 5_000)
        os.lseek(fd, 15_000, os.SEEK_SET)
        io_utils.write_all(fd, data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data[:5_000].tobytes() + data[::-1].tobytes() + data.tobytes()


def test_read_errors_name_what_was_read(tmp_path, monkeypatch):
    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", broken)
    with pytest.raises(OSError, match="Input/output error: 'model.safetensors'") as info:
        io_utils.pread_exact(0, bytearray(8), 0, "model.safetensors")
    assert info.value.errno == errno.EIO
