"""A 2,000-case fuzz of damaged compressed files and model directories.

Every case damages a copy of one shared, valid compressed base (a file, or a
compressed model directory) and sends it through every reader floatzip has:
``decompress``, ``check``, ``verify`` (against the original),
``safe_open(...).get_slice(name)[rows]`` and ``get_tensor``, and, for
directories, ``load_model`` with one forward pass. Each must either

* detect the damage: raise a ``floatzip.FloatzipError`` (nothing else), or
  return a ``VerifyResult`` with ``ok`` False, naming the damaged file; and
  ``decompress`` then leaves nothing behind in the output's folder; or
* give exactly the original: the restored bytes, the tensor's values, the
  model's logits. This is allowed only where the damage changes no restored
  byte (JSON whitespace in the header, the informative ``bound_bits``, the
  name of the optional header-checksum key, a manifest field decompress
  does not read...).

In both cases the three whole-file (or whole-directory) jobs must agree:
``decompress``, ``check`` and ``verify`` succeed together or fail together.
Two changes to a compressed directory cannot be told from intended ones:
a file added that is not a floatzip file (a model card a hub adds, say),
and a changed copied file where the manifest was written before it listed
copied files (so it holds no size or checksum for them). Such a file is
copied as it is; ``verify``, which compares with the original, must then
report it, and where it is a file load_model reads (the config, the index)
the model it builds may differ, but any error must still be floatzip's,
naming the file.

Never wrong bytes, returned or written; never another exception; never a
crash (the numba decoders run in this process, without bounds checks).

Cases are drawn from fixed seeds, one stream per kind of damage, as
fractions resolved against the base's actual layout when the case runs; a
case is named by its kind and number (``-k 'file-flip-payload-0042'``
reruns one). tests/test_fuzz.py holds the older hypothesis fuzz of the
decoders alone.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import bf16_bits, write_safetensors

import floatzip
from floatzip.codecs.layout import pad8
from floatzip.format.container import FloatzipFile
from floatzip.results import VerifyResult

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

SEED = 20261212
NUMPY_SHARE = 0.2       # of the cases decoded by the NumPy reference (slow), not numba


# -- the cases ---------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    index: int              # its number within its row of the plan
    kind: str               # flip, xor, multi, truncate, append, tail, or a directory edit
    region: str
    backend: str
    workers: int
    u: tuple                # 4 fractions in [0, 1): where, which rows, which file
    bit: int                # the bit (0-7) to flip, or an XOR mask (1-255)
    flips: tuple = ()       # multi: (fraction, bit) pairs
    extra: bytes = b""      # bytes to append or to write over a tail
    decode: str = "on_the_fly"      # load_model's mode (directory cases)

    def __str__(self):
        return self.id


def _draw(prefix: str, kind: str, region: str, count: int) -> list[Case]:
    """The cases of one row of a plan, from a stream of their own (so that
    a row added or resized leaves the others as they were)."""
    rng = np.random.default_rng([SEED, *f"{prefix}/{kind}/{region}".encode()])
    cases = []
    for i in range(count):
        u = tuple(float(x) for x in rng.random(4))
        bit = int(rng.integers(1, 256)) if kind == "xor" else int(rng.integers(0, 8))
        n = int(rng.integers(2, 5)) if kind == "multi" else 0
        flips = tuple((float(rng.random()), int(rng.integers(0, 8))) for _ in range(n))
        size = int(rng.integers(1, 65))
        extra = (bytes(size) if region == "zeros"
                 else rng.integers(0, 256, size=size, dtype=np.uint8).tobytes())
        backend = "numpy" if rng.random() < NUMPY_SHARE else "numba"
        workers = int(rng.integers(1, 3))
        decode = "at_load" if rng.random() < 0.3 else "on_the_fly"
        cases.append(Case(f"{prefix}-{kind}-{region}-{i:04d}", i, kind, region, backend,
                          workers, u, bit, flips, extra, decode))
    return cases


# Damage to one compressed file. Regions: the header's length field, its
# JSON (the header padding and the metadata keys also on their own), and in
# the data: the four sections of the coded tensors (counts, lane sizes,
# payload, raw), the zero padding between and after them, the unused bits
# of a raw section's last byte, and the blobs of tensors stored raw.
FILE_PLAN = [
    ("flip", "length", 40),
    ("flip", "header-json", 360),
    ("flip", "header-keys", 40),
    ("flip", "header-padding", 20),
    ("flip", "counts", 100),
    ("flip", "lane-sizes", 140),
    ("flip", "payload", 300),
    ("flip", "raw", 220),
    ("flip", "padding", 60),
    ("flip", "raw-unused-bits", 20),
    ("flip", "raw-codec", 60),
    ("xor", "header", 50),          # one byte XORed with a random mask
    ("xor", "anywhere", 50),
    ("multi", "anywhere", 50),      # two to four bit flips
    ("truncate", "anywhere", 100),
    ("truncate", "header", 40),
    ("truncate", "boundary", 30),   # at a section or blob boundary, or one byte off it
    ("append", "random", 30),
    ("append", "zeros", 10),
    ("append", "copy", 5),          # the whole file again
    ("tail", "random", 20),         # the last bytes replaced: same size
]
FILE_CASES = [case for row in FILE_PLAN for case in _draw("file", *row)]


# -- the compressed file -------------------------------------------------------------

@dataclass
class FileLayout:
    """Where things lie in one compressed file."""
    regions: dict = field(default_factory=dict)     # region -> [(begin, end, tensor or None)]
    boundaries: list = field(default_factory=list)  # offsets to truncate at
    unused_bits: list = field(default_factory=list)  # (position, allowed bits, tensor)


@dataclass
class FileBase:
    original: str               # the .safetensors file
    packed: str                 # its compressed form
    original_bytes: bytes
    packed_bytes: bytes
    tensors: dict               # name -> (torch dtype name, shape, numpy array of its bits)
    layout: FileLayout


def _original_tensors(rng):
    """Real-shaped weights: N(0, 0.02) BF16 and F32 matrices of several
    groups (at lane_symbols=8 a group is 256 values; lm_head's 19,965 values
    of 7 raw bits end its raw section inside a byte), norm-like weights, and
    stored raw: integer ids, a tiny and an empty tensor."""
    def normal(*shape, scale=0.02, mean=0.0):
        return (mean + scale * rng.standard_normal(shape)).astype(np.float32)
    return [
        ("model.embed_tokens.weight", "BF16", [96, 64], bf16_bits(normal(96, 64))),
        ("model.layers.0.self_attn.q_proj.weight", "F32", [40, 36], normal(40, 36)),
        ("model.layers.0.input_layernorm.weight", "F32", [64], normal(64, mean=1.0)),
        ("position_ids", "I64", [1, 16], np.arange(16, dtype="<i8")),
        ("lm_head.weight", "BF16", [121, 165], bf16_bits(normal(121, 165))),
        ("model.layers.0.mlp.tiny_bias", "BF16", [3], bf16_bits(normal(3))),
        ("model.layers.0.empty", "BF16", [0, 8], np.zeros(0, dtype=np.uint16)),
    ]


_STORAGE = {"BF16": ("bfloat16", np.uint16), "F32": ("float32", np.float32),
            "I64": ("int64", np.int64)}


@pytest.fixture(scope="module")
def file_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-damage-file")
    rng = np.random.default_rng(SEED)
    spec = _original_tensors(rng)
    original = write_safetensors(root / "original.safetensors", spec, {"format": "pt"})
    packed = root / "original.fz.safetensors"
    floatzip.compress(original, packed, lane_symbols=8, workers=1)
    tensors = {name: (_STORAGE[dtype][0], tuple(shape),
                      np.ascontiguousarray(a).view(_STORAGE[dtype][1]).reshape(shape))
               for name, dtype, shape, a in spec}
    base = FileBase(str(original), str(packed), original.read_bytes(), packed.read_bytes(),
                    tensors, map_file(str(packed)))
    # Undamaged, it passes every job (else "detected" would mean nothing).
    assert floatzip.check(packed).ok and floatzip.verify(original, packed).ok
    # The layout the cases are meant to reach: if the encoder's choices move,
    # the regions must still exist.
    fz = FloatzipFile(packed)
    coded = {n for n, t in fz.tensors.items() if t.geometry is not None}
    # The matrices are coded in several groups (the one-signed norm may be
    # coded too, in one group, with its sign in the symbol).
    matrices = {"model.embed_tokens.weight", "lm_head.weight",
                "model.layers.0.self_attn.q_proj.weight"}
    assert matrices <= coded
    assert all(fz.tensors[n].geometry.groups >= 3 for n in matrices)
    assert {"position_ids", "model.layers.0.mlp.tiny_bias", "model.layers.0.empty"}.isdisjoint(coded)
    for region in ("counts", "lane-sizes", "payload", "raw", "padding", "raw-codec",
                   "header-keys"):
        assert base.layout.regions[region], region
    assert base.layout.unused_bits, "no raw section ends inside a byte"
    return base


_BLOB_REGIONS = ("counts", "lane-sizes", "payload", "raw", "padding")


def map_file(path: str) -> FileLayout:
    """Where each region of a compressed file lies."""
    fz = FloatzipFile(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read(fz.header.data_start)
    text_end = 8 + len(fz.header.raw.rstrip(b" "))
    regions = {name: [] for name in ("length", "header-json", "header-padding", "header-keys",
                                     *_BLOB_REGIONS, "raw-codec", "header", "anywhere")}
    regions["length"].append((0, 8, None))
    regions["header-json"].append((8, text_end, None))
    if fz.header.data_start > text_end:
        regions["header-padding"].append((text_end, fz.header.data_start, None))
    regions["header"].append((0, fz.header.data_start, None))
    regions["anywhere"].append((0, size, None))
    for key in (b'"__metadata__"', b'"floatzip.version"', b'"floatzip.source_header"',
                b'"floatzip.tensors"', b'"floatzip.source_header_xxh3"'):
        at = data.find(key, 8, text_end)
        if at >= 0:
            regions["header-keys"].append((at + 1, at + len(key) - 1, None))
    layout = FileLayout()
    boundaries = {0, 8, text_end, fz.header.data_start, size}
    for name, t in fz.tensors.items():
        boundaries.update((t.blob_begin, t.blob_begin + t.blob_bytes))
        g = t.geometry
        if g is None:
            if t.blob_bytes:
                regions["raw-codec"].append((t.blob_begin, t.blob_begin + t.blob_bytes, name))
            continue
        sections = g.sections()
        for section, region in (("counts", "counts"), ("lane_sizes", "lane-sizes"),
                                ("payload", "payload"), ("raw", "raw")):
            offset, length = sections[section]
            begin = t.blob_begin + offset
            regions[region].append((begin, begin + length, name))
            gap = pad8(offset + length) - (offset + length)
            if gap:
                regions["padding"].append((begin + length, begin + length + gap, name))
            boundaries.update((begin, begin + length))
        spare = (-g.count * g.raw_bits) % 8
        offset, length = sections["raw"]
        if spare and length:
            layout.unused_bits.append((t.blob_begin + offset + length - 1,
                                       tuple(range(8 - spare, 8)), name))
    regions["coded"] = sorted(r for region in _BLOB_REGIONS for r in regions[region])
    layout.regions = {k: [r for r in v if r[1] > r[0]] for k, v in regions.items()}
    layout.boundaries = sorted(b + d for b in boundaries for d in (-1, 0, 1) if 0 <= b + d < size)
    return layout


def _position(regions, u):
    """The byte at fraction ``u`` of the regions laid end to end, and the
    tensor whose blob holds it (None in the header)."""
    total = sum(end - begin for begin, end, _ in regions)
    k = min(int(u * total), total - 1)
    for begin, end, name in regions:
        if k < end - begin:
            return begin + k, name
        k -= end - begin
    raise AssertionError("unreachable")


def _tensor_at(layout: FileLayout, position: int):
    for begin, end, name in layout.regions["raw-codec"] + layout.regions["coded"]:
        if begin <= position < end:
            return name
    return None


def damage_file(case: Case, data: bytes, layout: FileLayout, region: str | None = None):
    """The damaged bytes and the tensor the damage lies in (None: the header,
    or no one tensor). ``region``: instead of the case's."""
    region = region or case.region
    out = bytearray(data)
    regions = layout.regions.get(region)
    if case.kind == "flip" and region == "raw-unused-bits":
        position, allowed, name = layout.unused_bits[int(case.u[0] * len(layout.unused_bits))]
        out[position] ^= 1 << allowed[case.bit % len(allowed)]
        return bytes(out), name
    if case.kind == "flip":
        if not regions:
            pytest.skip(f"the base has no {region} region")
        position, name = _position(regions, case.u[0])
        out[position] ^= 1 << case.bit
        return bytes(out), name
    if case.kind == "xor":
        position, name = _position(regions, case.u[0])
        out[position] ^= case.bit
        return bytes(out), _tensor_at(layout, position)
    if case.kind == "multi":
        flips = [(_position(regions, u)[0], b) for u, b in case.flips]
        for position, bit in flips:
            out[position] ^= 1 << bit
        names = {_tensor_at(layout, p) for p, _ in flips}
        return bytes(out), names.pop() if len(names) == 1 else None
    if case.kind == "truncate":
        if region == "boundary":
            cut = layout.boundaries[int(case.u[0] * len(layout.boundaries))]
        else:
            cut = _position(regions, case.u[0])[0]
        return bytes(out[:cut]), _tensor_at(layout, cut)
    if case.kind == "append":
        return bytes(out) + (bytes(data) if region == "copy" else case.extra), None
    if case.kind == "tail":
        k = len(case.extra)
        out[-k:] = case.extra
        return bytes(out), _tensor_at(layout, len(out) - 1)
    raise AssertionError(case.kind)


