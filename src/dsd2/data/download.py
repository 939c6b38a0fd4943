"""Checksum-verified downloads and safe tar extraction.

Downloads are opt-in (``dataset.download=true``), go to a temporary file in the destination
folder, are verified against the published md5 and only then renamed into place, so an
interrupted or corrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from dsd2.errors import UserError

_CHUNK = 1 << 20


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, md5: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``md5``; return ``dest``.

    If ``dest`` already exists with the right md5 nothing is downloaded; with another md5 it is
    refused (a file dsd2 did not write is never replaced). Network failures and checksum
    mismatches raise :class:`UserError` saying how to get the file by hand.
    """
    dest = Path(dest)
    if dest.is_file() and md5_file(dest) == md5:
        return dest
    if dest.exists() or dest.is_symlink():  # not the published file: someone's own, never replaced
        raise UserError(
            f"{dest} is there but is not the file {url} publishes (md5 {md5}): dsd2 does not replace it; "
            "move it away to download the published one, or keep your copy and set dataset.download=false"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {dest.parent} for the download: {e}") from e
    manual = f"download {url} by hand (md5 {md5}) and place it at {dest}"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"could not download {url} ({reason}); are you offline? Otherwise {manual}") from e
        except OSError as e:
            raise UserError(f"could not write the download of {url} to {dest.parent}: {e}") from e
        got = h.hexdigest()
        if got != md5:
            raise UserError(f"checksum mismatch for {url}: md5 {got}, expected {md5}; retry, or {manual}")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\\" in name:
        raise UserError(f"refusing to extract {archive}: member {name!r} has an absolute path or '..'")
    if not (member.isfile() or member.isdir()):
        raise UserError(
            f"refusing to extract {archive}: member {name!r} is a link or special file; "
            "a dataset archive should hold only plain files and folders"
        )


def safe_extract_tar(archive: str | Path, dest: str | Path, *, expect_top: str | None = None) -> Path:
    """Extract a (gzip) tar archive into ``dest`` safely and return ``dest``.

    Every member is checked *before* anything is written: absolute paths, ``..`` components,
    links and device files are refused with :class:`UserError`. If ``expect_top`` is given,
    every member must lie under that top-level folder. Extraction happens in a temporary
    folder next to the destination and the top-level entries are renamed into place, so an
    interrupted extraction leaves no half-written dataset folder behind.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive} is not a readable tar archive ({e}); delete it and obtain it again") from e
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise UserError(f"{archive} is truncated or corrupt ({e}); delete it and obtain it again") from e
        for m in members:
            _check_member(m, archive)
            if expect_top is not None and PurePosixPath(m.name).parts[:1] != (expect_top,):
                raise UserError(f"refusing to extract {archive}: member {m.name!r} is outside {expect_top}/")
        try:
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=dest))
        except OSError as e:
            raise UserError(f"cannot extract {archive} into {dest}: {e}") from e
        try:
            for m in members:
                target = tmp.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                if src is None:  # pragma: no cover - isfile() members always have data
                    continue
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            for top in tmp.iterdir():
                final = dest / top.name
                if final.exists():
                    continue  # keep what is there (e.g. an earlier extraction)
                try:
                    os.replace(top, final)
                except OSError:
                    if not final.exists():  # not a concurrent extraction that won the race
                        raise
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise UserError(f"extracting {archive} into {dest} failed ({e}); is the archive truncated?") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
