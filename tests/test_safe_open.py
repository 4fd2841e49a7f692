"""floatzip.safe_open against safetensors.safe_open on the same tensors, the
original file read by safetensors and the compressed one by floatzip, side by
side: names, metadata, whole tensors and slices (values, and which indices are
errors), errors, closing, for torch and NumPy; and checksums on partial reads."""
import os

import numpy as np
import pytest
import safetensors
import torch
from conftest import bf16_bits, write_safetensors

import floatzip
from floatzip import decode, reader
from floatzip.codecs.layout import pad8
from floatzip.errors import DecoderArgumentError, SliceError, TensorNotFoundError

# Index expressions tried on every tensor, each against safetensors' own slice
# of the original file: the same values, or an error of the same kind.
INDICES = [
    np.s_[:], np.s_[1:3], np.s_[5:6], np.s_[40:], np.s_[7], np.s_[-1], np.s_[2:9, 3:7],
    np.s_[:, 5:6], np.s_[4, 10:20], np.s_[..., 1:2], np.s_[10:30, ...], np.s_[()],
    np.s_[...], np.s_[0:0], np.s_[47:48], np.s_[:48], np.s_[::2], np.s_[1:10:3],
    np.s_[:, -1], np.s_[2, 3], np.s_[-1, -1], np.s_[np.int64(3)], np.s_[np.array(3)],
    # out of range: safetensors' np reader refuses these, its pt reader (torch) clips
    np.s_[100:200], np.s_[2:100000], np.s_[48:], np.s_[48:48], np.s_[:49], np.s_[10**9],
    np.s_[48], np.s_[-49], np.s_[-48], np.s_[1:3, 200], np.s_[1:3, 100:200], np.s_[..., 200],
    np.s_[:, 100:], np.s_[0, 0, 0], np.s_[2**70],
    # bools: an int to safetensors' np reader, a new axis to torch
    np.s_[True], np.s_[False], np.s_[True, 1],
    # what only torch takes
    np.s_[None], np.s_[1, None], np.s_[[1, 2]], np.s_[np.True_], np.s_[..., ...],
    np.s_[::-1], np.s_[::0], np.s_[1.0],
]
# safetensors' np reader crashes on these (OverflowError on a negative slice
# bound, SystemError on a stop before the start); floatzip counts negative
# bounds from the end and gives nothing for a stop before the start, as
# NumPy, within the shape (None), else a SliceError.
NP_CRASHES = [
    (np.s_[-3:], None), (np.s_[-3:-1], None), (np.s_[5:-1], None), (np.s_[-48:], None),
    (np.s_[3:1], None), (np.s_[5:3], None), (np.s_[-100:2], SliceError),
    (np.s_[10:-100], SliceError),
]
ERRORS = (safetensors.SafetensorError, IndexError, ValueError)


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
        # (two empty tensors not side by side: safetensors lists tensors that
        # share an offset in an order that changes from run to run)
        ("empty.f32", "F32", [0, 4], np.zeros(0, np.float32)),
        ("vec", "F32", [5], w[0, :5]),
        ("empty", "BF16", [0, 4], np.zeros(0, np.uint16)),
        ("scalar", "F32", [], np.array([1.5], np.float32)),
    ], {"format": "pt"})
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(original, packed, lane_symbols=16)
    return original, packed


def readable(name, framework):
    """NumPy has no bfloat16: safetensors and floatzip both refuse those."""
    return framework == "pt" or "bf16" not in name and name != "empty"


def assert_same(got, want, what):
    assert type(got) is type(want), what
    assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape), what
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), what
    else:
        assert np.array_equal(got, want), what
        assert got.flags.writeable == want.flags.writeable, what


def assert_same_outcome(piece, ref_piece, index, name):
    """floatzip's slice gives what safetensors' gives: equal values, or an
    error that is an instance of the type safetensors raised and names the
    tensor."""
    try:
        want = ref_piece[index]
    except ERRORS as exc:
        with pytest.raises(type(exc)) as info:
            piece[index]
        assert isinstance(info.value, floatzip.FloatzipError), (name, index)
        assert repr(name) in str(info.value) and "m.fz.safetensors" in str(info.value)
        return
    assert_same(piece[index], want, (name, index))


