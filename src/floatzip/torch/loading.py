"""Load a Hugging Face transformers model from a compressed model directory.

The model is built and filled by transformers itself: ``from_pretrained``
with ``state_dict=`` set to lazy tensors that decode on demand. That way key
renaming, the ``base_model_prefix`` handling, weight conversions, dtype
plans, non-persistent buffers, weight tying and generation configs all
behave exactly as when the original files are loaded, and the outputs are
bit-identical.

With ``decode="on_the_fly"`` the weights of the repeated blocks and of the
input/output embeddings are not decoded at load: their lazy tensors yield
meta placeholders, and :mod:`floatzip.torch.runtime` decodes them just
before each use. Everything else (norms, biases outside blocks, position
embeddings, buffers) is decoded once at load.

Only the public safetensors-like state-dict protocol of ``from_pretrained``
is relied on (``value[...]`` then ``.to(device=, dtype=)``), plus, to know
in advance which checkpoint key lands in which parameter, the renaming
functions transformers uses for that (with a plain prefix rule as fallback).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass

import torch
import xxhash

from .. import backends
from ..codecs.encoded import EncodedTensor
from ..decode import check_stored, decode_tensor
from ..model_dir import MANIFEST, inspect_directory
from ..errors import CorruptDataError, FormatError, UnsupportedError
from ..format.container import FloatzipFile
from ..io_utils import resolve_workers
from . import runtime
from .block_decoders import block_backend, decodes_on_device, release_pages
from .dtypes import bytes_to_torch, torch_dtype
from .units import deferrable_parameter_names

CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
# The copied files whose contents load_model uses: each is checked against
# the XXH3-64 the manifest lists for it (the others, a tokenizer say, are
# not read here, so hashing them would cost without protecting anything).
READ_FILES = (CONFIG, GENERATION_CONFIG, INDEX_FILE)
DECODE_MODES = ("on_the_fly", "at_load")
MEMORY_MODES = ("compact", "fast")


# -- the compressed checkpoint -------------------------------------------------

@dataclass
class SourceTensor:
    """One tensor of the compressed checkpoint, still coded. ``encoded``'s
    sections are views of the memory-mapped file."""
    key: str
    path: str               # the floatzip file that holds it
    file: FloatzipFile      # that file, open
    dtype: str              # safetensors dtype of the original tensor
    shape: tuple[int, ...]
    encoded: EncodedTensor
    stored_bytes: int       # size of its coded blob in the file

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point

    def where(self) -> str:
        return f"{self.path}: tensor {self.key!r}"


class CompressedCheckpoint:
    """The weights of a compressed model directory: the directory checked
    against its manifest, every shard opened and validated, every tensor's
    coded form at hand, nothing decoded."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        d = self.directory
        if not os.path.isdir(d):
            what = "does not exist" if not os.path.exists(d) else "is not a directory"
            raise FormatError(f"{d}: {what}; load_model expects a compressed model directory "
                              "(made by 'floatzip compress SRC_DIR DST_DIR')")
        self._check_manifest()
        self.files = self._shard_files()
        self.tensors: dict[str, SourceTensor] = {}
        self._open: list[FloatzipFile] = []
        for rel, expected in self.files.items():
            fz = FloatzipFile(os.path.join(d, rel))
            self._open.append(fz)
            for key, stored in fz.tensors.items():
                if key in self.tensors:
                    raise FormatError(f"{fz.path}: tensor {key!r} is also in "
                                      f"{self.tensors[key].path}; shards must not overlap")
                self.tensors[key] = SourceTensor(key, fz.path, fz, stored.source.dtype,
                                                 tuple(stored.source.shape), fz.encoded(key),
                                                 stored.blob_bytes)
            if expected is not None:
                missing = sorted(expected - set(fz.tensors))
                if missing:
                    raise FormatError(
                        f"{fz.path}: lacks {len(missing)} tensor(s) that {INDEX_FILE} places in it "
                        f"(first: {missing[:3]}); the shard does not match the index")

    def _check_manifest(self) -> None:
        """The directory against its manifest, as decompress checks it (a
        listed file missing or of another size, an unlisted floatzip file, an
        entry leading out: directory.inspect_directory), and the copied files
        load_model reads against the XXH3-64 the manifest lists for them."""
        d = self.directory
        if not os.path.lexists(os.path.join(d, MANIFEST)):
            raise FormatError(f"{d}: not a floatzip model directory (no {MANIFEST}); "
                              "compress it first with 'floatzip compress SRC_DIR DST_DIR', or load "
                              "an uncompressed directory with transformers directly")
        layout = inspect_directory(d)
        problems = list(layout.problems)
        for rel in READ_FILES:
            want = layout.expected_xxh3(rel) if rel in layout.copied else None
            if want is None:
                continue
            full = layout.full(rel)
            got = _file_xxh3(full)
            if got != want:
                problems.append(f"{full}: its XXH3-64 is {got} but {MANIFEST} lists {want}: "
                                "changed since the directory was compressed; fetch or copy it "
                                "again")
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise CorruptDataError(
                f"{d}: does not match its {MANIFEST}, so load_model refuses it ({len(problems)} "
                f"problem{'s' if len(problems) > 1 else ''}): {'; '.join(problems[:5])}{more}")

    def _shard_files(self) -> dict[str, set[str] | None]:
        """Weight files to read -> the tensor names the index puts there
        (None without an index)."""
        d = self.directory
        index_path = os.path.join(d, INDEX_FILE)
        if os.path.isfile(index_path):
            doc = _read_json(index_path, "not a valid safetensors index")
            weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
            if not isinstance(weight_map, dict):
                raise FormatError(f"{index_path}: not a valid safetensors index (no "
                                  "\"weight_map\" object)")
            shards: dict[str, set[str]] = {}
            for key, rel in weight_map.items():
                shards.setdefault(rel, set()).add(key)
            missing = sorted(rel for rel in shards if not os.path.isfile(os.path.join(d, rel)))
            if missing:
                raise FormatError(f"{d}: {len(missing)} of the {len(shards)} shards that {INDEX_FILE} "
                                  f"lists are missing: {', '.join(missing[:5])}")
            return dict(sorted(shards.items()))
        if os.path.isfile(os.path.join(d, SINGLE_FILE)):
            return {SINGLE_FILE: None}
        raise FormatError(f"{d}: no {SINGLE_FILE} or {INDEX_FILE}; only safetensors checkpoints "
                          "can be loaded")

    def float_dtype(self) -> torch.dtype | None:
        """dtype of the first floating-point tensor (what transformers'
        dtype="auto" falls back to when the config names none)."""
        for t in self.tensors.values():
            if t.is_float:
                return t.torch_dtype
        return None

    @property
    def compressed_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors.values())