# -- judging what a reader did ----------------------------------------------------------

class Outcome:
    """What one call did: its value, or the FloatzipError it raised (any
    other exception propagates and fails the case)."""

    def __init__(self, fn):
        self.value, self.error = None, None
        try:
            self.value = fn()
        except floatzip.FloatzipError as exc:
            self.error = exc


def _names(text: str, names) -> bool:
    return any(str(n) in text for n in names)


def judge_result(case, what: str, outcome: Outcome, names) -> bool:
    """True if the job found nothing wrong; if it found damage, it must name
    one of ``names``."""
    if outcome.error is not None:
        assert _names(str(outcome.error), names), \
            f"{case}: {what} raised an error that names none of {names}: {outcome.error!r}"
        return False
    result = outcome.value
    assert isinstance(result, VerifyResult), (case, what, result)
    if result.ok:
        return True
    assert result.problems and any(_names(p, names) for p in result.problems), \
        f"{case}: {what} reports damage naming none of {names}: {result.problems}"
    return False


def as_bytes(tensor) -> bytes:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def judge_tensor(case, what: str, outcome: Outcome, names, dtype: str, array) -> None:
    """A tensor read from a damaged file: an error naming the file, or
    exactly the original (dtype, shape and bytes)."""
    if outcome.error is not None:
        assert _names(str(outcome.error), names), \
            f"{case}: {what} raised an error that names none of {names}: {outcome.error!r}"
        return
    tensor = outcome.value
    got = (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
    assert got == (dtype, array.shape), \
        f"{case}: {what} returned a {got} tensor without an error; the original is " \
        f"{(dtype, array.shape)}"
    assert as_bytes(tensor) == array.tobytes(), \
        f"{case}: {what} returned wrong values without an error"


def _rows(case: Case, shape) -> slice:
    if not shape or shape[0] == 0:
        return slice(0, 0)
    n = shape[0]
    r0 = int(case.u[1] * n)
    return slice(r0, r0 + 1 + int(case.u[2] * (n - r0)))


def read_with_safe_open(case: Case, path: str, names, tensors: dict, sliced: str):
    """get_slice(sliced)[rows] on a fresh reader (a partial read first, which
    must check the tensor whole), then get_tensor of every tensor."""
    kw = {} if case.backend == "numba" else {"backend": case.backend}
    opened = Outcome(lambda: floatzip.safe_open(path, framework="pt", **kw))
    if opened.error is not None:
        judge_tensor(case, "safe_open", opened, names, "", None)
        return
    with opened.value as f:
        dtype, shape, array = tensors[sliced]
        rows = _rows(case, shape)
        got = Outcome(lambda: f.get_slice(sliced)[rows])
        judge_tensor(case, f"get_slice({sliced!r})[{rows.start}:{rows.stop}]", got, names,
                     dtype, array[rows] if shape else array)
        for name, (dtype, shape, array) in tensors.items():
            got = Outcome(lambda name=name: f.get_tensor(name))
            judge_tensor(case, f"get_tensor({name!r})", got, names, dtype, array)


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- damaged files ------------------------------------------------------------------------

@pytest.mark.parametrize("case", FILE_CASES, ids=str)
def test_damaged_file(case, file_base, tmp_path):
    data, tensor = damage_file(case, file_base.packed_bytes, file_base.layout)
    damaged = tmp_path / "damaged.fz.safetensors"
    damaged.write_bytes(data)
    names = [str(damaged)]
    backend, workers = case.backend, case.workers

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "restored.safetensors"
    restored = Outcome(lambda: floatzip.decompress(damaged, out, backend=backend,
                                                   workers=workers))
    if restored.error is not None:
        assert _names(str(restored.error), names), \
            f"{case}: decompress raised an error that names no file: {restored.error!r}"
        assert leftovers(out_dir) == [], f"{case}: a failed decompress left {leftovers(out_dir)}"
    else:
        assert out.read_bytes() == file_base.original_bytes, \
            f"{case}: decompress wrote wrong bytes without an error"
    intact = restored.error is None

    checked = judge_result(case, "check", Outcome(
        lambda: floatzip.check(damaged, backend=backend, workers=workers)), names)
    verified = judge_result(case, "verify", Outcome(
        lambda: floatzip.verify(file_base.original, damaged, backend=backend,
                                workers=workers)), names)
    assert checked == verified == intact, \
        f"{case}: decompress {'succeeds' if intact else 'fails'} but check says " \
        f"ok={checked} and verify ok={verified}"

    sliced = tensor or sorted(file_base.tensors)[int(case.u[1] * len(file_base.tensors))]
    read_with_safe_open(case, str(damaged), names, file_base.tensors, sliced)
    shutil.rmtree(tmp_path, ignore_errors=True)


# -- damaged model directories ---------------------------------------------------------------

# Damage to a compressed model directory (a tiny random Llama in BF16, five
# shards, an index, config, generation config and tokenizer files). First a
# shard's own bytes (as above, through the directory's jobs and load_model),
# then the directory itself: shards deleted, renamed, swapped or added, the
# manifest deleted, flipped or edited, a copied file changed.
DIR_PLAN = [
    ("flip", "shard-header", 30),
    ("flip", "shard-coded", 60),
    ("flip", "shard-raw-codec", 10),
    ("truncate", "shard", 15),
    ("append", "shard", 10),
    ("delete", "shard", 10),
    ("rename", "shard", 10),            # to another *.safetensors name
    ("rename", "shard-away", 5),        # to a name that is no *.safetensors
    ("swap", "shards", 5),
    ("extra", "shard-copy", 8),         # a shard copied under a new name
    ("extra", "foreign-floatzip", 4),   # a floatzip file from elsewhere
    ("extra", "plain-safetensors", 4),  # no damage: copied as is (module docstring)
    ("extra", "plain-file", 3),
    ("manifest", "delete", 4),
    ("manifest", "flip", 60),
    ("manifest", "edit", 40),
    ("copied", "flip", 25),
    ("copied", "edit", 8),              # config, generation config, index: still valid JSON
    ("copied", "truncate", 6),
    ("copied", "append", 4),
    ("copied", "delete", 6),
    ("copied", "rename", 4),
    ("legacy", "copied", 16),   # a manifest without "copied"; a copied file flipped or appended to
]
DIR_CASES = [case for row in DIR_PLAN for case in _draw("dir", *row)]
_SHARD_REGIONS = {"shard-header": "header", "shard-coded": "coded",
                  "shard-raw-codec": "raw-codec", "shard": "anywhere"}
MANIFEST = "floatzip.json"
TOKENIZER_FILES = {
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {
        chr(97 + i): i for i in range(26)}, "merges": []}}, indent=2),
    "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                         "model_max_length": 64}, indent=2),
    "special_tokens_map.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"}),
}