@pytest.mark.parametrize("framework", ["pt", "np"])
def test_slices_and_tensors_match_safetensors(files, framework):
    original, packed = files
    with safetensors.safe_open(original, framework=framework) as ref, \
            floatzip.safe_open(packed, framework=framework) as f:
        assert f.keys() == ref.keys()
        assert f.offset_keys() == ref.offset_keys()
        assert f.metadata() == ref.metadata()
        for name in [n for n in ref.keys() if readable(n, framework)]:
            want = ref.get_tensor(name)
            assert_same(f.get_tensor(name), want, name)
            piece, ref_piece = f.get_slice(name), ref.get_slice(name)
            assert piece.get_shape() == ref_piece.get_shape()
            assert piece.get_dtype() == ref_piece.get_dtype()
            for index in INDICES:
                assert_same_outcome(piece, ref_piece, index, name)
            for index, outcome in NP_CRASHES:
                if framework == "pt":
                    assert_same_outcome(piece, ref_piece, index, name)
                elif want.shape[:1] == (48,):
                    with pytest.raises((OverflowError, SystemError)):
                        ref_piece[index]    # if this fails, safetensors was fixed: compare
                    if outcome is None:
                        assert_same(piece[index], want[index], (name, index))
                    else:
                        with pytest.raises(outcome, match=repr(name)):
                            piece[index]
        if framework == "pt":
            got, expected = f.get_tensors(), ref.get_tensors()
            assert list(got) == list(expected)
            for name in expected:
                assert_same(got[name], expected[name], name)


@pytest.mark.parametrize("framework", ["pt", "np"])
def test_missing_tensor_is_a_safetensor_error(files, framework):
    original, packed = files
    with safetensors.safe_open(original, framework=framework) as ref, \
            floatzip.safe_open(packed, framework=framework) as f:
        for method in ("get_tensor", "get_slice"):
            with pytest.raises(safetensors.SafetensorError):
                getattr(ref, method)("nope")
            with pytest.raises(safetensors.SafetensorError,
                               match=r"m\.fz\.safetensors: no tensor named 'nope'; keys\(\)"):
                getattr(f, method)("nope")
        for method in ("get_bytes", "get_encoded"):
            with pytest.raises(TensorNotFoundError, match="no tensor named 'nope'"):
                getattr(f, method)("nope")
        with pytest.raises(KeyError):       # what floatzip raised before, still caught
            f.get_tensor("nope")


def test_numpy_arrays_are_writable(files):
    """safetensors' NumPy arrays can be written to; a tensor floatzip stores
    raw (ids) was a view of the read-only memory map."""
    original, packed = files
    with safetensors.safe_open(original, framework="np") as ref, \
            floatzip.safe_open(packed, framework="np") as f:
        for name in ("ids", "m.f32", "vec", "scalar"):
            want = ref.get_tensor(name)
            assert want.flags.writeable
            got = f.get_tensor(name)
            assert_same(got, want, name)
            got[...] = 0                            # a copy: the file is unchanged
            assert_same(f.get_tensor(name), want, name)
        for name, index in (("ids", np.s_[1:3]), ("ids", np.s_[4]), ("m.f32", np.s_[1:3]),
                            ("m.f32", np.s_[2, 3]), ("ids", np.s_[:])):
            want = ref.get_slice(name)[index]
            assert want.flags.writeable
            assert_same(f.get_slice(name)[index], want, (name, index))
        assert f.get_bytes("ids").flags.writeable


@pytest.fixture(params=["pt", "np"])
def m_f32_slices(files, request):
    """(floatzip's slice, safetensors' slice, framework) of one F32 48x100 tensor."""
    original, packed = files
    with safetensors.safe_open(original, framework=request.param) as ref, \
            floatzip.safe_open(packed, framework=request.param) as f:
        yield f.get_slice("m.f32"), ref.get_slice("m.f32"), request.param