def decode_source(src: SourceTensor, *, backend=None, workers: int = 1, verify: bool = True) -> torch.Tensor:
    """The tensor, decoded, as a CPU torch tensor in its stored dtype."""
    try:
        data = decode_tensor(src.encoded, backend=backend, workers=workers, verify=verify)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{src.where()}: {exc}") from None
    return bytes_to_torch(data, src.dtype, src.shape)


# -- lazy state dict values -------------------------------------------------------

class _MetaStub:
    """What a deferred tensor materialises to: ``.to()`` gives a meta
    tensor of the right shape, so the model's parameter stays a placeholder
    until the on-the-fly decoder fills it."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = torch.Size(shape), dtype

    def to(self, device=None, dtype=None, **_):
        return torch.empty(self.shape, dtype=dtype or self.dtype, device="meta")


def load_backend(backend, device: torch.device):
    """The back end that decodes the tensors decoded at load, as
    ``floatzip.backends.select`` picks it: one that decodes on ``device``
    itself if there is one (only the coded bytes then cross the bus), else
    one that decodes on the CPU (the tensors are then copied over).
    UnsupportedError, naming what works, if neither can."""
    if device.type != "cpu":
        try:
            return backends.select(backend, device=device.type)
        except UnsupportedError:
            pass
    return backends.select(backend, device="cpu")


def verify_on_cpu(sources, workers: int) -> None:
    """Check each tensor against its checksum on the CPU, streamed (memory
    stays bounded), before a device decodes it; CorruptDataError naming the
    file and tensor otherwise. The CPU back end is picked by name: a
    FLOATZIP_BACKEND that asks for Triton asks it of the device."""
    for name in ("numba", "numpy"):
        try:
            cpu = backends.select(name, device="cpu")
            break
        except UnsupportedError:
            continue
    for src in sources:
        check_stored(src.file, src.key, backend=cpu.name, workers=workers)


def decode_on_device(sources: list[SourceTensor], device: torch.device,
                     impl) -> dict[str, torch.Tensor]:
    """Tensors decoded by the Triton kernel where they will live (only the
    coded bytes cross the bus), one launch each, on this thread: Triton
    launches on the current device and stream, which transformers' loading
    threads would not share. ``impl``: the back end :func:`load_backend`
    returned, one that decodes on the device."""
    out, coded = {}, []
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for src in sources:
            c = impl.DeviceCodedTensor(src.encoded, device, name=src.key)
            out[src.key] = c.decode()
            coded.append(c)
        for c in coded:         # one wait for the device, then the lane-end checks
            c.check()
    return out


class LazyTensor:
    """A checkpoint tensor as ``from_pretrained`` sees it: like a
    safetensors slice, decoded only when indexed."""

    def __init__(self, source: SourceTensor, defer: bool, decode):
        self.source, self.defer = source, defer
        self._decode = decode           # SourceTensor -> torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.source.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.source.torch_dtype

    def get_shape(self) -> list[int]:
        return list(self.source.shape)

    def get_dtype(self) -> str:
        return self.source.dtype

    def __getitem__(self, index):
        if self.defer:
            if index is not Ellipsis:
                raise UnsupportedError(f"{self.source.where()}: transformers asked for a slice "
                                       f"{index!r} of a weight decoded on the fly; load with "
                                       "decode='at_load'")
            return _MetaStub(self.source.shape, self.source.torch_dtype)
        tensor = self._decode(self.source)
        return tensor if index is Ellipsis else tensor[index]


# -- config, class and dtype ------------------------------------------------------

def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise UnsupportedError(f"loading a model needs transformers ({exc}); "
                               "pip install 'floatzip[torch]'") from None
    return transformers


def _file_xxh3(path: str) -> str:
    """XXH3-64 of a file, as the manifest writes it (16 lowercase hex digits)."""
    digest = xxhash.xxh3_64()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _read_json(path: str, problem: str):
    """The JSON document at ``path``; FormatError "path: problem (why)" if it
    cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: {problem} ({exc})") from None


