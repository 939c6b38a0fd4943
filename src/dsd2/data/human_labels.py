"""Real (human) label noise: the CIFAR-10N / CIFAR-100N label files of UCSC-REAL.

The published files ``CIFAR-10_human.pt`` and ``CIFAR-100_human.pt`` are torch zip archives
(``<prefix>/data.pkl`` plus bookkeeping members) whose ``data.pkl`` is a pickled ``dict`` of
50,000-long int64 *numpy* arrays. ``torch.load(weights_only=True)`` refuses them (numpy globals
are not on its allow-list) and ``weights_only=False`` would run whatever the file names. Here
``data.pkl`` is read with :mod:`dsd2.data.safe_pickle`'s restricted unpickler, which resolves
only the numpy array globals (``numpy[._]core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``), ``_codecs.encode`` and plain containers; any other global is refused before it
is looked up, so nothing from the file runs.

Public API::

    HUMAN_LABEL_KEYS                 # {"cifar10": (...), "cifar100": (...)}
    HUMAN_LABEL_NOISE_RATES          # published noise rates of the noisy keys
    load_label_file(path) -> dict[str, np.ndarray]
    human_labels(path, key, *, expected_len, num_classes, clean_labels=None) -> torch.Tensor (int64)
    realized_noise_rate(noisy, clean) -> float
    soft_labels(path, key, *, expected_len, num_classes) -> torch.Tensor (N x K float32)

Accepted formats (sniffed from the content, not the suffix):

* torch zip archive (``.pt``/``.pth``): ``torch.load(weights_only=True)`` first (a dict of
  tensors saved by ``torch.save``); if it refuses, ``*/data.pkl`` with the restricted unpickler
  (the CIFAR-N files);
* the legacy (pre-1.6, non-zip) torch format and plain pickles, restricted likewise;
* ``.npy`` (``allow_pickle=False``; a single array is exposed under the key ``"labels"``, a
  structured array under its field names) and ``.npz`` (one key per member);
* ``.safetensors``.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsd2.data.safe_pickle import CORRUPT_PICKLE_ERRORS, RestrictedUnpickler
from dsd2.errors import UserError

HUMAN_LABEL_KEYS: dict[str, tuple[str, ...]] = {
    "cifar10": ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"),
    "cifar100": ("clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label"),
}

# Noise rates published with CIFAR-10N / CIFAR-100N (fraction of the 50,000 train labels that
# differ from ``clean_label``): a sanity reference, not used for validation.
HUMAN_LABEL_NOISE_RATES: dict[str, dict[str, float]] = {
    "cifar10": {
        "aggre_label": 0.0901,
        "random_label1": 0.1723,
        "random_label2": 0.1812,
        "random_label3": 0.1764,
        "worse_label": 0.4021,
    },
    "cifar100": {"noisy_label": 0.4020},
}

# The key under which a file holding one bare array (``.npy``, a pickled/saved single tensor)
# exposes it.
SINGLE_ARRAY_KEY = "labels"

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive
_NPY_MAGIC = b"\x93NUMPY"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 torch.save file
_MAX_MEMBER_BYTES = 1 << 30  # refuse absurd (zip-bomb) members; a CIFAR-N data.pkl is ~5 MB

_FORMATS_HINT = (
    "expected a CIFAR-N label file (torch archive such as CIFAR-10_human.pt / CIFAR-100_human.pt), a .npy/.npz file or a .safetensors file"
)

# A torch zip archive can also fail in struct unpacking of its records.
_CORRUPT_LABEL_FILE_ERRORS: tuple[type[BaseException], ...] = (*CORRUPT_PICKLE_ERRORS, struct.error)


# --------------------------------------------------------------------------------------------
# loading


def load_label_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a label file safely and return its arrays by name (numpy, as stored).

    Raises :class:`UserError` for a missing/unreadable file, an unknown format, a corrupt or
    truncated file, or a pickle that names anything but numpy arrays and plain containers.
    Entries that are not arrays (strings, nested dicts, ...) are left out.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"label file {p} does not exist: check dataset.label_file (e.g. CIFAR-10_human.pt)")
    if not p.is_file():
        raise UserError(f"label file {p} is not a regular file: point dataset.label_file at the file itself")
    from dsd2.data.safe_pickle import MAX_FILE_BYTES
    from dsd2.safe_read import read_bytes

    data = read_bytes(p, max_bytes=MAX_FILE_BYTES, what="label file")
    if not data:
        raise UserError(f"label file {p} is empty: {_FORMATS_HINT}; obtain the file again")

    if data.startswith(_ZIP_MAGIC):
        obj = _load_zip(p, data)
    elif data.startswith(_NPY_MAGIC):
        obj = _load_npy(p, data)
    elif _looks_like_safetensors(data):
        obj = _load_safetensors(p, data)
    elif data[:1] == b"\x80":  # pickle protocol >= 2: legacy torch.save or a plain pickle
        obj = _load_pickle_file(p, data)
    else:
        raise UserError(f"{p} is not a label file in a known format: {_FORMATS_HINT}")
    return _to_arrays(obj, p)


def _load_zip(p: Path, data: bytes) -> Any:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise UserError(f"{p} is a truncated or corrupt zip archive ({e}); delete it and obtain the file again") from e
    with zf:
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not pkl:
            if names and all(n.endswith(".npy") for n in names):
                return _load_npz(p, data)
            raise UserError(
                f"{p} is a zip archive but neither a torch archive (no <prefix>/data.pkl member) nor an .npz file: {_FORMATS_HINT}"
            )
        if len(pkl) > 1:
            raise UserError(f"{p} holds several data.pkl members ({', '.join(pkl)}): not a single torch archive")

        # A dict of tensors saved by torch.save loads with torch's own safe unpickler; the
        # CIFAR-N files (numpy arrays) make it refuse, and we fall back to the restricted one.
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            torch_error = e

        info = zf.getinfo(pkl[0])
        if info.file_size > _MAX_MEMBER_BYTES:
            raise UserError(f"{p}: {pkl[0]} claims {info.file_size} bytes, too large for a label file; refusing it")
        try:
            raw = zf.read(pkl[0])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
            raise UserError(
                f"{p} is a truncated or corrupt zip archive (reading {pkl[0]}: {e}); delete it and obtain the file again"
            ) from e
        except Exception as e:  # zlib.error and friends for a damaged compressed member
            raise UserError(f"{p} is corrupt (reading {pkl[0]}: {type(e).__name__}: {e}); obtain the file again") from e
    return _restricted_stream(raw, source=f"{p}", first_only=True, torch_error=torch_error)


def _load_npz(p: Path, data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        raise UserError(
            f"cannot read {p} as .npz without pickle ({e}); save the labels as integer arrays (object arrays are refused)"
        ) from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{p} is a truncated or corrupt .npz file ({e}); obtain the file again") from e


def _load_npy(p: Path, data: bytes) -> Any:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "allow_pickle" in msg or "Object arrays" in msg:
            raise UserError(
                f"{p} holds an object array, which needs pickle to load; refusing it: save the labels "
                "as an integer array (np.save(path, labels.astype(np.int64)))"
            ) from e
        raise UserError(f"{p} is a truncated or corrupt .npy file ({e}); obtain the file again") from e
    except (OSError, EOFError) as e:
        raise UserError(f"{p} is a truncated or corrupt .npy file ({e}); obtain the file again") from e
    if arr.dtype.names:  # structured array: one key per field
        return {name: np.ascontiguousarray(arr[name]) for name in arr.dtype.names}
    return arr


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def _load_safetensors(p: Path, data: bytes) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load_numpy

    try:
        return st_load_numpy(data)
    except (SafetensorError, ValueError, TypeError, OSError) as e:
        # dtypes numpy cannot hold (bf16, ...) fail in the numpy backend: try torch's
        try:
            from safetensors.torch import load as st_load_torch

            return st_load_torch(data)
        except Exception:
            pass
        raise UserError(f"{p} is a truncated or corrupt .safetensors file ({e}); obtain the file again") from e


def _load_pickle_file(p: Path, data: bytes) -> Any:
    """Legacy (non-zip) torch.save file or a plain pickle, both read with restrictions."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        torch_error = e
    return _restricted_stream(data, source=str(p), first_only=False, torch_error=torch_error)


