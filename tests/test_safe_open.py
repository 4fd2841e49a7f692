"""floatzip.safe_open against safetensors.safe_open on the same tensors:
names, metadata, whole tensors and slices, for torch and NumPy."""
import numpy as np
import pytest
import safetensors
import torch
from conftest import bf16_bits, write_safetensors

import floatzip
from floatzip import reader
from floatzip.codecs.layout import pad8

# Index expressions tried on every tensor; each is checked against
# safetensors' own slice of the original file.
INDICES = [
    np.s_[:], np.s_[1:3], np.s_[5:6], np.s_[-3:], np.s_[40:], np.s_[3:1], np.s_[7],
    np.s_[-1], np.s_[2:9, 3:7], np.s_[:, 5:6], np.s_[4, 10:20], np.s_[..., 1:2],
    np.s_[10:30, ...],
]


@pytest.fixture
def files(tmp_path, rng):
    """An original with tensors of several dtypes, coded with 16-symbol lanes
    so that a 48x100 tensor spans 10 groups (of 512 values) and a slice can
    take few of them."""
    w = (rng.standard_normal((48, 100)) * 0.02).astype(np.float32)
    original = write_safetensors(tmp_path / "m.safetensors", [
        ("z.bf16", "BF16", [48, 100], bf16_bits(w)),
        ("a.f16", "F16", [48, 100], w.astype(np.float16)),
        ("m.f32", "F32", [48, 100], w),
        ("ids", "I64", [48, 2], np.arange(96, dtype="<i8")),
        ("empty", "BF16", [0, 4], np.zeros(0, np.uint16)),
        ("scalar", "F32", [], np.array([1.5], np.float32)),
    ], {"format": "pt"})
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(original, packed, lane_symbols=16)
    return original, packed


@pytest.mark.parametrize("framework", ["pt", "np"])
def test_slices_and_tensors_match_safetensors(files, framework):
    original, packed = files
    equal = torch.equal if framework == "pt" else np.array_equal
    with safetensors.safe_open(original, framework=framework) as ref, \
            floatzip.safe_open(packed, framework=framework) as f:
        assert f.keys() == ref.keys()
        assert f.offset_keys() == ref.offset_keys()
        assert f.metadata() == ref.metadata()
        names = [n for n in ref.keys() if framework == "pt" or "bf16" not in n
                 and n != "empty"]
        for name in names:
            want = ref.get_tensor(name)
            got = f.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert equal(got, want), name
            piece, ref_piece = f.get_slice(name), ref.get_slice(name)
            assert piece.get_shape() == ref_piece.get_shape()
            assert piece.get_dtype() == ref_piece.get_dtype()
            if not want.shape or not want.shape[0]:
                assert equal(piece[...], ref_piece[...]), name
                continue
            for index in INDICES:
                if len(want.shape) == 1 and isinstance(index, tuple) and len(index) > 1 \
                        and index[0] is not Ellipsis:
                    continue
                # Indexing the whole tensor is the oracle: safetensors' own
                # slices refuse negative indices.
                assert equal(piece[index], want[index]), (name, index)
            assert equal(piece[1:3, :2], ref_piece[1:3, :2])
        if framework == "pt":
            assert set(f.get_tensors()) == set(ref.keys())


def test_row_slices_decode_only_their_groups(files, monkeypatch):
    _, packed = files
    ranges = []
    real = reader.decode_group_range

    def recording(enc, g0, g1, **kw):
        ranges.append((g0, g1))
        return real(enc, g0, g1, **kw)

    monkeypatch.setattr(reader, "decode_group_range", recording)
    with floatzip.safe_open(packed, framework="pt") as f:
        piece = f.get_slice("z.bf16")
        piece[10:12]                       # values 1000..1199: groups 1 and 2
        assert ranges == [(1, 3)]
        piece[:]                           # every row: the whole tensor, checksum verified
        assert ranges == [(1, 3)]


def test_slices_still_catch_damage_in_their_groups(files):
    _, packed = files
    data = bytearray(packed.read_bytes())
    fz = floatzip.safe_open(packed)._file
    enc = fz.encoded("z.bf16")
    payload_at = fz.tensors["z.bf16"].blob_begin + pad8(2 * enc.counts.size) \
        + pad8(2 * enc.lane_sizes.size)
    # The last byte of lane 0's stream holds its final bits: damage it.
    data[payload_at + int(enc.lane_sizes[0]) - 1] ^= 0xFF
    del fz, enc                            # the memory map, before the file is rewritten
    packed.write_bytes(bytes(data))
    with floatzip.safe_open(packed, framework="pt") as f:
        piece = f.get_slice("z.bf16")
        assert piece[20:30].shape == (10, 100)        # groups far from lane 0
        with pytest.raises(floatzip.CorruptDataError, match="z.bf16"):
            piece[0:2]


def test_framework_names(files):
    _, packed = files
    with floatzip.safe_open(packed, framework="pytorch") as f:
        assert isinstance(f.get_tensor("ids"), torch.Tensor)
    with floatzip.safe_open(packed, framework="numpy") as f:
        assert isinstance(f.get_tensor("ids"), np.ndarray)
    with pytest.raises(ValueError, match="'flax'"):
        floatzip.safe_open(packed, framework="flax")


def test_plain_files_open_through_safetensors(files):
    """One call reads compressed and plain files alike (a directory may hold both)."""
    original, _ = files
    with floatzip.safe_open(original, framework="pt") as f, \
            safetensors.safe_open(original, framework="pt") as ref:
        assert f.keys() == ref.keys() and f.metadata() == ref.metadata()
        for name in ref.keys():
            assert torch.equal(f.get_tensor(name), ref.get_tensor(name))
        assert torch.equal(f.get_slice("z.bf16")[3:5], ref.get_slice("z.bf16")[3:5])