def load_config(directory: str):
    transformers = _transformers()
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise FormatError(f"{directory}: no {CONFIG}; load_model needs a Hugging Face model "
                          "directory (config.json next to the weights)")
    raw = _read_json(path, "not valid JSON")
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    try:
        return transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        if model_type is not None:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING
            if model_type not in CONFIG_MAPPING:
                raise UnsupportedError(
                    f"{path}: model_type {model_type!r} is not known to the installed transformers "
                    f"{transformers.__version__} (and custom code is not run); upgrade "
                    "transformers or check the config") from None
        raise FormatError(f"{path}: transformers cannot read this config: {exc}") from None


def resolve_model_class(config, model_class, directory: str):
    transformers = _transformers()
    where = os.path.join(directory, CONFIG)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        if not archs:
            raise FormatError(f"{where}: no 'architectures' entry to pick the model class from; "
                              "pass model_class= (e.g. transformers.AutoModel)")
        model_class = archs[0]
    if isinstance(model_class, str):
        name = model_class
        model_class = getattr(transformers, name, None)
        if model_class is None:
            raise UnsupportedError(f"{where}: architecture {name!r} is not in the installed "
                                   f"transformers {transformers.__version__}; upgrade transformers "
                                   "or pass model_class=")
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is not None:          # an Auto class: pick the concrete class for this config
        try:
            model_class = mapping[type(config)]
        except (KeyError, ValueError):
            raise UnsupportedError(f"{where}: {model_class.__name__} has no model for "
                                   f"{type(config).__name__}") from None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise UnsupportedError(f"model_class must be a transformers model class or its name, "
                               f"not {model_class!r}")
    return model_class


