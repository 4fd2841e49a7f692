"""Compressed model directories: checked against their manifest everywhere
(decompress, check, verify agree), every safetensors dtype compressed or
stored raw, version-control folders left out, honest summaries and one
progress bar per job."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import bf16_bits, write_safetensors

import floatzip
from floatzip import directory
from floatzip.cli import main
from floatzip.format.safetensors_header import parse_header_bytes
from floatzip.progress import Progress

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"


def make_model_dir(root, rng):
    root.mkdir()
    w = (rng.standard_normal((2, 128, 64)) * 0.02).astype(np.float32)
    write_safetensors(root / SHARD_1, [("a.weight", "BF16", [128, 64], bf16_bits(w[0]))],
                      {"format": "pt"})
    write_safetensors(root / SHARD_2, [("b.weight", "BF16", [128, 64], bf16_bits(w[1]))],
                      {"format": "pt"})
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a.weight": SHARD_1, "b.weight": SHARD_2}}))
    (root / "config.json").write_text('{"architectures": ["X"]}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return root


@pytest.fixture
def dirs(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    packed = tmp_path / "packed"
    floatzip.compress(src, packed)
    return src, packed


def tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tree_size(root):
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def assert_refused(packed, out, *words):
    """decompress refuses ``packed`` naming ``words``, and writes nothing;
    check and verify report the same."""
    with pytest.raises(floatzip.CorruptDataError) as info:
        floatzip.decompress(packed, out)
    for word in words:
        assert word in str(info.value)
    assert not out.exists()
    assert not [p for p in os.listdir(out.parent) if p.startswith(f".{out.name}.")]
    for result in (floatzip.check(packed), floatzip.verify(packed.parent / "model", packed)):
        assert not result.ok
        for word in words:
            assert any(word in p for p in result.problems), (word, result.problems)


# -- the directory against its manifest ------------------------------------------

def test_a_missing_shard_is_an_error_everywhere(dirs, tmp_path):
    _, packed = dirs
    (packed / SHARD_2).unlink()
    assert_refused(packed, tmp_path / "out", f"{packed / SHARD_2}: listed in floatzip.json "
                                             "but missing")


def test_a_renamed_shard_is_missing_and_unlisted(dirs, tmp_path):
    _, packed = dirs
    (packed / SHARD_2).rename(packed / "model-renamed.safetensors")
    assert_refused(packed, tmp_path / "out", f"{SHARD_2}: listed in floatzip.json but missing",
                   "model-renamed.safetensors: a floatzip file that floatzip.json does not list")


def test_an_extra_floatzip_file_is_an_error(dirs, tmp_path):
    _, packed = dirs
    shutil.copy(packed / SHARD_1, packed / "sub-extra.safetensors")
    assert_refused(packed, tmp_path / "out", "sub-extra.safetensors: a floatzip file that")


@pytest.mark.parametrize("rel", ["config.json", "tokenizer/vocab.txt", SHARD_1])
def test_a_truncated_file_is_an_error(dirs, tmp_path, rel):
    _, packed = dirs
    data = (packed / rel).read_bytes()
    (packed / rel).write_bytes(data[:-1])
    assert_refused(packed, tmp_path / "out", f"{packed / rel}: {len(data) - 1} bytes, but "
                                             f"floatzip.json lists {len(data)}")


def test_a_changed_copied_file_is_an_error(dirs, tmp_path):
    """Same size, one byte changed: only the manifest's XXH3-64 can tell."""
    _, packed = dirs
    (packed / "config.json").write_text('{"architectures": ["Y"]}')
    assert_refused(packed, tmp_path / "out", f"{packed / 'config.json'}: its XXH3-64 is",
                   "changed since the directory was compressed")


def test_the_manifest_lists_every_file(dirs):
    import xxhash
    src, packed = dirs
    doc = json.loads((packed / "floatzip.json").read_text())
    assert sorted(doc["files"]) == [SHARD_1, SHARD_2]
    assert doc["files"][SHARD_1]["compressed_bytes"] == (packed / SHARD_1).stat().st_size
    assert doc["copied"] == {
        rel: {"bytes": (src / rel).stat().st_size,
              "xxh3": xxhash.xxh3_64((src / rel).read_bytes()).hexdigest()}
        for rel in ("config.json", "model.safetensors.index.json", "tokenizer/vocab.txt")}


