"""Safe file I/O: atomic writes, checksummed tensors, manifests, the run lock.

Every write goes to a temporary file in the same folder, is fsynced and renamed over the target,
so a kill leaves either the old or the new file. A folder counts as complete only when its
``MANIFEST.json`` (sha256 of its files, written last) is present and the files match it; a run's
round folders are such folders (:func:`finished_rounds`). What the files of a run directory mean
is :mod:`dsd2.rundir`'s.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dsd2 import safe_read
from dsd2.errors import UserError
from dsd2.file_schemas import Manifest

MANIFEST = "MANIFEST.json"
UMASK = os.umask(0)
os.umask(UMASK)


def round_dir(run_dir: Path, i: int) -> Path:
    return Path(run_dir) / f"round_{i:03d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Folders dsd2 owns while it writes them (a run or sweep directory, under its lock): no entry from
# such a folder down to a file written there may be a symbolic link, or a planted link would
# send config, states and manifests to wherever it points.
_GUARDED: list[Path] = []


def refuse_links(path: str | Path) -> None:
    """Refuse ``path`` when it, or a folder between it and the guarded folder holding it, is a
    symbolic link (one line naming the link)."""
    p = Path(os.path.abspath(path))
    for root in _GUARDED:
        if p == root or not p.is_relative_to(root):
            continue
        cur = root
        for part in p.relative_to(root).parts:
            cur = cur / part
            if os.path.islink(cur):
                raise UserError(
                    f"{cur} is a symbolic link inside {root} (to {os.readlink(cur)}): dsd2 does not write through links; "
                    f"remove it (`rm {cur}`) and retry"
                )


def _first_link(run_dir: Path) -> Path | None:
    """A symbolic link among the entries of ``run_dir`` and of its round folders, if any."""
    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_dir() and entry.name.startswith("round_"):
            link = next((e for e in sorted(entry.iterdir()) if e.is_symlink()), None)
            if link is not None:
                return link
    return None


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); never through a
    symbolic link inside a run directory (:func:`refuse_links`). ``mode``: the permission bits
    (default: readable like any file; a user's file that dsd2 edits keeps its own)."""
    path = Path(path)
    refuse_links(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; choose a writable folder (e.g. --out)") from None
    try:
        os.chmod(tmp, 0o666 & ~UMASK if mode is None else mode)  # mkstemp makes 0600; results should be readable like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                # one message for every command (run, report, export, sweep): running the same
                # command again is right for all of them; a run picks up from its finished rounds
                f"no space left on the device while writing {path}: free some space and run the same command again"
            ) from None
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode(), mode=mode)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_yaml_file(path: str | Path) -> Any:
    """A YAML file dsd2 wrote, through :mod:`dsd2.safe_read` (regular file, size, depth)."""
    return safe_read.read_yaml(path)


_RECOMPUTE = "delete it and resume the run to recompute it"


def read_json(path: str | Path, schema: type[safe_read.M] | None = None, *, hint: str = _RECOMPUTE) -> Any:
    """A JSON file through :mod:`dsd2.safe_read` (regular file, size, depth); with ``schema``
    (:mod:`dsd2.file_schemas`) the validated model."""
    return safe_read.read_json(path, schema, hint=hint)


def read_json_dict(path: str | Path, schema: type[safe_read.M], *, hint: str = _RECOMPUTE) -> Any:
    """The JSON of ``path`` as it is (a plain dict), once it has passed ``schema``."""
    data = safe_read.read_json(path, hint=hint)
    safe_read.validate(data, schema, source=str(path), hint=hint)
    return data


_DIGEST_KEY = "dsd2_sha256"


