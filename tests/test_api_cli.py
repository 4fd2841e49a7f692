"""Files and directories through the API and the CLI: byte-identical round
trips, verify, info, and clear failures that leave nothing behind."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import bf16_bits, write_safetensors

import floatzip
from floatzip.cli import main


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "floatzip.cli", *map(str, args)],
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_file_roundtrip_is_byte_identical(tmp_path, small_checkpoint):
    packed, restored = tmp_path / "m.fz.safetensors", tmp_path / "restored.safetensors"
    summary = floatzip.compress(small_checkpoint, packed, workers=2)
    assert summary["compressed_bytes"] < summary["original_bytes"]
    floatzip.decompress(packed, restored, workers=1)
    assert restored.read_bytes() == small_checkpoint.read_bytes()
    assert floatzip.verify(small_checkpoint, packed).ok


def test_safe_open_mirrors_safetensors(small_checkpoint, tmp_path):
    import safetensors
    import torch
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    with safetensors.safe_open(small_checkpoint, framework="pt") as ref, \
            floatzip.safe_open(packed, framework="pt") as f:
        assert sorted(f.keys()) == sorted(ref.keys())
        assert f.metadata() == ref.metadata()
        for name in ref.keys():
            a, b = ref.get_tensor(name), f.get_tensor(name)
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    with floatzip.safe_open(packed, framework="np") as f:
        assert f.get_tensor("layer.1.weight").dtype == np.float16
        with pytest.raises(floatzip.UnsupportedError, match="bfloat16|BF16"):
            f.get_tensor("layer.0.weight")
        with pytest.raises(KeyError, match="no tensor named 'nope'"):
            f.get_tensor("nope")


def test_get_tensor_reads_only_its_own_tensor(small_checkpoint, tmp_path):
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    data = bytearray(packed.read_bytes())
    fz = floatzip.safe_open(packed)._file
    t = fz.tensors["layer.1.weight"]
    data[t.blob_begin + t.blob_bytes // 2] ^= 0xFF          # damage one tensor only
    packed.write_bytes(bytes(data))
    with floatzip.safe_open(packed, framework="np") as f:
        assert f.get_tensor("layer.0.bias").shape == (96,)
        with pytest.raises(floatzip.CorruptDataError, match="layer.1.weight"):
            f.get_tensor("layer.1.weight")


def make_model_dir(root, rng):
    root.mkdir()
    w = (rng.standard_normal((2, 128, 64)) * 0.02).astype(np.float32)
    write_safetensors(root / "model-00001-of-00002.safetensors",
                      [("a.weight", "BF16", [128, 64], bf16_bits(w[0]))], {"format": "pt"})
    write_safetensors(root / "model-00002-of-00002.safetensors",
                      [("b.weight", "BF16", [128, 64], bf16_bits(w[1]))], {"format": "pt"})
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                        "b.weight": "model-00002-of-00002.safetensors"}}))
    (root / "config.json").write_text('{"architectures": ["X"]}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return root


def test_directory_roundtrip_restores_every_file(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    summary = floatzip.compress(src, packed)
    assert sorted(summary["files"]) == ["model-00001-of-00002.safetensors",
                                        "model-00002-of-00002.safetensors"]
    assert (packed / "floatzip.json").exists()
    assert (packed / "config.json").read_bytes() == (src / "config.json").read_bytes()
    floatzip.decompress(packed, restored)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    after = sorted(p.relative_to(restored) for p in restored.rglob("*"))
    assert before == after
    for rel in before:
        if (src / rel).is_file():
            assert (src / rel).read_bytes() == (restored / rel).read_bytes(), rel
    assert floatzip.verify(src, packed).ok
    assert floatzip.verify(src, restored).ok


def test_verify_reports_a_different_original(tmp_path, small_checkpoint, rng):
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    other = bytearray(small_checkpoint.read_bytes())
    other[-20] ^= 1
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(bytes(other))
    result = floatzip.verify(changed, packed)
    assert not result.ok and "differs" in result.problems[0]
    code, out, err = run_cli("verify", changed, packed)
    assert code == 1 and "MISMATCH" in err
    code, out, err = run_cli("verify", small_checkpoint, packed)
    assert code == 0 and "OK" in out


def damage(path, tensor, back=30):
    """Flip bits of a byte ``back`` bytes before the end of a tensor's blob:
    in its raw section, which no structural check covers, only the checksum."""
    data = bytearray(path.read_bytes())
    t = floatzip.safe_open(path)._file.tensors[tensor]
    data[t.blob_begin + t.blob_bytes - back] ^= 0x5A
    path.write_bytes(bytes(data))


def test_check_finds_damage_without_the_original(tmp_path, small_checkpoint):
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    assert floatzip.check(packed) == floatzip.api.VerifyResult(True, [])
    code, out, err = run_cli("check", packed)
    assert code == 0 and "OK" in out, err
    damage(packed, "layer.1.weight")
    result = floatzip.check(packed, workers=2)
    assert not result.ok and len(result.problems) == 1
    assert str(packed) in result.problems[0] and "'layer.1.weight'" in result.problems[0]
    assert "checksum" in result.problems[0]
    code, out, err = run_cli("check", packed)
    assert code == 1 and "CORRUPT" in err and "layer.1.weight" in err and "Traceback" not in err
    # Not a floatzip file, or no file at all: the caller's mistake, not damage.
    with pytest.raises(floatzip.FormatError, match="not a floatzip file"):
        floatzip.check(small_checkpoint)
    with pytest.raises(FileNotFoundError):
        floatzip.check(tmp_path / "nope")
    for path, words in ((small_checkpoint, "not a floatzip file"), (tmp_path / "nope", "nope")):
        code, out, err = run_cli("check", path)
        assert code == 2 and words in err and "Traceback" not in err
    garbage = tmp_path / "garbage.fz.safetensors"
    garbage.write_bytes(b"\xff" * 100)
    result = floatzip.check(garbage)
    assert not result.ok and "garbage.fz.safetensors" in result.problems[0]


def test_check_on_model_directories(tmp_path, rng):
    packed = tmp_path / "packed"
    floatzip.compress(make_model_dir(tmp_path / "model", rng), packed)
    assert floatzip.check(packed).ok
    damage(packed / "model-00002-of-00002.safetensors", "b.weight")
    (packed / "model-00001-of-00002.safetensors").unlink()
    result = floatzip.check(packed)
    assert not result.ok and len(result.problems) == 2
    assert "model-00001-of-00002.safetensors: listed in floatzip.json but missing" in \
        result.problems[0]
    assert "model-00002-of-00002.safetensors" in result.problems[1]
    assert "'b.weight'" in result.problems[1] and "checksum" in result.problems[1]
    # The directory's files are checked whatever the manifest says, and its
    # entries may not lead out of the directory.
    outside = tmp_path / "outside.fz.safetensors"
    outside.write_bytes((packed / "model-00002-of-00002.safetensors").read_bytes())
    entry = {"original_bytes": 0, "compressed_bytes": 0, "tensors": 0}
    (packed / "floatzip.json").write_text(json.dumps(
        {"format": "floatzip", "version": 1,
         "files": {"../outside.fz.safetensors": entry, str(outside): entry}}))
    result = floatzip.check(packed)
    assert len(result.problems) == 4
    assert all("points outside" in p for p in result.problems[:2])
    assert "a floatzip file that floatzip.json does not list" in result.problems[2]
    assert "'b.weight'" in result.problems[3]
    (packed / "floatzip.json").write_text("[]")
    assert "not a floatzip manifest" in floatzip.check(packed).problems[0]
    (packed / "floatzip.json").unlink()
    with pytest.raises(floatzip.FormatError, match="not a floatzip model directory"):
        floatzip.check(packed)


def test_cli_compress_decompress_info(tmp_path, small_checkpoint):
    packed, restored = tmp_path / "m.fz.safetensors", tmp_path / "r.safetensors"
    assert main(["compress", str(small_checkpoint), str(packed), "--workers", "2", "-q"]) == 0
    assert main(["decompress", str(packed), str(restored), "-q"]) == 0
    assert restored.read_bytes() == small_checkpoint.read_bytes()
    code, out, err = run_cli("info", packed)
    assert code == 0, err
    assert "layer.0.weight" in out and "ratio" in out and "bound" in out


def test_lane_symbols_option(tmp_path, small_checkpoint, capsys):
    """Shorter lanes: more of them in the file, a few more bytes, the same
    bytes back; out-of-range values are refused before any output exists."""
    default, short = tmp_path / "d.fz.safetensors", tmp_path / "s.fz.safetensors"
    floatzip.compress(small_checkpoint, default)
    assert main(["compress", str(small_checkpoint), str(short), "--lane-symbols", "16",
                 "-q"]) == 0
    with floatzip.safe_open(default) as d, floatzip.safe_open(short) as s:
        tans = [n for n in d.keys() if d.get_encoded(n).geometry is not None]
        assert tans
        for name in tans:
            a, b = d.get_encoded(name).geometry, s.get_encoded(name).geometry
            assert a.lane_symbols == min(1024, -(-a.count // 32)) and b.lane_symbols == 16
            assert b.lanes > a.lanes
    assert short.stat().st_size > default.stat().st_size
    restored = tmp_path / "r.safetensors"
    floatzip.decompress(short, restored)
    assert restored.read_bytes() == small_checkpoint.read_bytes()
    for bad in (0, 4097, 2.5, True):
        with pytest.raises(floatzip.UnsupportedError, match="lane_symbols must be .* 1 to 4096"):
            floatzip.compress(small_checkpoint, tmp_path / "bad.fz", lane_symbols=bad)
        assert not (tmp_path / "bad.fz").exists()
    capsys.readouterr()
    assert main(["compress", str(small_checkpoint), str(tmp_path / "x"), "--lane-symbols",
                 "0"]) == 2
    assert "lane_symbols must be" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["decompress", "info"])
def test_cli_rejects_plain_safetensors_without_traceback(tmp_path, small_checkpoint, command):
    args = [command, small_checkpoint] + ([tmp_path / "out"] if command == "decompress" else [])
    code, out, err = run_cli(*args)
    assert code != 0
    assert "not a floatzip file" in err and str(small_checkpoint) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"\x10\x00\x00\x00\x00\x00\x00\x00{}"])
def test_cli_rejects_bad_input_files(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    for args in (["compress", bad, tmp_path / "o1"], ["decompress", bad, tmp_path / "o2"],
                 ["info", bad]):
        code, out, err = run_cli(*args)
        assert code != 0 and "bad.safetensors" in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_cli_missing_file(tmp_path):
    code, out, err = run_cli("compress", tmp_path / "nope.safetensors", tmp_path / "o")
    assert code != 0 and "nope.safetensors" in err and "Traceback" not in err


def test_failed_decompress_leaves_no_partial_file(tmp_path, small_checkpoint):
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    damage(packed, "layer.1.weight")              # last in file order
    out = tmp_path / "out.safetensors"
    with pytest.raises(floatzip.CorruptDataError):
        floatzip.decompress(packed, out)
    assert sorted(os.listdir(tmp_path)) == ["m.fz.safetensors", "model.safetensors"]


def test_compress_refuses_floatzip_input(tmp_path, small_checkpoint):
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(small_checkpoint, packed)
    with pytest.raises(floatzip.FormatError, match="already a floatzip file"):
        floatzip.compress(packed, tmp_path / "again")


def test_decompress_directory_needs_manifest(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    with pytest.raises(floatzip.FormatError, match="not a floatzip model directory"):
        floatzip.decompress(src, tmp_path / "out")


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o440])
def test_outputs_keep_the_source_permissions(tmp_path, small_checkpoint, mode):
    """As zstd and gzip do: a private checkpoint stays private."""
    packed, restored = tmp_path / "m.fz.safetensors", tmp_path / "r.safetensors"
    small_checkpoint.chmod(mode)
    old = os.umask(0o022)
    try:
        floatzip.compress(small_checkpoint, packed)
        floatzip.decompress(packed, restored)
    finally:
        os.umask(old)
    assert packed.stat().st_mode & 0o777 == mode
    assert restored.stat().st_mode & 0o777 == mode


def test_directory_outputs_keep_the_source_permissions(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    src.chmod(0o750)
    (src / "tokenizer").chmod(0o500)       # read-only: the copy stays writable by its owner
    (src / "model-00001-of-00002.safetensors").chmod(0o600)
    packed = tmp_path / "packed"
    floatzip.compress(src, packed)
    assert packed.stat().st_mode & 0o777 == 0o750
    assert (packed / "tokenizer").stat().st_mode & 0o777 == 0o700
    assert (packed / "model-00001-of-00002.safetensors").stat().st_mode & 0o777 == 0o600
    (src / "tokenizer").chmod(0o700)


def test_outputs_that_would_destroy_or_swallow_the_input_are_refused(tmp_path, rng,
                                                                     small_checkpoint):
    src = make_model_dir(tmp_path / "model", rng)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    for dst, words in ((src / "packed", "is inside the source"), (tmp_path, "contains the source"),
                       (src, "is the input itself")):
        with pytest.raises(floatzip.FormatError, match=words):
            floatzip.compress(src, dst, overwrite=True)
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    with pytest.raises(floatzip.FormatError, match="is the input itself"):
        floatzip.compress(small_checkpoint, small_checkpoint, overwrite=True)
    code, out, err = run_cli("compress", src, src / "packed", "--force")
    assert code == 2 and "is inside the source" in err


def test_symlinked_directories_are_followed_and_loops_refused(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "merges.txt").write_text("a b\n")
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    floatzip.compress(src, packed)
    assert (packed / "linked" / "merges.txt").read_text() == "a b\n"
    floatzip.decompress(packed, restored)
    assert (restored / "linked" / "merges.txt").read_text() == "a b\n"
    assert floatzip.verify(src, packed).ok
    # Two links to one directory are no loop.
    (src / "linked-again").symlink_to(elsewhere, target_is_directory=True)
    floatzip.compress(src, tmp_path / "packed2")
    assert (tmp_path / "packed2" / "linked-again" / "merges.txt").exists()
    (elsewhere / "loop").symlink_to(src, target_is_directory=True)
    with pytest.raises(floatzip.FormatError, match="loops back"):
        floatzip.compress(src, tmp_path / "packed3")
    assert not (tmp_path / "packed3").exists()
    # Links out of a compressed directory are followed (the Hugging Face
    # cache is a tree of links into blobs/) and what they lead to is checked
    # against the manifest; a link out that the manifest does not list is
    # not part of the model: not copied (what it leads to is vouched for by
    # nothing), and no error.
    (packed / "secret").symlink_to(tmp_path / "elsewhere" / "merges.txt")
    floatzip.decompress(packed, tmp_path / "restored2")
    assert not (tmp_path / "restored2" / "secret").exists()
    assert floatzip.check(packed).ok
    (packed / "linked" / "merges.txt").unlink()
    (packed / "linked" / "merges.txt").symlink_to(tmp_path / "elsewhere" / "merges.txt")
    floatzip.decompress(packed, tmp_path / "restored3")     # the same bytes, behind a link
    assert (tmp_path / "restored3" / "linked" / "merges.txt").read_text() == "a b\n"
    (tmp_path / "other.txt").write_text("a c\n")
    (packed / "linked" / "merges.txt").unlink()
    (packed / "linked" / "merges.txt").symlink_to(tmp_path / "other.txt")
    with pytest.raises(floatzip.CorruptDataError, match="merges.txt"):
        floatzip.decompress(packed, tmp_path / "restored4")
    assert not floatzip.check(packed).ok


def test_directory_without_safetensors_is_refused(tmp_path):
    src = tmp_path / "bin-model"
    src.mkdir()
    (src / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(floatzip.FormatError, match="no .safetensors file"):
        floatzip.compress(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_file_system_errors_name_the_output_without_traceback(tmp_path, small_checkpoint):
    for long_name in (tmp_path / ("m" * 240 + ".safetensors"),     # 252 bytes: legal names
                      tmp_path / ("\N{GRINNING FACE}" * 60 + ".fz")):
        code, out, err = run_cli("compress", small_checkpoint, long_name)
        assert code == 0, err
        assert floatzip.check(long_name).ok
    missing = tmp_path / "no-such-dir" / "m.fz.safetensors"
    code, out, err = run_cli("compress", small_checkpoint, missing)
    assert code == 2 and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "no-such-dir").exists()
    # --force onto a link to a directory replaces the link, not what it points to.
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    src = tmp_path / "src-dir"
    src.mkdir()
    write_safetensors(src / "w.safetensors", [("w", "F32", [4], np.ones(4, np.float32))])
    code, out, err = run_cli("compress", src, link, "--force")
    assert code == 0, err
    assert not link.is_symlink() and (link / "floatzip.json").exists()
    assert (target / "keep.txt").read_text() == "mine"
    code, out, err = run_cli("compress", small_checkpoint, tmp_path / "x", "--workers", "two")
    assert code == 2 and "not a number of threads" in err


def test_oversized_floatzip_header_is_refused(tmp_path, monkeypatch):
    from floatzip.format import container
    src = write_safetensors(tmp_path / "m.safetensors", [("w", "F32", [4], np.ones(4, np.float32))],
                            {"note": "\\" * 400})       # each escaped again inside floatzip's
    monkeypatch.setattr(container, "MAX_HEADER_BYTES", 1000)
    with pytest.raises(floatzip.FormatError, match="over the 1000-byte limit"):
        floatzip.compress(src, tmp_path / "m.fz.safetensors")
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_existing_output_is_kept_unless_forced(tmp_path, small_checkpoint):
    packed = tmp_path / "m.fz.safetensors"
    packed.write_bytes(b"precious")
    with pytest.raises(floatzip.OutputExistsError, match="already exists"):
        floatzip.compress(small_checkpoint, packed)
    assert packed.read_bytes() == b"precious"
    code, out, err = run_cli("compress", small_checkpoint, packed)
    assert code != 0 and "--force" in err and packed.read_bytes() == b"precious"
    code, out, err = run_cli("compress", small_checkpoint, packed, "--force")
    assert code == 0 and floatzip.verify(small_checkpoint, packed).ok
    other = tmp_path / "existing-dir"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(floatzip.OutputExistsError):
        floatzip.decompress(packed, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_cli_on_model_directories(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    code, out, err = run_cli("compress", src, packed)
    assert code == 0, err
    code, out, err = run_cli("info", packed)
    assert code == 0 and "model-00001-of-00002.safetensors" in out and "a.weight" in out
    code, out, err = run_cli("verify", src, packed)
    assert code == 0, err
    code, out, err = run_cli("decompress", packed, restored)
    assert code == 0, err
    (restored / "config.json").write_text("{}")
    code, out, err = run_cli("verify", src, restored)
    assert code == 1 and "config.json" in err


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "floatzip", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "floatzip" in proc.stdout


def test_unknown_dtype_is_refused_clearly(tmp_path):
    header = b'{"w":{"dtype":"F3","shape":[4],"data_offsets":[0,2]}}'
    bad = tmp_path / "fp3.safetensors"
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\x12\x34")
    code, out, err = run_cli("compress", bad, tmp_path / "o")
    assert code == 2 and "unknown dtype 'F3'" in err and "'w'" in err and "Traceback" not in err


def test_force_never_replaces_a_device(small_checkpoint, tmp_path):
    # --force replaced /dev/null (as root) with a regular file.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for output in ("/dev/null", fifo):
        code, out, err = run_cli("compress", "-f", small_checkpoint, output)
        assert code == 2 and "not a regular file" in err and "Traceback" not in err
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_sigterm_removes_temporaries_and_keeps_the_output(tmp_path, rng):
    # timeout and Slurm send SIGTERM: it left a hidden temporary behind.
    src = write_safetensors(tmp_path / "big.safetensors", [
        ("w", "BF16", [4096, 8192], bf16_bits(rng.standard_normal((4096, 8192)) * 0.02))])
    out = tmp_path / "out.fz"
    out.write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-m", "floatzip", "compress", "-f", "-q",
                             str(src), str(out)], stderr=subprocess.PIPE)
    while not [p for p in os.listdir(tmp_path) if p.startswith(".out.fz")]:
        assert proc.poll() is None, proc.stderr.read()
    proc.terminate()
    assert proc.wait() == 143 and b"terminated" in proc.stderr.read()
    proc.stderr.close()
    assert sorted(os.listdir(tmp_path)) == ["big.safetensors", "out.fz"]
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("header", [
    b'{"a\\ud800b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',         # lone surrogate
    b'{"__metadata__":{"k":"v"},"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deep
    b'{"w":{"dtype":"U8","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,1]}}',  # huge int
])
def test_headers_safetensors_refuses_are_errors_not_tracebacks(tmp_path, header):
    path = tmp_path / "odd.safetensors"
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0")
    code, out, err = run_cli("compress", path, tmp_path / "o.fz")
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_verify_of_a_truncated_file_says_why(small_checkpoint, tmp_path):
    packed = tmp_path / "m.fz"
    floatzip.compress(small_checkpoint, packed)
    packed.write_bytes(packed.read_bytes()[:-100])
    result = floatzip.verify(small_checkpoint, packed)
    assert not result.ok and "truncated" in result.problems[0]
