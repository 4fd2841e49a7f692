"""Compressed model directories: the tree walk, the ``floatzip.json``
manifest, and running a per-file job over a whole directory into a staging
directory that is renamed into place (docs/FORMAT.md, section 8)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile

from .errors import FloatzipError, FormatError
from .format import container
from .format.safetensors_header import read_header
from .io_utils import error_about, file_mode, publish_directory, temporary_prefix
from .results import VerifyResult

MANIFEST = "floatzip.json"


def safetensors_kind(path: str) -> str | None:
    """"floatzip" or "plain" for a readable safetensors file, by its
    metadata; None if it cannot be read as one."""
    try:
        with open(path, "rb") as f:
            header = read_header(f, path)
    except (OSError, FloatzipError):
        return None
    return "floatzip" if header.metadata and container.KEY_VERSION in header.metadata \
        else "plain"


def is_floatzip(path: str) -> bool:
    return safetensors_kind(path) == "floatzip"


def walk(root: str, directories: bool = False, outside_links: bool = True):
    """(path relative to root, full path) of every file under ``root``, in a
    stable order; with ``directories``, of every directory instead (root
    first). Symbolic links are followed, to files and directories alike (a
    model fetched into the Hugging Face cache is a tree of links); a link to
    a directory it is inside of is an error, not a loop. ``outside_links``
    False: a link that leads out of ``root`` is an error (floatzip writes no
    links, so one in a compressed directory came from elsewhere, and a
    decompressed copy must not carry what it points to)."""
    top = os.path.realpath(root)
    ancestors = {root: {top}}       # real paths of each directory's chain, itself included
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                real = os.path.realpath(full)
                if not outside_links and os.path.commonpath([top, real]) != top:
                    raise FormatError(f"{full}: a symbolic link out of {root} (to {real}); "
                                      "a compressed directory holds none, so it is refused")
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
            yield os.path.relpath(full, root), full


def process_directory(src, dst, file_fn, select, manifest_fn, walk_options: dict, *,
                      overwrite: bool = True, **kw) -> dict:
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise FormatError(f"{dst}: exists and is not a directory")
    inner, outer = os.path.realpath(src), os.path.realpath(dst)
    common = os.path.commonpath([inner, outer])
    if common in (inner, outer):            # replacing dst would delete src, or walk into dst
        where = "is" if inner == outer else "is inside" if common == inner else "contains"
        raise FormatError(f"{dst}: {where} the source directory {src}; choose an output "
                          "directory outside it")
    # Work in a temporary sibling and rename at the end: no half-written directory.
    parent = os.path.dirname(os.path.abspath(dst))
    try:
        staging = tempfile.mkdtemp(prefix=temporary_prefix(dst), dir=parent)
    except OSError as exc:
        raise error_about(exc, dst) from None
    files = {}
    try:
        for rel, full in walk(src, **walk_options):
            if rel == MANIFEST:
                continue
            target = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if select(rel, full):
                summary = file_fn(full, target, **kw)
                files[rel] = summary
            else:
                shutil.copy2(full, target)
        manifest_fn(staging, files)
        # Directories keep their source's permissions (mkdtemp's are 0700),
        # but stay writable by their owner, so that --force can replace them.
        for rel, full in walk(src, directories=True, **walk_options):
            target = os.path.join(staging, rel)
            if os.path.isdir(target):
                os.chmod(target, file_mode(full) | stat.S_IRWXU)
        publish_directory(staging, dst, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"files": files,
            "original_bytes": sum(s["original_bytes"] for s in files.values()),
            "compressed_bytes": sum(s["compressed_bytes"] for s in files.values())}


def write_manifest(directory: str, files: dict) -> None:
    doc = {"format": "floatzip", "version": container.FORMAT_VERSION, "files": files}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)


def require_manifest(directory: str) -> str:
    """The manifest's path, or FormatError if ``directory`` has none."""
    manifest = os.path.join(directory, MANIFEST)
    if not os.path.exists(manifest):
        raise FormatError(f"{directory}: not a floatzip model directory (no {MANIFEST}); "
                          "compress it first with 'floatzip compress'")
    return manifest


def check_directory(path: str, check_file, **kw) -> VerifyResult:
    """check() of every floatzip file in a compressed directory (the files
    decompress decodes), and of the manifest's list of them."""
    manifest = require_manifest(path)
    try:
        with open(manifest) as f:
            listed = json.load(f)["files"]
        if not isinstance(listed, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return VerifyResult(False, [f"{manifest}: unreadable, or not a floatzip manifest"])
    found = {rel: full for rel, full in walk(path, outside_links=False)
             if rel.endswith(".safetensors") and is_floatzip(full)}
    problems = []
    root = os.path.realpath(path)
    for rel in sorted(listed):
        full = os.path.join(path, rel)
        if os.path.isabs(rel) or os.path.commonpath(
                [root, os.path.realpath(full)]) != root:
            problems.append(f"{manifest}: entry {rel!r} points outside {path}")
        elif rel not in found:
            kind = "missing" if not os.path.lexists(full) else "not a floatzip file"
            problems.append(f"{full}: listed in {MANIFEST} but {kind}")
    for rel in sorted(found):
        problems += check_file(found[rel], **kw).problems
    return VerifyResult(not problems, problems)