def _restricted_stream(data: bytes, *, source: str, first_only: bool, torch_error: BaseException | None = None) -> Any:
    """Unpickle the payload of ``data`` with the restricted unpickler.

    ``first_only``: ``data`` is a single pickle (a zip archive's data.pkl). Otherwise ``data``
    may be a legacy torch.save stream (magic number, protocol, sys info, payload, storage keys)
    or one plain pickle; either way the payload is returned.
    """
    buf = io.BytesIO(data)

    def load_one() -> Any:
        try:
            return RestrictedUnpickler(buf, source=source).load()
        except UserError as e:
            if "persistent id" in str(e) and torch_error is not None:
                # tensors (storages): only torch's own safe loader reads them, and it failed
                reason = str(torch_error).strip().splitlines()[0] if str(torch_error).strip() else ""
                raise UserError(
                    f"{source} holds tensors but torch.load(weights_only=True) cannot read it "
                    f"({type(torch_error).__name__}: {reason[:300]}); the file is corrupt or not a label file"
                ) from torch_error
            raise
        except _CORRUPT_LABEL_FILE_ERRORS as e:
            raise UserError(f"{source} is truncated or corrupt ({type(e).__name__}: {e}); delete it and obtain the file again") from e

    first = load_one()
    if first_only or not (isinstance(first, int) and first == _TORCH_LEGACY_MAGIC):
        return first
    load_one()  # protocol version
    load_one()  # sys info
    return load_one()  # the saved object (tensor storages would need persistent ids: refused)


