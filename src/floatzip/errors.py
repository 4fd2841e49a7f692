"""Exceptions raised by floatzip.

Every error floatzip raises derives from :class:`FloatzipError`, so a caller
can catch one type. Messages name the file, the tensor and the field, say what
was expected and what was found, and what to do about it.

``floatzip.safe_open`` stands in for ``safetensors.safe_open``, so every error
that reading a file can raise (a bad or damaged file, an unknown tensor, an
index outside the tensor, a closed reader, a decoding option that does not
apply) is also a ``safetensors.SafetensorError``: code written for safetensors
catches it unchanged. Only :class:`OutputExistsError`, which no reader raises,
is not. (safetensors' own module is a small compiled extension: importing it
here keeps ``import floatzip`` cheap.)
"""
from safetensors import SafetensorError


class FloatzipError(Exception):
    """Base class of every floatzip error."""


class FormatError(FloatzipError, SafetensorError, ValueError):
    """The file is not a valid floatzip (or safetensors) file: bad header,
    missing or inconsistent fields, sizes that do not add up."""


class CorruptDataError(FormatError):
    """A coded stream does not decode cleanly: it ends early or late, carries
    non-zero padding, or the decoded bytes fail their checksum."""


class OutputExistsError(FloatzipError, FileExistsError):
    """The output path exists and replacing it was not asked for."""


class UnsupportedError(FloatzipError, SafetensorError, ValueError):
    """A valid file that this version cannot handle: newer format version,
    unknown codec or dtype."""


class NumpyDtypeError(UnsupportedError, TypeError):
    """A tensor of a dtype NumPy lacks (bfloat16, float8) read with
    ``framework="np"``. A ``TypeError`` too, which safetensors raises there."""


class DecoderArgumentError(FloatzipError, SafetensorError, ValueError):
    """An argument handed to a decoder (an output buffer, the list of tensors
    or their names, a reader's framework) has the wrong type, device, dtype,
    layout, size or value, or a decoding option (``backend=``, ``workers=``)
    was given where nothing is decoded."""


class TensorNotFoundError(FloatzipError, SafetensorError, KeyError):
    """The file holds no tensor of the name asked for. A ``KeyError`` too, as
    for a missing key of a mapping."""

    def __str__(self):
        # KeyError shows its argument quoted, as a key; this one is a sentence.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class SliceError(FloatzipError, SafetensorError, IndexError, ValueError):
    """An index that does not fit the tensor sliced: out of its bounds, more
    indices than it has dimensions, a step that is not positive, or not an
    index at all. ``IndexError`` and ``ValueError`` too, which NumPy and torch
    raise for such indices."""


class ClosedFileError(FloatzipError, SafetensorError, ValueError):
    """A reader used after its ``with`` block ended (as Python's files raise
    ``ValueError`` when used after ``close``)."""
