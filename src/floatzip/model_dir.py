"""Compressed model directories as they lie on disk (docs/FORMAT.md, section
8): the tree walk, the ``floatzip.json`` manifest, and a directory checked
against it. Reading only: the jobs that build directories are in
directory.py."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import CorruptDataError, FloatzipError, FormatError
from .format import container
from .format.safetensors_header import read_header

MANIFEST = "floatzip.json"
# The manifest's own version (docs/FORMAT.md section 8): unchanged by format 2.
MANIFEST_VERSION = 1

# Version-control data is no part of a model: never copied nor compared (a
# clone of a Hugging Face repository holds every LFS object twice, once in
# .git). A ".git" file (a submodule's or worktree's pointer) goes too.
VCS_NAMES = frozenset({".git", ".hg", ".svn", ".bzr"})


# -- the tree ------------------------------------------------------------------

def safetensors_kind(path: str) -> str | None:
    """"floatzip" or "plain" for a readable safetensors file, by its
    metadata (any floatzip key makes it a floatzip file: one whose version
    key is damaged must not pass for a plain file); None if it cannot be
    read as one."""
    try:
        with open(path, "rb") as f:
            header = read_header(f, path)
    except (OSError, FloatzipError):
        return None
    return "floatzip" if container.is_floatzip_metadata(header.metadata) else "plain"


def is_floatzip(path: str) -> bool:
    return safetensors_kind(path) == "floatzip"


def walk(root: str, directories: bool = False, skipped: list | None = None):
    """(path relative to root, full path) of every file under ``root``, in a
    stable order; with ``directories``, of every directory instead (root
    first). Version-control folders (VCS_NAMES) are left out, and their
    relative paths appended to ``skipped`` if given. Symbolic links are
    followed, to files and directories alike (a model fetched into the
    Hugging Face cache is a tree of links); a link to a directory it is
    inside of is an error, not a loop. Links may lead out of ``root``; what
    a compressed directory's links lead to is checked against its manifest
    (inspect_directory)."""
    top = os.path.realpath(root)
    ancestors = {root: {top}}       # real paths of each directory's chain, itself included
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        for names in (dirnames, filenames):
            for name in [n for n in names if n in VCS_NAMES]:
                names.remove(name)
                if skipped is not None:
                    skipped.append(os.path.relpath(os.path.join(dirpath, name), root))
        dirnames.sort()
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                real = os.path.realpath(full)
                if real in ancestors[dirpath]:
                    raise FormatError(f"{full}: a symbolic link loops back to {real}")
        for name in dirnames:
            full = os.path.join(dirpath, name)
            ancestors[full] = ancestors[dirpath] | {os.path.realpath(full)}
        if directories:
            yield os.path.relpath(dirpath, root), dirpath
            continue
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if not os.path.isfile(full):        # reading a FIFO would wait forever
                what = (f"a broken symbolic link (to {os.readlink(full)})"
                        if os.path.islink(full) and not os.path.exists(full)
                        else "not a regular file (a FIFO, socket or device)")
                raise FormatError(f"{full}: {what}; a model directory holds regular files "
                                  "only: remove it")
            yield os.path.relpath(full, root), full


# -- the manifest --------------------------------------------------------------

@dataclass
class Manifest:
    """What ``floatzip.json`` says: the compressed files (``files``: relative
    path -> original_bytes, compressed_bytes, tensors) and the files copied
    as they were (``copied``: relative path -> bytes, xxh3). ``copied`` is
    None in manifests written before it existed (before 2026-12-02): their
    other files cannot be checked."""
    path: str
    coded: dict[str, dict]
    copied: dict[str, dict] | None


def require_manifest(directory: str) -> str:
    """The manifest's path, or FormatError if ``directory`` has none."""
    manifest = os.path.join(directory, MANIFEST)
    if not os.path.lexists(manifest):
        raise FormatError(f"{directory}: not a floatzip model directory (no {MANIFEST}); "
                          "compress it first with 'floatzip compress'")
    return manifest