def test_slices_past_the_end_as_safetensors(m_f32_slices):
    """safetensors' np reader refuses slices past the end of an axis; its pt
    reader clips them, as torch does (issue 12, item 11)."""
    piece, ref_piece, framework = m_f32_slices
    for index in (np.s_[100:200], np.s_[2:100000], np.s_[40:60], np.s_[:, 90:120]):
        if framework == "np":
            with pytest.raises(safetensors.SafetensorError):
                ref_piece[index]
            with pytest.raises(safetensors.SafetensorError,
                               match=r"m\.fz\.safetensors: tensor 'm.f32' of shape \[48, 100\]"):
                piece[index]
        else:
            assert_same(piece[index], ref_piece[index], index)
    if framework == "pt":
        assert piece[100:200].shape == (0, 100) and piece[2:100000].shape == (46, 100)


def test_int_index_out_of_range_as_safetensors(m_f32_slices):
    """An error of safetensors' type (SafetensorError for np, IndexError for
    pt), which names the file, the tensor and the index."""
    piece, ref_piece, framework = m_f32_slices
    kind = safetensors.SafetensorError if framework == "np" else IndexError
    for index in (np.s_[10**9], np.s_[48], np.s_[-49], np.s_[3, 100]):
        with pytest.raises(kind):
            ref_piece[index]
        with pytest.raises(kind, match=r"m\.fz\.safetensors: tensor 'm.f32' .*index \["):
            piece[index]
    with pytest.raises(kind, match="1000000000 is out of bounds for dimension 0 of size 48"):
        piece[10**9]


def test_bool_index_as_safetensors(m_f32_slices):
    """safetensors' np reader takes a bool as an int (True: row 1); its pt
    reader as torch does (a new axis of one, or none)."""
    piece, ref_piece, framework = m_f32_slices
    for index in (np.s_[True], np.s_[False], np.s_[True, 1], np.s_[1:3, True]):
        assert_same(piece[index], ref_piece[index], index)
    assert piece[True].shape == ((100,) if framework == "np" else (1, 48, 100))


def test_dtypes_numpy_lacks_as_safetensors(files):
    """bfloat16 with framework='np': safetensors raises TypeError, for a
    whole tensor and a slice; floatzip too, before decoding anything."""
    original, packed = files
    with safetensors.safe_open(original, framework="np") as ref, \
            floatzip.safe_open(packed, framework="np") as f:
        for read in (lambda r: r.get_tensor("z.bf16"), lambda r: r.get_slice("z.bf16")[0:1],
                     lambda r: r.get_slice("empty")[()]):
            with pytest.raises(TypeError):
                read(ref)
            with pytest.raises(TypeError, match=r"m\.fz\.safetensors: tensor '(z\.bf16|empty)'"):
                read(f)
            with pytest.raises(floatzip.UnsupportedError, match="BF16"):
                read(f)
        assert f.get_slice("z.bf16").get_dtype() == ref.get_slice("z.bf16").get_dtype() == "BF16"
        assert f.get_bytes("z.bf16").nbytes == 48 * 100 * 2


@pytest.mark.parametrize("framework", ["pt", "np"])
def test_reader_refuses_use_after_its_with_block(files, framework):
    original, packed = files
    with safetensors.safe_open(original, framework=framework) as ref, \
            floatzip.safe_open(packed, framework=framework) as f:
        ref_piece, piece = ref.get_slice("m.f32"), f.get_slice("m.f32")
    for call in (lambda r: r.get_tensor("m.f32"), lambda r: r.get_slice("m.f32"),
                 lambda r: r.keys(), lambda r: r.offset_keys(), lambda r: r.metadata(),
                 lambda r: r.get_tensors()):
        with pytest.raises(safetensors.SafetensorError, match="(?i)file is closed"):
            call(ref)
        with pytest.raises(safetensors.SafetensorError,
                           match=r"m\.fz\.safetensors: file is closed"):
            call(f)
    for call in (lambda r: r.get_bytes("m.f32"), lambda r: r.get_encoded("m.f32")):
        with pytest.raises(floatzip.errors.ClosedFileError):
            call(f)
    # Slices taken inside the block stay usable, in both.
    assert ref_piece.get_shape() == piece.get_shape() == [48, 100]
    want = ref_piece[3:5]
    assert_same(piece[3:5], want, "after close")


def test_plain_files_open_through_safetensors(files):
    """One call reads compressed and plain files alike (a directory may hold both)."""
    original, _ = files
    with floatzip.safe_open(original, framework="pt") as f, \
            safetensors.safe_open(original, framework="pt") as ref:
        assert f.keys() == ref.keys() and f.metadata() == ref.metadata()
        for name in ref.keys():
            assert torch.equal(f.get_tensor(name), ref.get_tensor(name))
        assert torch.equal(f.get_slice("z.bf16")[3:5], ref.get_slice("z.bf16")[3:5])


