"""Folders the user names with ``-o`` (export, report): dsd2 replaces only what it wrote there.

What dsd2 writes into such a folder is listed, with each file's sha256, in a file of its own (an
export's ``model.json``, a report's ``.dsd2-report.json``). A later write into the same folder may
replace or remove a file only when the file is a regular file (not a link), has one of the names
that command writes, and still matches that listing: a planted listing grants nothing but files
it can vouch for by their bytes, and a file edited since is the user's. Every other file and
folder stays as it is, and a name the new write needs that is taken by anything else refuses
the write before anything in the folder changes.

Files are built in a hidden staging folder (beside a new ``-o``, renamed into place whole; inside
an existing one, moved in file by file, the listing last).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dsd2 import rundir, store
from dsd2.errors import UserError

# What marks a dsd2 run directory (both written when a run starts).
_RUN_MARKERS = (rundir.CONFIG, rundir.META)


def run_dir_holding(path: Path) -> Path | None:
    """The dsd2 run directory that ``path`` is or lies inside, if any."""
    for p in (path, *path.parents):
        if all((p / m).is_file() for m in _RUN_MARKERS):
            return p
    return None


def check_target(out: Path, flag: str = "-o") -> None:
    """Refuse an output folder that is a link (live or dangling), a file, inside a run directory,
    or a name the file system cannot hold."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as err:  # a name too long for the file system, a path through a file
        raise UserError(f"{flag} {str(out)[:200]}: {err.strerror or err}; give another folder") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UserError(f"{flag} {out} is a symbolic link (to {os.readlink(out)}): give a real folder, dsd2 does not write through links")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{flag} {out} is a file: give a folder")
    inside = run_dir_holding(Path(os.path.abspath(out)))
    if inside is not None:
        raise UserError(f"{flag} {out} is inside the run directory {inside}: write outside every run directory")


def regular_file(path: Path) -> bool:
    """True for a regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def owned(out: Path, listing: Mapping[str, Any], allowed: Callable[[str], bool]) -> set[str]:
    """The names of ``listing`` (relative path -> sha256) that are ours in ``out``: an allowed
    name, a regular file under ``out`` (no link on the way) whose bytes match the listing."""
    mine = set()
    for name, digest in listing.items():
        if not isinstance(name, str) or not isinstance(digest, str) or not allowed(name):
            continue
        path = out / name
        if path.parent != out and (path.parent.is_symlink() or not path.parent.is_dir()):
            continue
        if regular_file(path) and store.sha256_file(path) == digest:
            mine.add(name)
    return mine


def files_under(folder: Path) -> list[str]:
    """Relative paths of the regular files under ``folder``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if regular_file(p))


def refuse_taken(out: Path, names: list[str], ours: set[str], why: str) -> None:
    """Refuse when one of ``names`` (or its folder) exists in ``out`` and is not ours."""
    for name in names:
        path = out / name
        if path.parent != out and (path.parent.is_symlink() or (path.parent.exists() and not path.parent.is_dir())):
            raise UserError(f"{path.parent} is not a folder dsd2 made: {why}")
        if os.path.lexists(path) and name not in ours:
            raise UserError(f"{path} was not written by dsd2 (or was changed since): {why}")


@contextlib.contextmanager
def staging(out: Path, unwritable: str = "choose a writable -o") -> Iterator[Path]:
    """A hidden temporary folder: beside ``out`` when ``out`` does not exist yet, else inside it.
    Removed at the end (after :func:`publish` it is empty or gone). ``unwritable``: the way out
    the refusal offers when it cannot be made (a command without ``-o`` says its own)."""
    fresh = not os.path.lexists(out)
    where = out.parent if fresh else out
    try:
        if fresh:
            where.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dsd2-", suffix=".tmp", dir=where))
    except OSError as err:
        raise UserError(f"cannot write in {where}: {err.strerror or err}; {unwritable}") from None
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, ours: set[str], *, listing: str, why: str) -> None:
    """Put the files staged in ``tmp`` into ``out``. A new ``out`` is ``tmp`` renamed. Into an
    existing one each file is moved over the same name, which must be absent or in ``ours``; the
    names of ``ours`` not written again are removed; ``listing`` goes first (removed) and last
    (written), so a kill midway leaves no listing that vouches for files it does not describe."""
    names = files_under(tmp)
    os.chmod(tmp, 0o777 & ~store.UMASK)  # mkdtemp makes 0700; the output is shared like any folder
    try:
        if not os.path.lexists(out):
            os.replace(tmp, out)
            return
        refuse_taken(out, names, ours, why)
        if listing in ours:
            os.unlink(out / listing)
        for name in names:
            if name != listing:
                (out / name).parent.mkdir(exist_ok=True)
                os.replace(tmp / name, out / name)
        for name in sorted(ours - set(names) - {listing}):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out / name)
        if listing in names:
            os.replace(tmp / listing, out / listing)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
