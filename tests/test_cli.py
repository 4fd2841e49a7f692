"""The command line as a person or a script meets it: summaries that add
up, progress bars only on a terminal, quiet pipes, clear refusals."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from conftest import write_safetensors
from test_directory import make_model_dir

import floatzip
from floatzip.cli import _human


def run_cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "floatzip", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def tree_size(root):
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_directory_lines_add_up(tmp_path, rng):
    """The headline counts every byte, the copied pickle included, and the
    lines below say where they went."""
    src = make_model_dir(tmp_path / "model", rng)
    (src / "pytorch_model.bin").write_bytes(os.urandom(200_000))
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    code, out, err = run_cli("compress", src, packed)
    assert code == 0, err
    lines = out.splitlines()
    left_out = (src / ".git" / "HEAD").stat().st_size
    assert lines[0].startswith(f"{src} -> {packed}: {_human(tree_size(src) - left_out)} -> "
                               f"{_human(tree_size(packed))} (ratio ")
    assert lines[1].startswith("  compressed: 2 files, ")
    assert lines[2].startswith("  copied as they are: 4 files, 200.")
    assert lines[3] == "  left out: .git (version control)"
    code, out, err = run_cli("decompress", packed, restored)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{packed} -> {restored}: {_human(tree_size(packed))} -> "
                               f"{_human(tree_size(restored))} restored in ")
    assert lines[1].startswith("  decompressed: 2 files, ")
    assert lines[2].startswith("  copied as they are: 4 files, ")


def test_file_lines(tmp_path, small_checkpoint):
    packed, restored = tmp_path / "m.fz", tmp_path / "r.safetensors"
    code, out, err = run_cli("compress", small_checkpoint, packed)
    size, packed_size = small_checkpoint.stat().st_size, packed.stat().st_size
    assert code == 0 and out.startswith(
        f"{small_checkpoint} -> {packed}: {_human(size)} -> {_human(packed_size)} "
        f"(ratio {packed_size / size:.4f}), 4 tensors, in "), out
    code, out, err = run_cli("decompress", packed, restored)
    assert code == 0 and out.startswith(
        f"{packed} -> {restored}: {_human(packed_size)} -> {_human(size)} restored, "
        "4 tensors, in "), out


def test_uncompressible_file_of_a_directory_is_named(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    header = b'{"w":{"dtype":"F3","shape":[4],"data_offsets":[0,2]}}'
    (src / "future.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"ab")
    code, out, err = run_cli("compress", src, tmp_path / "packed")
    assert code == 0, err
    assert f"  not compressed (copied as is): {src / 'future.safetensors'}: tensor 'w': " \
           "unknown dtype 'F3'" in out
    code, out, err = run_cli("compress", src / "future.safetensors", tmp_path / "f.fz")
    assert code == 2 and "unknown dtype 'F3'" in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`floatzip info X | head -3`: stop as tools killed by SIGPIPE do,
    without a word (status 128 + SIGPIPE, as the shell reports theirs)."""
    src = write_safetensors(tmp_path / "many.safetensors",
                            [(f"t{i}", "F32", [4], np.ones(4, np.float32)) for i in range(3000)])
    packed = tmp_path / "many.fz"
    floatzip.compress(src, packed)
    proc = subprocess.Popen([sys.executable, "-m", "floatzip", "info", str(packed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(str(packed).encode())
    proc.stdout.close()                 # ~300 KB are still to come: more than a pipe holds
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert err == b""


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_dash_is_no_output_file(tmp_path, small_checkpoint, command):
    source = small_checkpoint
    if command == "decompress":
        source = tmp_path / "m.fz"
        floatzip.compress(small_checkpoint, source)
    code, out, err = run_cli(command, source, "-", cwd=tmp_path)
    assert code == 2 and "writing to standard output ('-') is not supported" in err
    assert not (tmp_path / "-").exists()
    code, out, err = run_cli(command, "-", tmp_path / "x", cwd=tmp_path)
    assert code == 2 and "reading standard input ('-') is not supported" in err
    code, out, err = run_cli(command, source, "./-", cwd=tmp_path)   # a file so named: asked
    assert code == 0 and (tmp_path / "-").exists()


@pytest.mark.parametrize("what", ["file", "directory"])
def test_an_existing_output_asks_for_force(tmp_path, rng, small_checkpoint, what):
    src = small_checkpoint if what == "file" else make_model_dir(tmp_path / "model", rng)
    packed = tmp_path / "packed"
    floatzip.compress(src, packed)
    code, out, err = run_cli("compress", src, packed)
    assert code == 2
    assert err.strip() == f"floatzip: error: {packed}: already exists; use --force to replace it"
    code, out, err = run_cli("decompress", packed, src)
    assert code == 2 and "use --force" in err and "overwrite=True" not in err
    code, out, err = run_cli("compress", src, packed, "--force")
    assert code == 0, err


def test_workers_agree_with_the_api(tmp_path, small_checkpoint):
    """Negative is every core, as in the API (and joblib's -1)."""
    assert floatzip.compress(small_checkpoint, tmp_path / "a.fz", workers=-1)["tensors"] == 4
    for workers in ("-1", "-2", "0", "1"):
        code, out, err = run_cli("compress", small_checkpoint, tmp_path / f"b{workers}.fz",
                                 "--workers", workers)
        assert code == 0, err
    code, out, err = run_cli("compress", small_checkpoint, tmp_path / "c.fz", "--workers", "x")
    assert code == 2 and "'x' is not a number of threads" in err


def test_verify_of_a_missing_path_is_no_mismatch(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    packed = tmp_path / "packed"
    floatzip.compress(src, packed)
    for args in ((src, tmp_path / "nope"), (tmp_path / "nope", packed)):
        code, out, err = run_cli("verify", *args)
        assert code == 2 and err.strip() == f"floatzip: error: {tmp_path / 'nope'}: no such " \
                                             "file or directory"
    (packed / "model-00002-of-00002.safetensors").unlink()
    code, out, err = run_cli("verify", src, packed)
    assert code == 1 and "listed in floatzip.json but missing" in err
    code, out, err = run_cli("decompress", packed, tmp_path / "out")
    assert code == 2 and "listed in floatzip.json but missing" in err
    assert len(err.strip().splitlines()) == 1


def run_on_a_terminal(*args):
    """The CLI with its standard error on a terminal (of 120 columns): what it
    writes there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "floatzip", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:                 # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    return seen.decode("utf-8", "replace")


def test_check_and_verify_show_a_bar_on_a_terminal(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    packed = tmp_path / "packed"
    floatzip.compress(src, packed)
    for args in (("check", packed), ("verify", src, packed), ("compress", src, tmp_path / "p"),
                 ("decompress", packed, tmp_path / "r")):
        shown = run_on_a_terminal(*args)
        assert re.search(r"B/s, \d/5 files\]", shown), (args, shown)
    for args in (("check", packed), ("verify", src, packed), ("compress", src, tmp_path / "q"),
                 ("decompress", packed, tmp_path / "s")):
        assert run_on_a_terminal(*args, "-q") == "", args
