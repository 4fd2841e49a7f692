"""A codec is one module: a toy codec registered by this test (and nowhere
else) is read by every entry point that reads files, and a file that uses
a codec this floatzip lacks is refused as a newer one."""
import json

import numpy as np
import pytest
from conftest import write_safetensors

import floatzip
from floatzip.codecs import registry
from floatzip.codecs.base import Codec, Opened
from floatzip.format import container
from floatzip.format.safetensors_header import build_header, read_header


class XorCodec(Codec):
    """The tensor's bytes xor a one-byte key, in steps of at most 7 bytes
    (so that streamed decoding takes several steps even on tiny tensors)."""
    codec_id = "toy-xor"

    def parse(self, fields, dtype, shape, nbytes, blob_bytes, bad):
        if set(fields) != {"key"} or type(fields["key"]) is not int \
                or not 0 <= fields["key"] < 256:
            raise bad(f"codec toy-xor needs a 'key' byte, found {fields}")
        if blob_bytes != nbytes:
            raise bad(f"blob is {blob_bytes} bytes, the tensor needs {nbytes}")
        return (nbytes, fields["key"])

    def params(self, layout):
        return {"key": layout[1]}

    def open(self, layout, read, where):
        return Opened(layout, None)

    def decode_steps(self, opened, dtype, read, buffer, *, backend, workers, step_bytes):
        total, key = opened.layout
        for start in range(0, total, min(step_bytes, 7)):
            size = min(step_bytes, 7, total - start)
            piece = buffer(size)
            piece[...] = read(start, size) ^ np.uint8(key)
            yield piece


def write_xor_file(path, original, key=0x5A):
    """``original`` (a safetensors file) as a floatzip file whose every
    tensor is coded with the toy codec."""
    with open(original, "rb") as f:
        header = read_header(f, str(original))
        data = f.read()
    params, entries, blobs = {}, [], []
    for name, entry in header.tensors.items():
        blob = np.frombuffer(data[entry.begin:entry.end], np.uint8) ^ np.uint8(key)
        digest = f"{container.checksum(np.frombuffer(data[entry.begin:entry.end], np.uint8)):016x}"
        params[name] = {"codec": "toy-xor", "key": key, "xxh3": digest}
        entries.append((name, "U8", [blob.size], blob.size))
        blobs.append(blob.tobytes())
    text = build_header(container.floatzip_metadata(header.raw, params), entries)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


@pytest.fixture
def toy():
    codec = registry.register(XorCodec())
    yield codec
    registry.unregister(codec.codec_id)


@pytest.fixture
def files(tmp_path, rng):
    original = write_safetensors(tmp_path / "m.safetensors", [
        ("w", "F32", [6, 5], rng.standard_normal(30).astype(np.float32)),
        ("ids", "I64", [3], np.arange(3, dtype="<i8")),
        ("empty", "F16", [0], np.zeros(0, np.float16))])
    packed = tmp_path / "m.fz.safetensors"
    write_xor_file(packed, original)
    return original, packed


def test_a_registered_codec_is_read_everywhere(toy, files, tmp_path):
    original, packed = files
    restored = tmp_path / "restored.safetensors"
    floatzip.decompress(packed, restored)
    assert restored.read_bytes() == original.read_bytes()
    assert floatzip.check(packed).ok and floatzip.verify(original, packed).ok
    with floatzip.safe_open(packed, framework="np") as f, \
            floatzip.safe_open(original, framework="np") as g:
        for name in g.keys():
            assert np.array_equal(f.get_tensor(name), g.get_tensor(name))
        assert np.array_equal(f.get_slice("w")[2:4], g.get_slice("w")[2:4])
    info = json.loads(container.FloatzipFile(packed).header.metadata["floatzip.tensors"])
    assert info["w"] == {"codec": "toy-xor", "key": 0x5A, "xxh3": info["w"]["xxh3"]}


def test_a_registered_codec_gets_the_same_checks(toy, files, tmp_path):
    # Its own checks (a bad key) and the shared ones (the checksum).
    _, packed = files
    data = packed.read_bytes()
    bad_key = tmp_path / "bad-key.fz.safetensors"
    bad_key.write_bytes(data.replace(b'\\"key\\":90', b'\\"key\\":-9', 1))    # same length
    with pytest.raises(floatzip.FormatError, match="toy-xor needs a 'key' byte"):
        container.FloatzipFile(bad_key)
    assert not floatzip.check(bad_key).ok
    flipped = tmp_path / "flipped.fz.safetensors"
    flipped.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    result = floatzip.check(flipped)
    assert not result.ok and "checksum" in result.problems[0]
    with pytest.raises(floatzip.CorruptDataError, match="checksum"):
        floatzip.decompress(flipped, tmp_path / "out")


def test_an_unknown_codec_is_a_newer_file(files, tmp_path):
    _, packed = files           # written with the toy codec, now unregistered
    with pytest.raises(floatzip.UnsupportedError, match="unknown codec 'toy-xor'.*upgrade"):
        floatzip.decompress(packed, tmp_path / "out")
    with pytest.raises(floatzip.UnsupportedError, match="unknown codec 'toy-xor'"):
        floatzip.check(packed)
