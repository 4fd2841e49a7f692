"""Decoding stored tensors: the one place that wraps a decoder's error with
the file and the tensor it is about."""
from __future__ import annotations

import numpy as np

from .codecs.encoded import decode_tensor
from .errors import CorruptDataError
from .format import container


def decode_stored(fz: container.FloatzipFile, name: str, backend, workers, verify=True,
            mapped=True) -> np.ndarray:
    try:
        return decode_tensor(fz.encoded(name, mapped=mapped), backend=backend, workers=workers,
                             verify=verify)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{fz.path}: tensor {name!r}: {exc}") from None


def check_stored(fz: container.FloatzipFile, name: str, *, backend=None, workers: int = 1) -> None:
    """Decode one stored tensor and check it against its checksum, keeping
    nothing; CorruptDataError (naming the file and tensor) if it fails."""
    decode_stored(fz, name, backend, workers, verify=True, mapped=False)