@dataclass
class DirBase:
    original: str               # the model directory
    packed: str                 # its compressed form
    tree: dict                  # relative path -> bytes, of the original
    shards: list                # relative paths of the compressed shards
    copied: list                # relative paths of the other files
    layouts: dict               # shard -> FileLayout
    tensors: dict               # shard -> {name: (torch dtype name, shape, numpy bits)}
    input_ids: object
    logits: object              # the original model's, from transformers
    foreign: str                # a floatzip file of another model


def tree_bytes(root) -> dict:
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _numpy_bits(tensor):
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


@pytest.fixture(scope="module")
def dir_base(tmp_path_factory, file_base):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file
    root = tmp_path_factory.mktemp("fuzz-damage-dir")
    original, packed = root / "model", root / "model.fz"
    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        torch_dtype="bfloat16")
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(original, safe_serialization=True, max_shard_size="40KB")
    for name, text in TOKENIZER_FILES.items():
        (original / name).write_text(text)
    input_ids = torch.tensor([[1, 7, 42, 99, 3, 64, 127, 0, 18]])
    reference = transformers.AutoModelForCausalLM.from_pretrained(original).eval()
    with torch.no_grad():
        logits = reference(input_ids).logits
    floatzip.compress(original, packed, lane_symbols=16, workers=1)
    shards = sorted(p.name for p in packed.glob("*.safetensors"))
    assert len(shards) >= 3 and (original / "model.safetensors.index.json").exists()
    copied = sorted(rel for rel in tree_bytes(original) if rel not in shards)
    tensors = {shard: {name: (str(t.dtype).removeprefix("torch."), tuple(t.shape), _numpy_bits(t))
                       for name, t in load_file(original / shard).items()}
               for shard in shards}
    # The undamaged directory restores and runs as the original.
    assert floatzip.check(packed).ok and floatzip.verify(original, packed).ok
    with torch.no_grad():
        assert torch.equal(floatzip.load_model(packed)(input_ids).logits, logits)
    return DirBase(str(original), str(packed), tree_bytes(original), shards, copied,
                   {s: map_file(str(packed / s)) for s in shards}, tensors, input_ids, logits,
                   file_base.packed)


