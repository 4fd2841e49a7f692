"""fsync=False (CLI: --no-fsync): the same bytes, written without waiting
for the disk. Outputs are fsynced by default; without it neither os.fsync
nor the early writeback (sync_file_range) that only makes the final fsync
cheap is called, for file and directory jobs, through the API and the CLI.
Atomic naming, no-clobber and the cleanup of temporaries stay as they are."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import bf16_bits, write_safetensors

import floatzip
from floatzip import background_writer
from floatzip.cli import build_parser, main


def make_checkpoint(path, rng):
    # Large enough to be coded (so compress writes through the background
    # writer), with a tensor stored raw and one of an uncoded dtype.
    w = (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
    return write_safetensors(path, [
        ("a.weight", "BF16", [256, 256], bf16_bits(w)),
        ("a.bias", "F32", [256], w[0]),
        ("ids", "I64", [1, 8], np.arange(8, dtype="<i8")),
    ], {"format": "pt"})


def make_model_dir(root, rng):
    root.mkdir()
    make_checkpoint(root / "model-00001-of-00002.safetensors", rng)
    make_checkpoint(root / "model-00002-of-00002.safetensors", rng)
    (root / "config.json").write_text('{"architectures": ["X"]}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return root


class SyncCalls:
    """Counts the calls that push written bytes to the disk, and makes them."""

    def __init__(self, monkeypatch):
        self.fsync, self.other_syncs, self.writeback = 0, 0, 0
        real_fsync = os.fsync
        real_writeback = background_writer._sync_file_range

        def fsync(fd):
            self.fsync += 1
            real_fsync(fd)

        def other_sync(real):
            def call(*args):
                self.other_syncs += 1
                return real(*args)
            return call

        def writeback(*args):
            self.writeback += 1
            return 0 if real_writeback is None else real_writeback(*args)

        monkeypatch.setattr(os, "fsync", fsync)
        for name in ("fdatasync", "sync"):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, other_sync(getattr(os, name)))
        # Also where sync_file_range is missing (not Linux): the writer
        # calls whatever the module holds.
        monkeypatch.setattr(background_writer, "_sync_file_range", writeback)

    def none(self) -> bool:
        return self.fsync == self.other_syncs == self.writeback == 0

    def reset(self) -> None:
        self.fsync, self.other_syncs, self.writeback = 0, 0, 0


@pytest.fixture
def syncs(monkeypatch):
    return SyncCalls(monkeypatch)


def tree(root):
    """relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def cli_compress(src, dst, fsync):
    assert main(["compress", "-q", str(src), str(dst)] + ([] if fsync else ["--no-fsync"])) == 0


def cli_decompress(src, dst, fsync):
    assert main(["decompress", "-q", str(src), str(dst)] + ([] if fsync else ["--no-fsync"])) == 0


def api_compress(src, dst, fsync):
    floatzip.compress(src, dst, fsync=fsync)


def api_decompress(src, dst, fsync):
    floatzip.decompress(src, dst, fsync=fsync)


VIAS = {"api": (api_compress, api_decompress), "cli": (cli_compress, cli_decompress)}


# -- the same bytes ------------------------------------------------------------------

def test_a_file_is_the_same_with_and_without_fsync(tmp_path, rng):
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    floatzip.compress(src, tmp_path / "synced.fz")
    floatzip.compress(src, tmp_path / "unsynced.fz", fsync=False)
    assert (tmp_path / "synced.fz").read_bytes() == (tmp_path / "unsynced.fz").read_bytes()
    floatzip.decompress(tmp_path / "synced.fz", tmp_path / "synced.safetensors")
    floatzip.decompress(tmp_path / "synced.fz", tmp_path / "unsynced.safetensors", fsync=False)
    assert (tmp_path / "unsynced.safetensors").read_bytes() == src.read_bytes()
    assert (tmp_path / "synced.safetensors").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "unsynced.fz").st_mode == os.stat(tmp_path / "synced.fz").st_mode


