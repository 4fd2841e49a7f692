"""floatzip: lossless compression of neural-network weights that decodes in
parallel on CPU and GPU, and runs models straight from the compressed form.

    import floatzip
    floatzip.compress("model.safetensors", "model.fz.safetensors")
    floatzip.decompress("model.fz.safetensors", "restored.safetensors")
    with floatzip.safe_open("model.fz.safetensors", framework="pt") as f:
        w = f.get_tensor("embeddings.word_embeddings.weight")

Importing floatzip is cheap: numba, torch and triton load only when used.
"""
from .errors import CorruptDataError, FloatzipError, FormatError, OutputExistsError, UnsupportedError
from .format.container import FORMAT_VERSION

__version__ = "0.2.0"

__all__ = [
    "compress", "decompress", "verify", "check", "safe_open", "load_model",
    "FloatzipError", "FormatError", "CorruptDataError", "OutputExistsError", "UnsupportedError",
    "FORMAT_VERSION", "__version__",
]


def __getattr__(name):
    if name in ("compress", "decompress", "verify", "check", "safe_open", "compress_file",
                "decompress_file"):
        from . import api
        return getattr(api, name)
    if name == "load_model":
        from .torch.loading import load_model
        return load_model
    raise AttributeError(f"module 'floatzip' has no attribute {name!r}")