def test_plain_files_refuse_decoding_options(files):
    """backend= and workers= pick floatzip's decoder; a plain file has nothing
    to decode, so they are refused, not ignored (safetensors too refuses a
    backend it does not know, as a SafetensorError)."""
    original, packed = files
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(original, framework="np", backend="numpy")
    for kwargs, named in (({"backend": "numpy"}, "backend='numpy'"),
                          ({"workers": 4}, "workers=4"),
                          ({"workers": None}, "workers=None"),
                          ({"backend": "numba", "workers": 0}, "backend='numba' and workers=0")):
        with pytest.raises(DecoderArgumentError, match=rf"m\.safetensors: .*{named}"):
            floatzip.safe_open(original, framework="np", **kwargs)
        with pytest.raises(safetensors.SafetensorError):
            floatzip.safe_open(original, framework="np", **kwargs)
    with floatzip.safe_open(original, framework="np", workers=1) as f:
        assert f.get_tensor("ids").shape == (48, 2)
    with floatzip.safe_open(packed, framework="np", backend="numpy", workers=2) as f:
        assert f.get_tensor("ids").shape == (48, 2)


def test_framework_names(files):
    _, packed = files
    with floatzip.safe_open(packed, framework="pytorch") as f:
        assert isinstance(f.get_tensor("ids"), torch.Tensor)
    with floatzip.safe_open(packed, framework="numpy") as f:
        assert isinstance(f.get_tensor("ids"), np.ndarray)
    with pytest.raises(ValueError, match="'flax'"):
        floatzip.safe_open(packed, framework="flax")


# -- checksums on partial reads ---------------------------------------------------

def record_decoding(monkeypatch):
    """Lists that record what the reader decodes: whole-tensor checks (by
    name) and group ranges."""
    checks, ranges = [], []
    real_check, real_range = reader.check_stored, decode.decode_group_range

    def check(fz, name, **kw):
        checks.append(name)
        return real_check(fz, name, **kw)

    def group_range(fz, name, g0, g1, **kw):
        ranges.append((g0, g1))
        return real_range(fz, name, g0, g1, **kw)

    monkeypatch.setattr(reader, "check_stored", check)
    monkeypatch.setattr(decode, "decode_group_range", group_range)
    return checks, ranges


def test_row_slices_decode_only_their_groups(files, monkeypatch):
    """After the tensor's one checksum check, a row slice decodes only the
    groups holding its rows."""
    _, packed = files
    checks, ranges = record_decoding(monkeypatch)
    with floatzip.safe_open(packed, framework="pt") as f:
        piece = f.get_slice("z.bf16")
        piece[10:12]                       # values 1000..1199: groups 1 and 2
        assert checks == ["z.bf16"] and ranges == [(1, 3)]
        piece[20:22]                       # values 2000..2199: groups 3 and 4, no new check
        f.get_slice("z.bf16")[0]           # values 0..99: group 0
        assert checks == ["z.bf16"] and ranges == [(1, 3), (3, 5), (0, 1)]
        piece[:]                           # every row: the whole tensor, checksum verified
        piece[3:1]                         # nothing to read, nothing decoded
        assert checks == ["z.bf16"] and ranges == [(1, 3), (3, 5), (0, 1)]
    with floatzip.safe_open(packed, framework="pt") as f:
        f.get_tensor("a.f16")              # read whole, so checked: slices need no check
        f.get_slice("a.f16")[40:41]
        f.get_slice("ids")[1:2]            # stored raw: checked once too
        f.get_slice("ids")[3:4]
        assert checks == ["z.bf16", "ids"] and ranges[3:] == [(7, 9)]


def damaged_copy(packed, name, section, at=0):
    """``packed`` with one bit flipped in byte ``at`` of a section (counts,
    lane_sizes, payload or raw) of tensor ``name``'s blob."""
    fz = floatzip.safe_open(packed)._file
    enc, begin = fz.encoded(name), fz.tensors[name].blob_begin
    if enc.geometry is None:
        offset = begin + at
    else:
        offset = begin + at
        for before in ("counts", "lane_sizes", "payload", "raw"):
            if before == section:
                break
            offset += pad8(getattr(enc, before).nbytes)
    del fz, enc                            # the memory map, before the file is rewritten
    data = bytearray(packed.read_bytes())
    data[offset] ^= 0x04
    packed.write_bytes(bytes(data))
    return packed