def test_a_directory_is_the_same_with_and_without_fsync(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    floatzip.compress(src, tmp_path / "synced")
    floatzip.compress(src, tmp_path / "unsynced", fsync=False)
    assert tree(tmp_path / "unsynced") == tree(tmp_path / "synced")
    assert "floatzip.json" in tree(tmp_path / "unsynced")
    floatzip.decompress(tmp_path / "unsynced", tmp_path / "restored", fsync=False)
    assert tree(tmp_path / "restored") == tree(src)


# -- what is called ------------------------------------------------------------------

@pytest.mark.parametrize("via", sorted(VIAS))
def test_a_file_job_without_fsync_never_syncs(tmp_path, rng, syncs, via):
    compress, decompress = VIAS[via]
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    compress(src, tmp_path / "model.fz", fsync=False)
    assert syncs.none(), vars(syncs)
    decompress(tmp_path / "model.fz", tmp_path / "restored.safetensors", fsync=False)
    assert syncs.none(), vars(syncs)
    assert (tmp_path / "restored.safetensors").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("via", sorted(VIAS))
def test_a_directory_job_without_fsync_never_syncs(tmp_path, rng, syncs, via):
    compress, decompress = VIAS[via]
    src = make_model_dir(tmp_path / "model", rng)
    compress(src, tmp_path / "packed", fsync=False)
    assert syncs.none(), vars(syncs)
    decompress(tmp_path / "packed", tmp_path / "restored", fsync=False)
    assert syncs.none(), vars(syncs)
    assert tree(tmp_path / "restored") == tree(src)


@pytest.mark.parametrize("via", sorted(VIAS))
def test_a_file_job_fsyncs_by_default(tmp_path, rng, syncs, via):
    compress, decompress = VIAS[via]
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    compress(src, tmp_path / "model.fz", fsync=True)
    assert syncs.fsync >= 1 and syncs.writeback >= 1, vars(syncs)
    syncs.reset()
    decompress(tmp_path / "model.fz", tmp_path / "restored.safetensors", fsync=True)
    assert syncs.fsync >= 1 and syncs.writeback >= 1, vars(syncs)


@pytest.mark.parametrize("via", sorted(VIAS))
def test_a_directory_job_fsyncs_every_file_by_default(tmp_path, rng, syncs, via):
    compress, decompress = VIAS[via]
    src = make_model_dir(tmp_path / "model", rng)
    compress(src, tmp_path / "packed", fsync=True)
    # Two compressed shards, two copied files and the manifest.
    assert syncs.fsync >= 5 and syncs.writeback >= 2, vars(syncs)
    syncs.reset()
    decompress(tmp_path / "packed", tmp_path / "restored", fsync=True)
    assert syncs.fsync >= 4 and syncs.writeback >= 2, vars(syncs)


def test_fsync_is_the_default_after_a_job_without_it(tmp_path, rng, syncs):
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    floatzip.compress(src, tmp_path / "a.fz", fsync=False)
    floatzip.decompress(tmp_path / "a.fz", tmp_path / "a.safetensors", fsync=False)
    assert syncs.none()
    floatzip.compress(src, tmp_path / "b.fz")
    floatzip.decompress(tmp_path / "b.fz", tmp_path / "b.safetensors")
    assert syncs.fsync >= 2 and syncs.writeback >= 2, vars(syncs)


def test_the_file_functions_take_it_too(tmp_path, rng, syncs):
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    floatzip.compress_file(src, tmp_path / "model.fz", fsync=False)
    floatzip.decompress_file(tmp_path / "model.fz", tmp_path / "restored", fsync=False)
    assert syncs.none(), vars(syncs)
    assert (tmp_path / "restored").read_bytes() == src.read_bytes()


def test_the_cli_defaults_to_fsync_and_says_what_the_flag_trades():
    parser = build_parser()
    for command in ("compress", "decompress"):
        assert parser.parse_args([command, "a", "b"]).fsync is True
        assert parser.parse_args([command, "a", "b", "--no-fsync"]).fsync is False
    sub = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(sub.choices["decompress"].format_help().split())
    assert "--no-fsync" in text and "power failure" in text and "partial" in text


# -- what stays as it was -------------------------------------------------------------

def test_without_fsync_an_existing_output_is_still_kept(tmp_path, rng, syncs):
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    (tmp_path / "model.fz").write_bytes(b"keep me")
    with pytest.raises(floatzip.OutputExistsError):
        floatzip.compress(src, tmp_path / "model.fz", fsync=False)
    assert (tmp_path / "model.fz").read_bytes() == b"keep me"
    assert main(["compress", "-q", "--no-fsync", str(src), str(tmp_path / "model.fz")]) == 2
    assert (tmp_path / "model.fz").read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["model.fz", "model.safetensors"]
    assert syncs.none()


def test_without_fsync_a_failed_job_leaves_no_temporary(tmp_path, rng, monkeypatch):
    src = make_checkpoint(tmp_path / "model.safetensors", rng)
    floatzip.compress(src, tmp_path / "model.fz")

    def full_disk(*args, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(background_writer, "pwrite_all", full_disk)
    with pytest.raises(OSError) as info:
        floatzip.decompress(tmp_path / "model.fz", tmp_path / "restored", fsync=False)
    assert info.value.filename == str(tmp_path / "restored")
    assert sorted(os.listdir(tmp_path)) == ["model.fz", "model.safetensors"]


def test_without_fsync_a_directory_appears_only_whole(tmp_path, rng):
    src = make_model_dir(tmp_path / "model", rng)
    floatzip.compress(src, tmp_path / "packed", fsync=False)
    manifest = json.loads((tmp_path / "packed" / "floatzip.json").read_text())
    assert sorted(manifest["files"]) == ["model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model", "packed"]