def read_manifest(directory: str) -> Manifest:
    """The manifest of a compressed directory. FormatError if there is none,
    CorruptDataError if it cannot be read or is not a manifest."""
    path = require_manifest(directory)

    def bad(why):
        return CorruptDataError(f"{path}: unreadable, or not a floatzip manifest ({why}); "
                                "compress the original directory again")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise bad(exc.strerror or exc) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not UTF-8 JSON: {exc}") from None
    # Every key is required and no other is allowed: a damaged key name
    # must not turn a check off quietly.
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise bad('expected a JSON object with a "files" object')
    if set(doc) - {"format", "version", "files", "copied"} or doc.get("format") != "floatzip" \
            or type(doc.get("version")) is not int:
        raise bad('expected exactly "format": "floatzip", an integer "version", "files" and '
                  '(since 2026-12-02) "copied"')
    coded, copied = doc["files"], doc.get("copied")
    for rel, entry in coded.items():
        if not (isinstance(entry, dict) and set(entry) == set(_CODED_FIELDS)
                and all(_is_size(entry[key]) for key in _CODED_FIELDS)):
            raise bad(f"entry {rel!r} of \"files\" must be an object of exactly "
                      f"{', '.join(_CODED_FIELDS)}, non-negative integers")
    if copied is not None:
        if not isinstance(copied, dict):
            raise bad('"copied" must be an object')
        for rel, entry in copied.items():
            if not (isinstance(entry, dict) and set(entry) == {"bytes", "xxh3"}
                    and _is_size(entry["bytes"]) and _is_xxh3(entry["xxh3"])):
                raise bad(f"entry {rel!r} of \"copied\" must be an object of exactly \"bytes\" "
                          "(an integer) and \"xxh3\" (16 lowercase hex digits)")
        both = sorted(set(coded) & set(copied))
        if both:
            raise bad(f"{both[0]!r} is listed both as compressed and as copied")
    return Manifest(path, coded, copied)


def write_manifest(directory: str, coded: dict, copied: dict | None = None, *,
                   fsync: bool = True) -> int:
    """Write ``floatzip.json`` into ``directory`` (fsynced unless ``fsync``
    is False); returns its size."""
    doc = {"format": "floatzip", "version": MANIFEST_VERSION, "files": coded}
    if copied is not None:
        doc["copied"] = copied
    data = json.dumps(doc, indent=2, sort_keys=True).encode("utf-8")
    path = os.path.join(directory, MANIFEST)
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return len(data)


_CODED_FIELDS = ("original_bytes", "compressed_bytes", "tensors")


def _is_size(value) -> bool:
    return type(value) is int and value >= 0


def _is_xxh3(value) -> bool:
    return isinstance(value, str) and len(value) == 16 and all(
        c in "0123456789abcdef" for c in value)


# -- a compressed directory against its manifest ----------------------------------