def test_a_manifest_without_copied_files_still_works(dirs, tmp_path):
    """Manifests written before "copied" existed list only the compressed
    files: the other files are copied unchecked, an unlisted floatzip file
    is still an error."""
    src, packed = dirs
    doc = json.loads((packed / "floatzip.json").read_text())
    del doc["copied"]
    (packed / "floatzip.json").write_text(json.dumps(doc))
    (packed / "config.json").write_text('{"architectures": ["Y"]}')      # cannot be told
    floatzip.decompress(packed, tmp_path / "out")
    expected = tree_bytes(src)
    expected[Path("config.json")] = b'{"architectures": ["Y"]}'
    assert tree_bytes(tmp_path / "out") == expected
    assert floatzip.check(packed).ok
    shutil.copy(packed / SHARD_1, packed / "extra.safetensors")
    assert_refused(packed, tmp_path / "out2", "extra.safetensors: a floatzip file that")


def test_an_added_plain_file_is_copied(dirs, tmp_path):
    """A file compress did not write (a README a model hub adds) is no damage:
    decompress copies it; verify says the directories differ, as they do."""
    src, packed = dirs
    (packed / "README.md").write_text("hello")
    floatzip.decompress(packed, tmp_path / "out")
    assert (tmp_path / "out" / "README.md").read_text() == "hello"
    assert floatzip.check(packed).ok
    result = floatzip.verify(src, packed)
    assert not result.ok and "README.md: has no counterpart" in result.problems[0]


@pytest.mark.parametrize("content", ["[]", "{", '{"files": {"x": 3}}',
                                     '{"files": {}, "copied": {"a": {"bytes": 1}}}',
                                     ('{"files": {"a": {}}, "copied": {"a": {"bytes": 1, '
                                      '"xxh3": "0000000000000000"}}}')])
def test_a_damaged_manifest_is_an_error(dirs, tmp_path, content):
    src, packed = dirs
    (packed / "floatzip.json").write_text(content)
    with pytest.raises(floatzip.CorruptDataError, match="not a floatzip manifest"):
        floatzip.decompress(packed, tmp_path / "out")
    for result in (floatzip.check(packed), floatzip.verify(src, packed)):
        assert not result.ok and "not a floatzip manifest" in result.problems[0]


@pytest.mark.parametrize("edit", ["rename-size", "rename-top", "format", "extra-field"])
def test_a_damaged_manifest_key_turns_no_check_off(dirs, tmp_path, edit):
    # A flipped key name used to drop the check it named, quietly.
    src, packed = dirs
    doc = json.loads((packed / "floatzip.json").read_text())
    entry = doc["files"][SHARD_2]
    if edit == "rename-size":
        entry["comqressed_bytes"] = entry.pop("compressed_bytes")
    elif edit == "rename-top":
        doc["copies"] = doc.pop("copied")
    elif edit == "format":
        doc["format"] = "gloatzip"
    else:
        entry["note"] = 1
    (packed / "floatzip.json").write_text(json.dumps(doc))
    with pytest.raises(floatzip.CorruptDataError, match="not a floatzip manifest"):
        floatzip.decompress(packed, tmp_path / "out")
    for result in (floatzip.check(packed), floatzip.verify(src, packed)):
        assert not result.ok and "not a floatzip manifest" in result.problems[0]


def test_a_wrong_restored_size_is_an_error_everywhere(dirs, tmp_path):
    # decompress refused it; check and verify said OK.
    _, packed = dirs
    doc = json.loads((packed / "floatzip.json").read_text())
    doc["files"][SHARD_2]["original_bytes"] += 1
    (packed / "floatzip.json").write_text(json.dumps(doc))
    assert_refused(packed, tmp_path / "out", f"{packed / SHARD_2}: restores")