def _pick(items, u):
    items = sorted(items)
    return items[min(int(u * len(items)), len(items) - 1)]


def _new_shard_name(base: DirBase, u: float) -> str:
    return f"model-{len(base.shards) + 1 + int(u * 4):05d}-of-{len(base.shards):05d}.safetensors"


def _edit_manifest(case: Case, packed: str, base: DirBase) -> list[str]:
    """One of several meaningful edits of the manifest; the files it is
    about (besides the manifest)."""
    path = os.path.join(packed, MANIFEST)
    with open(path) as f:
        doc = json.load(f)
    shard, copied = _pick(doc["files"], case.u[3]), _pick(doc["copied"], case.u[3])
    edit = case.index % 16
    about = []
    if edit == 0:
        del doc["files"][shard]
        about = [shard]
    elif edit == 1:
        del doc["copied"][copied]           # it is then copied as an unlisted file: harmless
    elif edit == 2:
        del doc["copied"]                   # a manifest from before "copied": harmless
    elif edit == 3:
        doc["files"][shard]["compressed_bytes"] += 1 if case.bit & 1 else -1
        about = [shard]
    elif edit == 4:
        doc["files"][shard]["original_bytes"] += 1 if case.bit & 1 else -1
        about = [shard]
    elif edit == 5:
        digest = doc["copied"][copied]["xxh3"]
        doc["copied"][copied]["xxh3"] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
        about = [copied]
    elif edit == 6:
        doc["copied"][copied]["bytes"] += 1
        about = [copied]
    elif edit == 7:
        new = _new_shard_name(base, case.u[1])
        doc["files"][new] = dict(doc["files"][shard])
        about = [new]
    elif edit == 8:
        doc["copied"]["added_tokens.json"] = dict(doc["copied"][copied])
        about = ["added_tokens.json"]
    elif edit == 9:
        doc["files"]["../" + shard] = doc["files"].pop(shard)
        about = [shard]
    elif edit == 10:
        doc["files"] = list(doc["files"])
    elif edit == 11:
        a, b = sorted(doc["files"])[:2]
        doc["files"][a], doc["files"][b] = doc["files"][b], doc["files"][a]
        about = [a, b]
    elif edit == 12:
        doc["files"][shard]["tensors"] += 1     # informative: harmless
    elif edit == 13:
        doc["copied"][shard] = {"bytes": 1, "xxh3": "0" * 16}   # listed twice
        about = [shard]
    elif edit == 14:
        doc = {}
    else:
        doc["files"][shard]["compressed_bytes"] = str(doc["files"][shard]["compressed_bytes"])
        about = [shard]
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    return about


