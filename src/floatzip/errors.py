"""Exceptions raised by floatzip.

Every error floatzip raises derives from :class:`FloatzipError`, so a caller
can catch one type. Messages name the file, the tensor and the field, say what
was expected and what was found, and what to do about it.
"""


class FloatzipError(Exception):
    """Base class of every floatzip error."""


class FormatError(FloatzipError, ValueError):
    """The file is not a valid floatzip (or safetensors) file: bad header,
    missing or inconsistent fields, sizes that do not add up."""


class CorruptDataError(FormatError):
    """A coded stream does not decode cleanly: it ends early or late, carries
    non-zero padding, or the decoded bytes fail their checksum."""


class OutputExistsError(FloatzipError, FileExistsError):
    """The output path exists and replacing it was not asked for."""


class UnsupportedError(FloatzipError, ValueError):
    """A valid file that this version cannot handle: newer format version,
    unknown codec or dtype."""


class DecoderArgumentError(FloatzipError, ValueError):
    """An argument handed to a decoder (an output buffer, the list of tensors
    or their names) has the wrong type, device, dtype, layout or size."""