def _to_arrays(obj: Any, p: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        arr = _as_array(obj)
        if arr is None:
            raise UserError(f"{p} holds a {type(obj).__name__}, not a dict of label arrays (or one label array): {_FORMATS_HINT}")
        return {SINGLE_ARRAY_KEY: arr}
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        name = k.decode("utf-8", "replace") if isinstance(k, (bytes, bytearray)) else str(k)
        arr = _as_array(v)
        if arr is not None:
            out[name] = arr
    if not out:
        raise UserError(f"{p} holds a dict without any label arrays (keys: {sorted(map(str, obj))}): {_FORMATS_HINT}")
    return out


def _as_array(v: Any) -> np.ndarray | None:
    if isinstance(v, np.ndarray):
        return v if v.dtype != object else None
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # bf16 and other dtypes numpy lacks: still reported as non-integer later
            return t.float().numpy()
    if isinstance(v, (list, tuple)) and v:
        try:
            arr = np.asarray(v)
        except (ValueError, TypeError):
            return None
        return arr if arr.dtype != object and arr.dtype.kind in "biuf" else None
    return None


# --------------------------------------------------------------------------------------------
# validation


def _as_numpy_labels(x: np.ndarray | torch.Tensor | Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def human_labels(
    path: str | Path,
    key: str | None,
    *,
    expected_len: int,
    num_classes: int,
    clean_labels: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """The labels stored under ``key`` in the label file at ``path``, validated, as int64.

    ``expected_len`` is the size of the dataset's *full* training set in its official order
    (50,000 for CIFAR), ``num_classes`` the number of classes the labels must lie in.
    ``key=None`` picks the file's only array (a bare ``.npy``). When ``clean_labels`` (the
    dataset's own train labels) is given and the file has a ``clean_label`` array, the two must
    agree everywhere, otherwise the file belongs to another dataset or another sample order.
    Every problem raises :class:`UserError`.
    """
    p = Path(path)
    arrays = load_label_file(p)
    present = ", ".join(sorted(arrays))
    if key is None:
        if len(arrays) != 1:
            raise UserError(f"{p} holds several label arrays ({present}): choose one with dataset.label_key")
        key = next(iter(arrays))
    if key not in arrays:
        raise UserError(f"{p} has no labels named {key!r}; the keys present are: {present} (set dataset.label_key)")
    arr = _check_labels(arrays[key], p, key, expected_len=expected_len, num_classes=num_classes)

    if clean_labels is not None:
        ref = _as_numpy_labels(clean_labels).reshape(-1)
        if ref.shape[0] != expected_len:
            raise UserError(
                f"the dataset's clean training labels number {ref.shape[0]}, but expected_len is {expected_len}: "
                "apply the label file to the full training set in its official order, before any split or subset"
            )
        if "clean_label" in arrays:
            file_clean = np.asarray(arrays["clean_label"]).reshape(-1)
            if file_clean.shape[0] != ref.shape[0] or not np.issubdtype(file_clean.dtype, np.number):
                raise UserError(
                    f"the clean_label array of {p} has {file_clean.shape[0]} entries, the dataset's training set "
                    f"has {ref.shape[0]}: the label file does not belong to this dataset"
                )
            diff = np.flatnonzero(file_clean.astype(np.int64, copy=False) != ref.astype(np.int64, copy=False))
            if diff.size > 0:
                raise UserError(
                    f"the label file {p} does not belong to this dataset/order: its clean_label disagrees with the "
                    f"dataset's training labels at {diff.size} of {ref.shape[0]} positions (first at index "
                    f"{int(diff[0])}). Use CIFAR-10_human.pt with cifar10 and CIFAR-100_human.pt with cifar100, "
                    "on the official training set in its original order (before any train/val split or subset)"
                )
    return torch.from_numpy(np.array(arr, dtype=np.int64, copy=True))


SOFT_ROW_TOL = 1e-4  # float32 files: rows of class probabilities sum to 1 only up to rounding


def soft_labels(path: str | Path, key: str | None, *, expected_len: int, num_classes: int) -> torch.Tensor:
    """Per-sample class probabilities (soft labels) stored under ``key`` in the label file at
    ``path``: an ``expected_len × num_classes`` numeric array, finite, non-negative, each row
    summing to 1 within :data:`SOFT_ROW_TOL`. Returned as float32, rows renormalised to sum 1.
    Every problem raises :class:`UserError`."""
    p = Path(path)
    arrays = load_label_file(p)
    present = ", ".join(sorted(arrays))
    if key is None:
        if len(arrays) != 1:
            raise UserError(f"{p} holds several arrays ({present}): choose the soft labels with dataset.label_key")
        key = next(iter(arrays))
    if key not in arrays:
        raise UserError(f"{p} has no array named {key!r}; the keys present are: {present} (set dataset.label_key)")
    arr = np.asarray(arrays[key])
    if arr.ndim != 2 or arr.shape != (expected_len, num_classes):
        raise UserError(
            f"{key!r} in {p} has shape {tuple(arr.shape)}; soft labels must be {expected_len} x {num_classes} (one row of "
            "class probabilities per sample of the full training set, in its official order)"
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{key!r} in {p} has dtype {arr.dtype}; soft labels must be numbers")
    t = torch.from_numpy(np.array(arr, dtype=np.float64, copy=True))
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise UserError(f"{key!r} in {p} holds negative, NaN or infinite probabilities")
    sums = t.sum(1)
    bad = ((sums - 1).abs() > SOFT_ROW_TOL).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise UserError(f"row {i} of {key!r} in {p} sums to {sums[i].item():.6g}, not 1 ({bad.numel()} such rows): not probabilities")
    return (t / sums.unsqueeze(1)).to(torch.float32)


def _check_labels(arr: np.ndarray, p: Path, key: str, *, expected_len: int, num_classes: int) -> np.ndarray:
    if arr.ndim != 1:
        raise UserError(f"{key!r} in {p} has shape {tuple(arr.shape)}; expected a 1-D array of {expected_len} labels")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(
            f"{key!r} in {p} has dtype {arr.dtype}; class labels must be integers (int64 in the CIFAR-N files): "
            "re-save the labels as an integer array"
        )
    if arr.shape[0] != expected_len:
        raise UserError(
            f"{key!r} in {p} has {arr.shape[0]} labels, the dataset's training set has {expected_len}: the label file "
            "must cover the full training set in its official order (CIFAR-10N/100N: 50,000)"
        )
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            bad = int(np.count_nonzero((arr < 0) | (arr >= num_classes)))
            raise UserError(
                f"{key!r} in {p} has {bad} labels outside [0, {num_classes}) (min {lo}, max {hi}): wrong file for a "
                f"{num_classes}-class dataset? (CIFAR-100N's *_coarse_label keys have 20 classes)"
            )
    return arr


def realized_noise_rate(noisy: np.ndarray | torch.Tensor, clean: np.ndarray | torch.Tensor) -> float:
    """Fraction of positions where ``noisy`` differs from ``clean`` (0.0 for empty inputs)."""
    a = _as_numpy_labels(noisy).reshape(-1)
    b = _as_numpy_labels(clean).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"noisy and clean labels differ in length ({a.shape[0]} vs {b.shape[0]})")
    if a.size == 0:
        return 0.0
    return float(np.count_nonzero(a != b)) / float(a.size)


__all__ = [
    "HUMAN_LABEL_KEYS",
    "HUMAN_LABEL_NOISE_RATES",
    "SINGLE_ARRAY_KEY",
    "human_labels",
    "load_label_file",
    "realized_noise_rate",
    "soft_labels",
]