def _edit_copied(case: Case, packed: str) -> str:
    """A change to a copied JSON file that keeps it valid (what a hand edit,
    or an older copy of the file, would be); the file's relative path."""
    edit = case.index % 8
    rel = ("config.json" if edit < 6 else "generation_config.json" if edit == 6
           else "model.safetensors.index.json")
    path = Path(packed, rel)
    doc = json.loads(path.read_text())
    if edit == 0:
        doc["rms_norm_eps"] = 1e-5
    elif edit == 1:
        doc["num_hidden_layers"] = 1
    elif edit == 2:
        doc["hidden_act"] = "gelu"
    elif edit == 3:
        doc.get("rope_parameters", doc)["rope_theta"] = 500000.0
    elif edit == 4:
        doc["num_attention_heads"] = 8
    elif edit == 5:
        doc["tie_word_embeddings"] = True
    elif edit == 6:
        doc["bos_token_id"] = 2
    else:
        weight_map = doc["weight_map"]
        key = min(weight_map)
        weight_map[key] = min(set(weight_map.values()) - {weight_map[key]})
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return rel


def damage_directory(case: Case, packed: str, base: DirBase):
    """Damage the copy ``packed`` of the compressed directory. Returns the
    relative paths an error may name (the damaged files), the shard whose
    bytes were damaged (or None), and a file that decompress is meant
    to copy as is (or None)."""
    kind, region = case.kind, case.region
    shard = _pick(base.shards, case.u[3])
    if kind in ("flip", "truncate", "append") and region in _SHARD_REGIONS:
        shard = _pick([s for s in base.shards
                       if base.layouts[s].regions[_SHARD_REGIONS[region]]], case.u[3])
    full = os.path.join(packed, shard)
    if kind in ("flip", "truncate", "append") and region in _SHARD_REGIONS:
        data = Path(full).read_bytes()
        damaged, _ = damage_file(case, data, base.layouts[shard], _SHARD_REGIONS[region])
        Path(full).write_bytes(damaged)
        return [shard], shard, None
    if kind == "delete" and region == "shard":
        os.unlink(full)
        return [shard], None, None
    if kind == "rename":
        new = _new_shard_name(base, case.u[1]) if region == "shard" else shard + ".bak"
        os.rename(full, os.path.join(packed, new))
        return [shard, new], None, None
    if kind == "swap":
        other = _pick(set(base.shards) - {shard}, case.u[1])
        os.rename(full, full + ".swap")
        os.rename(os.path.join(packed, other), full)
        os.rename(full + ".swap", os.path.join(packed, other))
        return [shard, other], None, None
    if kind == "extra":
        new = _new_shard_name(base, case.u[1])
        if region == "shard-copy":
            shutil.copyfile(full, os.path.join(packed, new))
        elif region == "foreign-floatzip":
            shutil.copyfile(base.foreign, os.path.join(packed, new))
        elif region == "plain-safetensors":
            shutil.copyfile(os.path.join(base.original, shard), os.path.join(packed, new))
            return [new], None, new
        else:
            new = "README.md"
            Path(packed, new).write_text("# a model card added after compression\n")
            return [new], None, new
        return [new], None, None
    if kind == "manifest":
        path = os.path.join(packed, MANIFEST)
        if region == "delete":
            os.unlink(path)
            return [MANIFEST], None, None
        if region == "flip":
            data = bytearray(Path(path).read_bytes())
            data[int(case.u[0] * len(data))] ^= 1 << case.bit
            Path(path).write_bytes(data)
            return [MANIFEST], None, None
        return [MANIFEST] + _edit_manifest(case, packed, base), None, None
    if kind == "copied" and region == "edit":
        return [_edit_copied(case, packed)], None, None
    if kind == "copied":
        rel = _pick(base.copied, case.u[3])
        path = os.path.join(packed, rel)
        data = bytearray(Path(path).read_bytes())
        if region == "flip":
            data[int(case.u[0] * len(data))] ^= 1 << case.bit
        elif region == "truncate":
            del data[int(case.u[0] * len(data)):]
        elif region == "append":
            data += case.extra
        elif region == "delete":
            os.unlink(path)
            return [rel], None, None
        else:
            os.rename(path, path + ".old")
            return [rel, rel + ".old"], None, None
        Path(path).write_bytes(data)
        return [rel], None, None
    if kind == "legacy":
        path = Path(packed, MANIFEST)
        doc = json.loads(path.read_text())
        del doc["copied"]           # as written before 2026-12: still a valid manifest
        path.write_text(json.dumps(doc, indent=2, sort_keys=True))
        rel = _pick(base.copied, case.u[3])
        data = bytearray(Path(packed, rel).read_bytes())
        if case.index % 2:
            data += case.extra
        else:
            data[int(case.u[0] * len(data))] ^= 1 << case.bit
        Path(packed, rel).write_bytes(data)
        return [rel], None, rel
    raise AssertionError(case)


