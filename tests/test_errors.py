"""floatzip's exceptions: one base, and every error reading a file can raise
is also safetensors' SafetensorError, so code written for safetensors.safe_open
catches floatzip.safe_open's errors unchanged (issue 12, item 11)."""
import subprocess
import sys

import numpy as np
import pytest
import safetensors
from conftest import write_safetensors

import floatzip
from floatzip import errors

READING_ERRORS = ["FormatError", "CorruptDataError", "UnsupportedError", "NumpyDtypeError",
                  "DecoderArgumentError", "TensorNotFoundError", "SliceError", "ClosedFileError"]


@pytest.mark.parametrize("name", READING_ERRORS)
def test_reading_errors_are_safetensor_errors(name):
    kind = getattr(errors, name)
    assert issubclass(kind, errors.FloatzipError)
    assert issubclass(kind, safetensors.SafetensorError)
    with pytest.raises(safetensors.SafetensorError, match="somewhere: what to do"):
        raise kind("somewhere: what to do")


def test_errors_keep_the_builtin_types_callers_catch():
    assert issubclass(errors.FormatError, ValueError)
    assert issubclass(errors.CorruptDataError, errors.FormatError)
    assert issubclass(errors.UnsupportedError, ValueError)
    assert issubclass(errors.NumpyDtypeError, (errors.UnsupportedError, TypeError))
    assert issubclass(errors.TensorNotFoundError, KeyError)
    assert issubclass(errors.SliceError, IndexError) and issubclass(errors.SliceError, ValueError)
    assert issubclass(errors.ClosedFileError, ValueError)
    # Only writing raises this one: not a reader's error.
    assert issubclass(errors.OutputExistsError, FileExistsError)
    assert not issubclass(errors.OutputExistsError, safetensors.SafetensorError)


def test_missing_tensor_message_is_not_quoted_as_a_key():
    """KeyError shows its argument as repr; the message is a sentence."""
    message = "m.fz.safetensors: no tensor named 'w'; keys() lists the 3 tensors it holds"
    assert str(errors.TensorNotFoundError(message)) == message


def test_bad_files_are_safetensor_errors_as_in_safetensors(tmp_path, rng):
    """The same bad files through safetensors and floatzip: both raise a
    SafetensorError; floatzip's names the file."""
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"hello")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((64).to_bytes(8, "little") + b'{"a": 1}')
    for path in (garbage, truncated):
        with pytest.raises(safetensors.SafetensorError):
            safetensors.safe_open(path, framework="np")
        with pytest.raises(safetensors.SafetensorError, match=path.name):
            floatzip.safe_open(path, framework="np")
    # A compressed file whose floatzip metadata is cut: safetensors reads it
    # as a plain file, floatzip refuses it, with an error safetensors' users catch.
    original = write_safetensors(tmp_path / "m.safetensors", [
        ("w", "F32", [64, 64], rng.standard_normal((64, 64)).astype(np.float32))])
    packed = tmp_path / "m.fz.safetensors"
    floatzip.compress(original, packed)
    data = bytearray(packed.read_bytes())
    at = data.index(b'"floatzip.tensors"')
    data[at + 1:at + 9] = b"FLOATZIP"          # the key vanishes; the size stays
    packed.write_bytes(bytes(data))
    with safetensors.safe_open(packed, framework="np") as ref:
        assert ref.keys() == ["w"]
    with pytest.raises(safetensors.SafetensorError, match="floatzip.tensors"):
        floatzip.safe_open(packed, framework="np")


def test_importing_floatzip_stays_cheap():
    """errors.py imports safetensors (a small compiled module) for its base
    class; import floatzip must still load no torch, numba or triton."""
    code = ("import sys, floatzip, floatzip.errors; "
            "print(sorted(m for m in ('torch', 'numba', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