def test_manifest_entries_may_not_lead_out(dirs, tmp_path):
    _, packed = dirs
    doc = json.loads((packed / "floatzip.json").read_text())
    doc["copied"]["../model/config.json"] = doc["copied"]["config.json"]
    doc["copied"]["a\0b"] = doc["copied"]["config.json"]
    (packed / "floatzip.json").write_text(json.dumps(doc))
    assert_refused(packed, tmp_path / "out", "entry '../model/config.json' points outside",
                   "entry 'a\\x00b' points outside")


def test_verify_agrees_with_decompress(dirs, tmp_path):
    """Without its manifest a compressed directory cannot be decompressed:
    verify must not call it a faithful copy; a path that is not there is no
    mismatch but an error, as for decompress."""
    src, packed = dirs
    assert floatzip.verify(src, packed).ok
    restored = tmp_path / "restored"
    floatzip.decompress(packed, restored)
    assert floatzip.verify(src, restored).ok              # a plain copy: compared byte for byte
    (packed / "floatzip.json").unlink()
    with pytest.raises(floatzip.FormatError, match="not a floatzip model directory"):
        floatzip.decompress(packed, tmp_path / "out")
    result = floatzip.verify(src, packed)
    assert not result.ok
    assert any(f"{packed / SHARD_1}: differs from" in p and "no floatzip.json" in p
               for p in result.problems)
    nope = tmp_path / "nope"
    for args in ((src, nope), (nope, packed), (src / SHARD_1, nope)):
        with pytest.raises(FileNotFoundError) as info:
            floatzip.verify(*args)
        assert info.value.filename == str(nope)


def test_verify_finds_what_differs_from_the_original(dirs, tmp_path):
    src, packed = dirs
    (src / "config.json").write_text('{"architectures": ["Z"]}')
    (src / "tokenizer" / "merges.txt").write_text("a b\n")
    result = floatzip.verify(src, packed)
    assert not result.ok
    assert any("config.json: differs from" in p for p in result.problems)
    assert any("merges.txt: missing, while" in p for p in result.problems)


# -- dtypes --------------------------------------------------------------------------

# Every dtype safetensors 0.8 knows that floatzip does not entropy-code.
RAW_DTYPES = [("F4", [4, 6], 12), ("F6_E2M3", [4, 2], 6), ("F6_E3M2", [8], 6),
              ("F8_E4M3FNUZ", [5], 5), ("F8_E5M2FNUZ", [5], 5), ("F8_E8M0", [3], 3),
              ("C64", [2], 16), ("U16", [3], 6), ("U32", [2], 8), ("U64", [1], 8),
              ("F64", [2], 16), ("BOOL", [3], 3), ("I16", [2], 4)]


def raw_dtype_file(path, rng):
    w = (rng.standard_normal(4096) * 0.02).astype(np.float32)
    tensors = [(f"t.{dtype}", dtype, shape, rng.integers(0, 256, nbytes, dtype=np.uint8))
               for dtype, shape, nbytes in RAW_DTYPES]
    return write_safetensors(path, tensors + [("w", "BF16", [4096], bf16_bits(w))])


def test_uncoded_dtypes_are_stored_raw_and_restored(tmp_path, rng):
    import safetensors
    src = raw_dtype_file(tmp_path / "odd.safetensors", rng)
    with safetensors.safe_open(src, "numpy") as f:                # a valid file to safetensors
        assert len(f.keys()) == len(RAW_DTYPES) + 1
    packed, restored = tmp_path / "odd.fz.safetensors", tmp_path / "restored.safetensors"
    floatzip.compress(src, packed)
    with floatzip.safe_open(packed) as f:
        codecs = {name: t.params["codec"] for name, t in f._file.tensors.items()}
    assert codecs.pop("w") == "tans"
    assert set(codecs.values()) == {"raw"}
    floatzip.decompress(packed, restored)
    assert restored.read_bytes() == src.read_bytes()
    assert floatzip.check(packed).ok and floatzip.verify(src, packed).ok
    assert main(["info", str(packed)]) == 0