# The copied files load_model reads.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


@pytest.mark.parametrize("case", DIR_CASES, ids=str)
def test_damaged_directory(case, dir_base, tmp_path):
    base = dir_base
    packed = str(tmp_path / "model.fz")
    shutil.copytree(base.packed, packed)
    names, shard, as_is = damage_directory(case, packed, base)
    backend = None if case.backend == "numba" else case.backend
    workers = case.workers
    expected = dict(base.tree)
    if as_is is not None:       # a file nothing can check: copied as it is
        expected[as_is] = Path(packed, as_is).read_bytes()

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "restored"
    restored = Outcome(lambda: floatzip.decompress(packed, out, backend=backend,
                                                   workers=workers))
    if restored.error is not None:
        assert _names(str(restored.error), names), \
            f"{case}: decompress raised an error that names none of {names}: {restored.error!r}"
        assert leftovers(out_dir) == [], f"{case}: a failed decompress left {leftovers(out_dir)}"
    else:
        got = tree_bytes(out)
        assert sorted(got) == sorted(expected), \
            f"{case}: decompress wrote the files {sorted(got)} without an error; expected " \
            f"{sorted(expected)}"
        wrong = sorted(rel for rel in got if got[rel] != expected[rel])
        assert not wrong, f"{case}: decompress wrote wrong bytes to {wrong} without an error"
    intact = restored.error is None

    checked = judge_result(case, "check", Outcome(
        lambda: floatzip.check(packed, backend=backend, workers=workers)), names)
    verified = judge_result(case, "verify", Outcome(
        lambda: floatzip.verify(base.original, packed, backend=backend, workers=workers)),
        names)
    # verify compares with the original, which a file copied as it is differs from.
    assert (checked, verified) == (intact, intact and as_is is None), \
        f"{case}: decompress {'succeeds' if intact else 'fails'} but check says " \
        f"ok={checked} and verify ok={verified}"

    def run_model():
        model = floatzip.load_model(packed, decode=case.decode, backend=backend,
                                    workers=workers)
        with torch.no_grad():
            return model(base.input_ids).logits
    ran = Outcome(run_model)
    if ran.error is not None:
        assert _names(str(ran.error), names), \
            f"{case}: load_model raised an error that names none of {names}: {ran.error!r}"
    elif as_is not in MODEL_FILES:
        assert torch.equal(ran.value, base.logits), \
            f"{case}: the model load_model made gives other logits than the original, " \
            "without an error"

    if shard is not None:
        tensors = base.tensors[shard]
        read_with_safe_open(case, os.path.join(packed, shard), names, tensors,
                            _pick(tensors, case.u[1]))
    shutil.rmtree(tmp_path, ignore_errors=True)
