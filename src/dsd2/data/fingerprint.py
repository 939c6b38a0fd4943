"""What a run's data is, by content: the fingerprint meta.json records (docs/run_directory.md, "Data identity").

A built-in dataset's files are checksum-known (downloads are verified): its config names it, and
its fingerprint is empty. What lives in a user's files is fingerprinted by content, never by
path, so moving or copying the same data elsewhere keeps the run, and other data never reuses it:

* an image folder: every image the loader reads (relative path, size and a content hash),
  grouped by ``<split>/<class>`` folder so a mismatch can say where it is;
* a label file (``dataset.label_file``): its sha256.

(A noise matrix is in the run id by its values.) Content hashes: a folder of at most
:data:`WHOLE_CONTENT_BYTES` is hashed whole (CIFAR-, Flowers-sized folders: seconds from the page
cache); a larger one (ImageNet) hashes each file's size and its first and last
:data:`END_BYTES` bytes, a few reads per file: an edit that keeps a file's size and changes only
its middle goes unseen there. Modification times are not used: a copy does not keep them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dsd2.errors import UserError

WHOLE_CONTENT_BYTES = 2 * 1024**3
END_BYTES = 64 * 1024
VERSION = 1
_CHUNK = 1024 * 1024


def _file_hash(path: str, size: int, whole: bool) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            if whole or size <= 2 * END_BYTES:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            else:
                h.update(f.read(END_BYTES))
                f.seek(size - END_BYTES)
                h.update(f.read(END_BYTES))
    except OSError as err:
        raise UserError(f"cannot read {path} to fingerprint the data: {err.strerror or err}") from None
    return h.hexdigest()


def _group(relative: str) -> str:
    """``<split>/<class>`` of an image's relative path (``train/cat/x.png`` -> ``train/cat``)."""
    return "/".join(relative.split("/")[:-1][:2]) or "."


def folder_fingerprint(root: str | Path, relative: Iterable[str]) -> dict[str, Any]:
    """The fingerprint of the files ``relative`` ("/"-separated paths under ``root``)."""
    files = sorted(relative)
    paths = [os.path.join(root, *rel.split("/")) for rel in files]
    try:
        sizes = [os.stat(p).st_size for p in paths]
    except OSError as err:
        raise UserError(f"cannot read {err.filename} to fingerprint the data: {err.strerror or err}") from None
    whole = sum(sizes) <= WHOLE_CONTENT_BYTES
    groups: dict[str, list[Any]] = {}
    for rel, path, size in zip(files, paths, sizes, strict=True):
        entry = groups.setdefault(_group(rel), [0, 0, hashlib.sha256()])
        entry[0] += 1
        entry[1] += size
        entry[2].update(f"{rel}\0{size}\0{_file_hash(path, size, whole)}\n".encode())
    folders = {g: [n, b, h.hexdigest()[:16]] for g, (n, b, h) in sorted(groups.items())}
    total = hashlib.sha256(repr(sorted(folders.items())).encode()).hexdigest()
    return {
        "version": VERSION,
        "content": "whole" if whole else f"size, first and last {END_BYTES} bytes",
        "files": len(files),
        "bytes": sum(sizes),
        "sha256": total,
        "folders": folders,
    }


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """A single file's sha256 and size (a label file)."""
    p = Path(path).expanduser()
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        size = p.stat().st_size
    except OSError as err:
        raise UserError(f"cannot read {path} to fingerprint it: {err.strerror or err}") from None
    return {"sha256": h.hexdigest(), "bytes": size}


def _files(n: Any) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """One phrase saying how the folder fingerprint ``new`` differs from ``old`` (None: the same)."""
    if old.get("sha256") == new.get("sha256"):
        return None
    before, now = old.get("folders") or {}, new.get("folders") or {}
    parts = []
    for g in sorted(before.keys() | now.keys()):
        a, b = before.get(g), now.get(g)
        if a == b:
            continue
        if a is None:
            parts.append(f"{g} added ({_files((b or [0])[0])})")
        elif b is None:
            parts.append(f"{g} removed ({_files(a[0])})")
        elif a[0] != b[0]:
            more = b[0] - a[0]
            parts.append(f"{g}: {_files(abs(more))} {'added' if more > 0 else 'removed'}")
        else:
            parts.append(f"{g}: files changed or renamed (same count, {_files(a[0])})")
    shown = "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more folders" if len(parts) > 3 else "")
    head = f"{_files(old.get('files'))} then, {new.get('files')} now"
    return f"{head} ({shown})" if shown else head


def data_fingerprint(dataset: str, root: str | Path | None, label_file: str | None, *, follow_links: bool = False) -> dict[str, Any]:
    """A run's data fingerprint: ``images`` for an image folder, ``label_file`` for a label file;
    empty for a built-in dataset without one (its files are checksum-known)."""
    out: dict[str, Any] = {}
    if dataset == "image_folder" and root:
        from dsd2.data.scans import scan

        table = scan(Path(root).expanduser(), follow_links=follow_links).table  # the files the run reads (one listing per start)
        out["images"] = folder_fingerprint(table.root, (table.relative(i) for i in range(len(table))))
    if label_file:
        if not Path(label_file).expanduser().is_file():  # moved, most often: its path is a location, given anew
            raise UserError(
                f"dataset.label_file={label_file} cannot be read (no such file): give its place, e.g. "
                "`dsd2 resume RUN_DIR dataset.label_file=NEW` for a run whose label file moved"
            )
        out["label_file"] = file_fingerprint(label_file)
    return out


def content_digest(splits: Any) -> str | None:
    """sha256 of the samples and labels a run reads once its data is loaded (``splits``: a
    :class:`dsd2.data.DataSplits`; None when its images stay on disk, a streamed image folder).
    A built-in dataset's local copy is not checked against the published files when loaded
    (another dataset.root, another copy, a generator's new version): this pins what it decoded,
    whatever the files' bytes (a recompressed copy of the same data is the same data)."""
    import torch

    parts = [splits.train_x, splits.train_y, splits.val_x, splits.val_y, splits.test_x, splits.test_y]
    if not all(isinstance(t, torch.Tensor) for t in parts):
        return None
    h = hashlib.sha256()
    for t in parts:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def fingerprint_mismatch(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """What differs between a recorded data fingerprint and this one (None: nothing both cover)."""
    changes = []
    if isinstance(recorded.get("images"), Mapping) and "images" in now:
        change = describe_change(recorded["images"], now["images"])
        if change is not None:
            changes.append(f"the image folder's files differ: {change}")
    old_labels = recorded.get("label_file")
    if isinstance(old_labels, Mapping) and "label_file" in now and old_labels.get("sha256") != now["label_file"]["sha256"]:
        changes.append(
            f"dataset.label_file's content differs (sha256 {str(old_labels.get('sha256'))[:12]}… then, "
            f"{now['label_file']['sha256'][:12]}… now)"
        )
    return "; ".join(changes) or None