@pytest.mark.parametrize("dtype,shape,nbytes", [
    ("F4", [2], 1), ("F4", [3], 1), ("F4", [3], 2), ("F4", [], 1), ("F4", [0], 0),
    ("F4", [4, 3], 6), ("F6_E2M3", [4], 3), ("F6_E3M2", [2], 2), ("F6_E3M2", [2], 1),
    ("F6_E3M2", [8], 6), ("F8_E4M3FNUZ", [2], 2), ("C64", [1], 8), ("C64", [1], 4),
    ("F8_E8M0", [], 1)])
def test_tensor_sizes_are_safetensors_own(tmp_path, dtype, shape, nbytes):
    """A header floatzip accepts is one safetensors accepts, and the other way
    round: sub-byte elements are packed, count * bits / 8 bytes, and a
    tensor that does not fill whole bytes is refused."""
    import safetensors
    raw = json.dumps({"t": {"dtype": dtype, "shape": shape,
                            "data_offsets": [0, nbytes]}}).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(nbytes))
    try:
        with safetensors.safe_open(path, "numpy") as f:
            f.keys()
        theirs = True
    except safetensors.SafetensorError:
        theirs = False
    try:
        parse_header_bytes(raw, str(path))
        ours = True
    except floatzip.FormatError as exc:
        assert str(path) in str(exc) and "'t'" in str(exc)
        ours = False
    assert ours == theirs