@pytest.mark.parametrize("name, framework", [
    ("m.f32", "pt"), ("m.f32", "np"), ("z.bf16", "pt"), ("ids", "pt"), ("ids", "np")])
def test_slices_of_a_damaged_raw_section_raise(files, framework, name):
    """A flipped bit among the bits stored as they are decodes cleanly into
    a wrong value: only the checksum catches it, so a partial read must
    check the whole tensor first (issue 12, item 4). ids is stored raw: its
    blob is all raw bits."""
    original, packed = files
    damaged_copy(packed, name, "raw")
    with floatzip.safe_open(packed, framework=framework) as f:
        piece = f.get_slice(name)
        for index in (np.s_[0:1], np.s_[0], np.s_[:2, :1]):
            with pytest.raises(floatzip.CorruptDataError,
                               match=rf"m\.fz\.safetensors: tensor '{name}': .*checksum"):
                piece[index]
        with pytest.raises(floatzip.CorruptDataError, match=name):
            f.get_tensor(name)
        # The other tensors are intact and read as the original's.
        other = "a.f16"
        with safetensors.safe_open(original, framework=framework) as ref:
            assert_same(f.get_slice(other)[3:5], ref.get_slice(other)[3:5], other)


def test_slices_of_a_damaged_lane_raise_far_from_it(files):
    """Damage to lane 0's stream: slices of rows in other groups raise too,
    since the tensor is checked whole before its first partial read."""
    _, packed = files
    fz = floatzip.safe_open(packed)._file
    enc = fz.encoded("z.bf16")
    payload_at = fz.tensors["z.bf16"].blob_begin + pad8(2 * enc.counts.size) \
        + pad8(2 * enc.lane_sizes.size)
    data = bytearray(packed.read_bytes())
    # The last byte of lane 0's stream holds its final bits: damage it.
    data[payload_at + int(enc.lane_sizes[0]) - 1] ^= 0xFF
    del fz, enc                            # the memory map, before the file is rewritten
    packed.write_bytes(bytes(data))
    with floatzip.safe_open(packed, framework="pt") as f:
        piece = f.get_slice("z.bf16")
        for index in (np.s_[20:30], np.s_[0:2], np.s_[47]):
            with pytest.raises(floatzip.CorruptDataError, match="z.bf16"):
                piece[index]
        assert f.get_slice("a.f16")[20:30].shape == (10, 100)


@pytest.mark.parametrize("key,changed", [("floatzip.version", "floatzip.versiom"),
                                         ("floatzip.source_header_xxh3",
                                          "floatzip.source_header_xxh2")])
def test_a_damaged_floatzip_key_is_no_plain_file(files, tmp_path, key, changed):
    # One flipped bit in the version key made safe_open take the file for a
    # plain safetensors file and return the coded blobs as uint8, with no
    # error; one in the header checksum's key turned that check off.
    _, packed = files
    data = open(packed, "rb").read()
    damaged = tmp_path / "damaged.fz.safetensors"
    damaged.write_bytes(data.replace(key.encode(), changed.encode(), 1))
    for framework in ("np", "pt"):
        with pytest.raises(floatzip.FormatError, match=str(damaged)):
            with floatzip.safe_open(damaged, framework=framework) as f:
                f.get_tensor(f.keys()[0])
    assert not floatzip.check(damaged).ok
    with pytest.raises(floatzip.FormatError):
        floatzip.decompress(damaged, tmp_path / "out")


def test_reading_after_a_change_of_directory(files, tmp_path, monkeypatch):
    # The reader opened its file by the path given, again at each read.
    _, packed = files
    monkeypatch.chdir(os.path.dirname(packed))
    with floatzip.safe_open(os.path.basename(packed), framework="np") as f:
        monkeypatch.chdir(tmp_path.parent)
        name = f.keys()[0]
        assert f.get_slice(name)[0:1].shape[0] == 1 and f.get_tensor(name) is not None