def resolve_dtype(dtype, config, checkpoint: CompressedCheckpoint) -> torch.dtype:
    """Like from_pretrained's dtype="auto": the config's dtype, else the
    checkpoint's first floating-point dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(found, str):
            found = getattr(torch, found, None)
        if isinstance(found, torch.dtype):
            return found
        return checkpoint.float_dtype() or torch.get_default_dtype()
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise UnsupportedError(f"dtype must be a torch.dtype, its name or 'auto', not {dtype!r}")


def resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UnsupportedError(f"device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"device={str(device)!r}: this torch ({torch.__version__}) sees no "
                               "CUDA device; use device='cpu'")
    return dev


# -- checkpoint keys -> model parameter names ---------------------------------------

def build_meta_skeleton(model_class, config, dtype):
    """The model with every tensor on the meta device (costs no memory); its
    state_dict keys, shapes and modules are what the checkpoint must fill."""
    with torch.device("meta"):
        return model_class._from_config(copy.deepcopy(config), dtype=dtype)


def map_checkpoint_keys(skeleton, keys) -> dict[str, tuple[str | None, bool]]:
    """checkpoint key -> (model state_dict key or None if unused, whether a
    weight conversion other than a rename produces the model tensor).

    Uses transformers' own renaming rules, in its order, so the result is
    what from_pretrained will do."""
    meta_sd = skeleton.state_dict()
    prefix = getattr(skeleton, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )
    except ImportError:         # an older transformers: only the prefix rule
        out = {}
        for key in keys:
            target = key if key in meta_sd else None
            if target is None and prefix:
                if key.startswith(prefix + ".") and key[len(prefix) + 1:] in meta_sd:
                    target = key[len(prefix) + 1:]
                elif f"{prefix}.{key}" in meta_sd:
                    target = f"{prefix}.{key}"
            out[key] = (target, False)
        return out
    transforms = get_model_conversion_mapping(skeleton, None, None)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    out = {}
    for key in sorted(keys, key=dot_natural_key):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta_sd)
        if renamed not in meta_sd and key in meta_sd:
            renamed, pattern = rename_source_key(key, [], [], base_model_prefix=prefix,
                                                 meta_state_dict=meta_sd)
        out[key] = (renamed if renamed in meta_sd else None, pattern is not None)
    return out


def check_shapes(checkpoint: CompressedCheckpoint, mapping, skeleton, config_path: str) -> None:
    meta_sd = skeleton.state_dict()
    for key, (target, converted) in mapping.items():
        if target is None or converted:
            continue
        src = checkpoint.tensors[key]
        want = tuple(meta_sd[target].shape)
        if src.shape != want:
            raise FormatError(
                f"{src.where()}: shape {list(src.shape)} does not match {target!r} of "
                f"{type(skeleton).__name__}, which {config_path} makes {list(want)}; the weights "
                "and the config do not belong together")


# -- the entry point -------------------------------------------------------------------

def load_model(path, device="cpu", model_class=None, decode: str = "on_the_fly", *,
               dtype=None, prefetch: bool | None = None, backend=None,
               workers: int | None = None, verify: bool = True, memory: str = "compact"):
    """A transformers model from a compressed model directory, bit-exact
    with the model loaded from the original files.

    path         directory made by ``floatzip compress SRC_DIR DST_DIR``
    device       "cpu" or "cuda[:n]"
    model_class  transformers class (or its name, or an Auto class); default:
                 the first of config.json's ``architectures``
    decode       "on_the_fly": the repeated blocks and the embeddings stay
                 compressed in memory and are decoded just before they run
                 (see floatzip.torch.runtime); "at_load": decode everything
                 now into an ordinary model
    dtype        like from_pretrained's: None/"auto" = the config's dtype,
                 else the checkpoint's
    prefetch     on the fly on CPU: decode the next block in a background
                 thread while the current one computes. None (auto): only
                 if torch leaves cores idle (torch.get_num_threads() below
                 the core count); it then decodes on those
    backend      coding back end (default: the fastest available)
    workers      decoding threads (default: all cores)
    verify       where a GPU decodes (Triton), first check every tensor
                 against its XXH3-64 on the CPU, once, streamed: the kernels
                 check only that each lane ends where it should, and every
                 byte load_model hands out is to be covered by a checksum.
                 False skips it (a faster load; FORMAT.md allows a GPU path
                 to rely on the structural checks). On the CPU every tensor
                 is checked as it is first decoded, whatever this says.
    memory       on the fly, what the weights are kept as between uses:
                 "compact" (default): the file's tANS code, memory-mapped,
                 the smallest; "fast": BF16 weights are transcoded at load
                 into a code built for decode speed (docs/FAST_CODE.md:
                 ~0.70 of BF16 on real weights against ~0.66, decoded ~10x
                 faster), other dtypes stay compact. CPU only so far.
                 Outputs are bit-identical either way.

    Everything is read from ``path``; nothing is downloaded.
    """
    if decode not in DECODE_MODES:
        raise UnsupportedError(f"decode must be one of {', '.join(map(repr, DECODE_MODES))}, "
                               f"not {decode!r}")
    if memory not in MEMORY_MODES:
        raise UnsupportedError(f"memory must be one of {', '.join(map(repr, MEMORY_MODES))}, "
                               f"not {memory!r}")
    if memory == "fast" and decode != "on_the_fly":
        raise UnsupportedError("memory='fast' chooses how weights decoded on the fly are kept; "
                               f"with decode={decode!r} every weight is decoded at load; use "
                               "decode='on_the_fly' or drop memory=")
    directory = os.fspath(path)
    dev = resolve_device(device)
    if memory == "fast" and dev.type != "cpu":
        raise UnsupportedError(f"memory='fast' runs on the CPU only in this floatzip, not on "
                               f"{dev.type!r}; use memory='compact' (the default)")
    checkpoint = CompressedCheckpoint(directory)
    config = load_config(directory)
    cls = resolve_model_class(config, model_class, directory)
    dtype = resolve_dtype(dtype, config, checkpoint)
    workers = resolve_workers(workers)
    on_the_fly = decode == "on_the_fly"
    if on_the_fly and dev.type not in ("cpu", "cuda"):
        raise UnsupportedError(f"decode='on_the_fly' runs on 'cpu' or 'cuda', not {dev.type!r}; "
                               "use decode='at_load'")
    # Back ends chosen before anything is built, so that one that cannot
    # serve fails now.
    block_impl = _on_the_fly_backend(backend, dev) if on_the_fly else None
    load_impl = load_backend(backend, dev)
    if memory == "fast":
        backends.select_fast_code(backend, device=dev.type)

    skeleton = build_meta_skeleton(cls, config, dtype)
    mapping = map_checkpoint_keys(skeleton, checkpoint.tensors)
    check_shapes(checkpoint, mapping, skeleton, os.path.join(directory, CONFIG))
    deferred_targets: dict[str, SourceTensor] = {}
    if on_the_fly:
        unit_names = deferrable_parameter_names(skeleton)
        for key, (target, converted) in mapping.items():
            src = checkpoint.tensors[key]
            if target in unit_names and not converted and src.is_float:
                deferred_targets[target] = src
    deferred_keys = {src.key for src in deferred_targets.values()}
    del skeleton

    if verify and (decodes_on_device(load_impl)
                   or (on_the_fly and decodes_on_device(block_impl))):
        verify_on_cpu(checkpoint.tensors.values(), workers)
    if decodes_on_device(load_impl):
        on_device = decode_on_device([src for key, src in checkpoint.tensors.items()
                                      if key not in deferred_keys], dev, load_impl)

        def decode_fn(src):
            return on_device.pop(src.key)
    else:
        def decode_fn(src):
            tensor = decode_source(src, backend=load_impl.name, workers=workers)
            if not on_the_fly:
                release_pages(src.encoded.payload)
                release_pages(src.encoded.raw)
            return tensor
    state_dict = {key: LazyTensor(src, key in deferred_keys, decode_fn)
                  for key, src in checkpoint.tensors.items()}
    kwargs = dict(config=config, state_dict=state_dict, dtype=dtype, local_files_only=True)
    if dev.type != "cpu":
        kwargs["device_map"] = {"": dev}
    generation_config = _generation_config(directory)
    if generation_config is not None:
        kwargs["generation_config"] = generation_config
    model = cls.from_pretrained(None, **kwargs)
    del state_dict
    model.config._name_or_path = directory
    model.eval()
    if on_the_fly:
        runtime.attach(model, deferred_targets, checkpoint, device=dev, prefetch=prefetch,
                       backend=block_impl.name, workers=workers, memory=memory)
    return model


def _on_the_fly_backend(backend, dev: torch.device):
    """The back end the block decoders will use on ``dev``; where none
    decodes there but one decodes on the CPU, the error says that
    decode='at_load' works."""
    try:
        return block_backend(backend, dev)
    except UnsupportedError as exc:
        if dev.type == "cpu":
            raise
        try:
            backends.select(backend, device="cpu")
        except UnsupportedError:
            raise exc from None
        raise UnsupportedError(f"decode='on_the_fly' on {dev.type}: {exc}; or use "
                               "decode='at_load' to decode on the CPU and run on the "
                               "GPU") from None


def _generation_config(directory: str):
    if not os.path.isfile(os.path.join(directory, GENERATION_CONFIG)):
        return None
    from transformers import GenerationConfig
    try:
        return GenerationConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{directory}/{GENERATION_CONFIG}: cannot be read ({exc})") from None