def test_a_dtype_nobody_knows_is_refused_for_its_file_only(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    header = b'{"w":{"dtype":"F3","shape":[4],"data_offsets":[0,2]}}'
    (src / "future.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                             + b"\x12\x34")
    raw_dtype_file(src / "odd.safetensors", rng)
    with pytest.raises(floatzip.UnsupportedError,
                       match=r"future.safetensors: tensor 'w': unknown dtype 'F3'"):
        floatzip.compress(src / "future.safetensors", tmp_path / "f.fz")
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    summary = floatzip.compress(src, packed)
    assert list(summary["uncoded"]) == ["future.safetensors"]
    assert "unknown dtype 'F3'" in summary["uncoded"]["future.safetensors"]
    assert (packed / "future.safetensors").read_bytes() == \
        (src / "future.safetensors").read_bytes()
    assert sorted(summary["files"]) == [SHARD_1, SHARD_2, "odd.safetensors"]
    floatzip.decompress(packed, restored)
    assert tree_bytes(restored) == tree_bytes(src)
    assert floatzip.check(packed).ok and floatzip.verify(src, packed).ok


# -- version control, summaries, progress ------------------------------------------------

def test_version_control_folders_are_left_out(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    for vcs in (".git", ".hg", ".svn", "tokenizer/.git"):
        (src / vcs / "objects").mkdir(parents=True)
        (src / vcs / "objects" / "blob").write_bytes(os.urandom(1000))
    (src / "sub").mkdir()
    (src / "sub" / ".git").write_text("gitdir: ../.git/modules/sub\n")   # a submodule's
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n")    # content: kept
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    summary = floatzip.compress(src, packed)
    assert sorted(summary["skipped"]) == [".git", ".hg", ".svn", "sub/.git", "tokenizer/.git"]
    assert (packed / ".gitattributes").exists()
    assert not [p for p in packed.rglob("*") if p.name in (".git", ".hg", ".svn")]
    # A compressed directory put under version control decompresses, without it.
    (packed / ".git").mkdir()
    (packed / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    floatzip.decompress(packed, restored)
    assert not (restored / ".git").exists()
    assert floatzip.check(packed).ok and floatzip.verify(src, packed).ok
    assert floatzip.verify(src, restored).ok


def test_directory_summaries_count_every_byte(tmp_path, rng):
    """A copied pickle the size of the weights makes the output larger than
    the coded part alone says: the totals count every file."""
    src = make_model_dir(tmp_path / "model", rng)
    (src / "pytorch_model.bin").write_bytes(os.urandom(50_000))
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    s = floatzip.compress(src, packed)
    assert s["original_bytes"] == tree_size(src)
    assert s["compressed_bytes"] == tree_size(packed)
    assert s["coded_files"] == 2 and s["copied_files"] == 4
    assert s["coded_original_bytes"] == sum((src / r).stat().st_size for r in (SHARD_1, SHARD_2))
    assert s["coded_compressed_bytes"] == sum((packed / r).stat().st_size
                                              for r in (SHARD_1, SHARD_2))
    assert s["copied_bytes"] == tree_size(src) - s["coded_original_bytes"]
    d = floatzip.decompress(packed, restored)
    assert d["original_bytes"] == tree_size(restored) == tree_size(src)
    assert d["compressed_bytes"] == tree_size(packed)
    assert (d["coded_files"], d["copied_files"], d["copied_bytes"]) == \
        (2, 4, s["copied_bytes"])


class Bars:
    """Every Progress made during a job, and what moved the enabled ones."""

    def __init__(self, monkeypatch):
        self.made, self.moved, self.files = [], {}, {}
        bars = self
        init, advance, file_done = Progress.__init__, Progress.advance, Progress.file_done

        def record_init(self, total, desc, enabled, files=None, **kw):
            init(self, total, desc, enabled, files, **kw)
            bars.made.append((self, total, enabled, files))

        def record_advance(self, nbytes):
            bars.moved[id(self)] = bars.moved.get(id(self), 0) + nbytes
            advance(self, nbytes)

        def record_file_done(self):
            bars.files[id(self)] = bars.files.get(id(self), 0) + 1
            file_done(self)

        monkeypatch.setattr(Progress, "__init__", record_init)
        monkeypatch.setattr(Progress, "advance", record_advance)
        monkeypatch.setattr(Progress, "file_done", record_file_done)

    def one_bar(self, total, files):
        """Exactly one bar was shown; it counted ``total`` bytes and ``files``
        files, and reached its end."""
        shown = [(bar, t, n) for bar, t, enabled, n in self.made if enabled]
        assert len(shown) == 1, shown
        bar, t, n = shown[0]
        assert (t, n) == (total, files)
        assert self.moved.get(id(bar)) == total
        assert self.files.get(id(bar)) == files
        self.made.clear()
        self.moved.clear()
        self.files.clear()


def test_one_progress_bar_per_directory_job(tmp_path, rng, monkeypatch):
    src = make_model_dir(tmp_path / "model", rng)
    (src / "pytorch_model.bin").write_bytes(os.urandom(30_000))
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    bars = Bars(monkeypatch)
    floatzip.compress(src, packed, progress=True)
    bars.one_bar(tree_size(src), 6)
    floatzip.decompress(packed, restored, progress=True)
    manifest = (packed / "floatzip.json").stat().st_size
    bars.one_bar(tree_size(packed) - manifest, 6)
    assert floatzip.check(packed, progress=True).ok
    bars.one_bar(tree_size(packed) - manifest, 6)
    assert floatzip.verify(src, packed, progress=True).ok
    bars.one_bar(tree_size(packed) - manifest, 6)
    assert floatzip.verify(src, restored, progress=True).ok
    bars.one_bar(tree_size(restored), 6)


def test_a_failed_job_leaves_nothing_and_names_the_output(tmp_path, rng, monkeypatch):
    src = make_model_dir(tmp_path / "model", rng)
    packed = tmp_path / "packed"

    def full_disk(src_path, dst_path, *, progress, fsync=True):
        raise OSError(28, "No space left on device", dst_path)
    monkeypatch.setattr(directory, "_copy_file", full_disk, raising=False)
    with pytest.raises(OSError) as info:
        floatzip.compress(src, packed)
    assert info.value.filename == str(packed / "config.json")
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("kind", ["fifo", "broken link"])
def test_odd_files_in_a_directory_are_named_not_waited_on(tmp_path, rng, kind):
    # A FIFO made compress wait forever; a broken link read "no such file".
    src = make_model_dir(tmp_path / "model", rng)
    odd = src / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to(tmp_path / "gone")
    words = "not a regular file" if kind == "fifo" else "broken symbolic link"
    with pytest.raises(floatzip.FormatError, match=f"{odd}: .*{words}"):
        floatzip.compress(src, tmp_path / "packed")
    assert not (tmp_path / "packed").exists()