@dataclass
class Layout:
    """A compressed directory as its manifest and its files agree on it:
    what decompress decodes (``coded``) and copies (``copied``), by relative
    path, each file's size, and every disagreement found (``problems``:
    a listed file missing or of another size, an unlisted floatzip file, an
    entry leading out of the directory). ``unlisted``: floatzip files the
    manifest does not list (among the problems; check still checks them)."""
    root: str
    manifest: Manifest
    coded: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)     # walk order of the files found
    skipped: list[str] = field(default_factory=list)        # version-control folders
    outside: list[str] = field(default_factory=list)        # unlisted links out, left alone

    def full(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def expected_xxh3(self, rel: str) -> str | None:
        copied = self.manifest.copied
        return copied[rel]["xxh3"] if copied is not None and rel in copied else None


def inspect_directory(path: str) -> Layout:
    """Compare a compressed directory with its manifest. Raises FormatError
    if it has no manifest and CorruptDataError if the manifest is unreadable;
    every other disagreement is listed in the result's ``problems``.
    Contents are not read here (only sizes and safetensors headers):
    checksums are the callers' part, as they read the files anyway."""
    manifest = read_manifest(path)
    layout = Layout(path, manifest)
    # Links out of the directory are followed: a model fetched into the Hugging
    # Face cache is a tree of links into its blobs/ folder. What they lead to
    # is checked like any file: against the manifest's sizes and checksums.
    found = {rel: full for rel, full in walk(path, skipped=layout.skipped)
             if rel != MANIFEST}
    problems = {}                   # relative path -> problem, to sort them by path
    root = os.path.realpath(path)
    listed = dict.fromkeys(manifest.coded, "coded")
    listed.update(dict.fromkeys(manifest.copied or (), "copied"))
    for rel, kind in listed.items():
        full = os.path.join(path, rel)
        # The entry's path must stay inside (no "..", not absolute); where a
        # link there leads is the file's business, checked like its bytes.
        inside = os.path.normpath(os.path.join(os.path.abspath(path), rel))
        if ("\0" in rel or os.path.isabs(rel)
                or os.path.commonpath([os.path.abspath(path), inside]) != os.path.abspath(path)):
            problems[rel] = f"{manifest.path}: entry {rel!r} points outside {path}"
            continue
        if rel not in found:
            what = "missing" if not os.path.lexists(full) else "not a file"
            problems[rel] = (f"{full}: listed in {MANIFEST} but {what}; the directory is "
                             "incomplete: fetch or copy it again")
            continue
        size = os.path.getsize(full)
        entry = manifest.coded[rel] if kind == "coded" else manifest.copied[rel]
        want = entry.get("compressed_bytes" if kind == "coded" else "bytes")
        if want is not None and size != want:
            problems[rel] = (f"{full}: {size} bytes, but {MANIFEST} lists {want}: changed "
                             "since the directory was compressed; fetch or copy it again")
        elif kind == "coded" and not is_floatzip(full):
            problems[rel] = (f"{full}: listed in {MANIFEST} as compressed but not a floatzip "
                             "file; fetch or copy the directory again")
        elif kind == "coded" and _restored_size(full) not in (None, entry["original_bytes"]):
            problems[rel] = (f"{full}: restores {_restored_size(full)} bytes, but {MANIFEST} "
                             f"lists {entry['original_bytes']}; fetch or copy the directory "
                             "again")
        else:
            layout.sizes[rel] = size
            (layout.coded if kind == "coded" else layout.copied).append(rel)
    for rel, full in found.items():
        if rel in listed:
            continue
        if os.path.commonpath([root, os.path.realpath(full)]) != root:
            # A link out that the manifest does not list is not part of the
            # model (a hub-added README in the cache, say): neither checked
            # nor copied, since nothing vouches for what it leads to.
            layout.outside.append(rel)
            continue
        if rel.endswith(".safetensors") and is_floatzip(full):
            problems[rel] = (f"{full}: a floatzip file that {MANIFEST} does not list (renamed, "
                             "or from another directory?); remove it, or compress the original "
                             "directory again")
            layout.unlisted.append(rel)
            layout.sizes[rel] = os.path.getsize(full)
        else:
            # Not written by compress (a README or .gitattributes a hub adds,
            # say), or listed nowhere in a manifest older than "copied": it
            # is copied as it is.
            layout.copied.append(rel)
            layout.sizes[rel] = os.path.getsize(full)
    layout.problems = [problems[rel] for rel in sorted(problems)]
    layout.order = {rel: i for i, rel in enumerate(found)}
    for names in (layout.coded, layout.copied, layout.unlisted):
        names.sort(key=layout.order.__getitem__)
    return layout


def _restored_size(path: str) -> int | None:
    """The size of the file a floatzip file restores, by its header; None
    if the header is damaged (checking the file reports that)."""
    try:
        source = container.FloatzipFile(path).source
    except FloatzipError:
        return None
    return source.data_start + source.data_bytes


def mismatch_error(path: str, problems: list[str]) -> CorruptDataError:
    shown = "; ".join(problems[:5])
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    return CorruptDataError(f"{path}: does not match its {MANIFEST} ({len(problems)} "
                            f"problem{'s' if len(problems) > 1 else ''}): {shown}{more}")