def _split_safetensors(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(header JSON, data section) of a safetensors byte string."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically, with the sha256 of the tensor data
    in the file's metadata so that any later bit flip is detected on load."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _, data = _split_safetensors(st_save(clean))
    digest = hashlib.sha256(data).hexdigest()
    full = {**(metadata or {}), _DIGEST_KEY: digest}
    raw = st_save(clean, metadata=full)
    atomic_write_bytes(path, raw if len(full) == 1 else _ordered_metadata(raw))


def _ordered_metadata(raw: bytes) -> bytes:
    """``raw`` with its header's metadata keys sorted: safetensors writes them in hash-map order,
    which differs between calls, so the same tensors and metadata gave other bytes (and another
    sha256 in an export's model.json). Offsets are explicit, so the order is free; the header is
    padded with spaces to 8 bytes, as safetensors does."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


# A sanity bound, far above any model dsd2 trains: a file claiming more is not a tensor file.
MAX_TENSOR_BYTES = 1 << 40


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never a pickle); a missing, truncated, corrupt or altered file
    is a clear error naming the file and the way out."""
    path = Path(path)
    way_out = "delete it (or its round_XXX folder) and resume the run to recompute it"
    raw = safe_read.read_bytes(path, max_bytes=MAX_TENSOR_BYTES)
    try:
        tensors = st_load(raw)
        header, data = _split_safetensors(raw)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise UserError(f"{path} is corrupt or not a safetensors file ({err}); {way_out}") from None
    digest = (header.get("__metadata__") or {}).get(_DIGEST_KEY)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise UserError(f"{path} does not match its checksum (corrupt or edited); {way_out}")
    return tensors


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # round-trips exactly
    return v


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV with numbers converted back (empty cells become None)."""
    try:
        raw = safe_read.read_bytes(path, max_bytes=safe_read.MAX_TABLE_BYTES)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {path} as a CSV table ({err}); it is binary, truncated or not dsd2's") from None
    try:
        rows = [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
    except csv.Error as err:
        raise UserError(f"{path} is not a valid CSV table ({err})") from None
    return rows


def _parse_cell(v: str | None) -> Any:
    if v is None or v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def sha256_file(path: Path) -> str:
    """sha256 of a regular file (a FIFO or device is refused, never read)."""
    safe_read.check_regular(path)
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UserError(f"{path} is not a regular file: replace it with the file dsd2 expects")
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, files: list[str]) -> None:
    """Mark ``directory`` complete: checksums of its files, written last and atomically."""
    entries = {name: sha256_file(directory / name) for name in files}
    write_json(directory / MANIFEST, {"files": entries})


def verify_manifest(directory: Path, required: tuple[str, ...] = ()) -> bool:
    """True when the manifest exists; raise UserError when it is malformed, lacks one of the
    ``required`` files, or a listed file is missing or altered."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file where dsd2 keeps a folder: move it away and resume")
    mpath = directory / MANIFEST
    if not mpath.is_file():
        return False
    files = read_json(mpath, Manifest, hint=f"delete {directory} and resume to recompute that round").files
    missing = [name for name in required if name not in files]
    if missing:
        raise UserError(f"{mpath} does not list {', '.join(missing)}; delete {directory} and resume to recompute that round")
    for name, digest in files.items():
        f = directory / name
        if not f.is_file():
            raise UserError(f"{f} is missing although {mpath} lists it; delete {directory} and resume to recompute that round")
        if sha256_file(f) != digest:
            raise UserError(f"{f} does not match its checksum (corrupt or edited); delete {directory} and resume to recompute that round")
    return True


# What a finished round folder holds (rundir.ROUND_FILES re-states it for readers).
ROUND_FILES = ("state.safetensors", "masks.safetensors", "metrics.json")


def finished_rounds(run_dir: Path) -> list[int]:
    """Indices of rounds 0..k-1 that are complete and consecutive from round 0."""
    done = []
    i = 0
    while verify_manifest(round_dir(run_dir, i), ROUND_FILES):
        done.append(i)
        i += 1
    return done


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files of atomic writes a killed process left in ``run_dir`` and its round
    folders (``.<name>.<random>.tmp``); call only while holding the run's lock."""
    stale = [*run_dir.glob(".*.tmp"), *run_dir.glob("round_*/.*.tmp")]
    for p in stale:
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                p.unlink()
    return stale


def is_locked(run_dir: Path) -> bool:
    """True while a dsd2 process holds the lock of ``run_dir`` (a run in progress)."""
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file (or not a regular file): nobody runs there
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's own lock
    return False


# Descriptors of the run locks this process holds. A flock belongs to the open file, which a
# forked child (a DataLoader worker) shares: the child closes its copies at once, or it would keep
# the run locked after a kill of its parent until it noticed and exited.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on a run directory: a second process on it gets a clear error (a child
    forked while it is held, e.g. a DataLoader worker, does not hold it)."""
    lock = run_dir / ".lock"
    if os.path.islink(run_dir):
        raise UserError(
            f"{run_dir} is a symbolic link (to {os.readlink(run_dir)}): dsd2 writes a run only into a real folder; "
            "remove the link, or give the folder it points to"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a .lock planted as a symlink (a run folder from someone else) must not make
        # us truncate the file it points to
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{lock} is a symbolic link, not a lock file: remove it (`rm {lock}`) and retry") from None
        if run_dir.is_dir():
            raise UserError(
                f"cannot write in {run_dir}: {err.strerror or err}; make it writable, or copy the run folder somewhere writable and resume it there"
            ) from None
        raise UserError(f"cannot create the run directory {run_dir}: {err.strerror or err}; choose a writable --out") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{lock} is not a regular file: remove it and retry")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{run_dir} is in use by another dsd2 process; wait for it to finish or stop it") from None
        _HELD_LOCKS.add(fd)
        link = _first_link(run_dir)
        if link is not None:
            raise UserError(
                f"{link} is a symbolic link inside the run directory (to {os.readlink(link)}): dsd2 does not read or write "
                f"a run through links; remove it (`rm {link}`) and retry"
            )
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        remove_stale_temp_files(run_dir)
        root = Path(os.path.abspath(run_dir))
        _GUARDED.append(root)
        try:
            yield
        finally:
            _GUARDED.remove(root)
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)
