"""A restricted unpickler for data files that are pickles (CIFAR batches, CIFAR-N ``data.pkl``).

``pickle.load`` runs whatever callables the file names, so loading a pickle from the
internet is running code from the internet. :class:`RestrictedUnpickler` resolves only the
handful of globals that numpy arrays and plain containers need; any other global is refused
with a :class:`~dsd2.errors.UserError` *before* it is looked up, so nothing from the file runs.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from dsd2.errors import UserError

# What a truncated or corrupt pickle raises while it is read (never what its code would do:
# nothing outside the allow-list runs).
CORRUPT_PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
    MemoryError,
    OverflowError,
)

# (module, name) as written in the pickle -> (module candidates to import from, attribute).
# numpy 2 moved ``numpy.core`` to ``numpy._core`` (the old path still works but warns);
# pickles written by numpy 1.x name ``numpy.core.multiarray``.
_NUMPY_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMPY_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
ALLOWED_GLOBALS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("numpy.core.multiarray", "_reconstruct"): (_NUMPY_MULTIARRAY, "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (_NUMPY_MULTIARRAY, "_reconstruct"),
    # pickle protocol 5 rebuilds contiguous arrays with numeric._frombuffer(buffer, dtype, shape, order)
    ("numpy.core.numeric", "_frombuffer"): (_NUMPY_NUMERIC, "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): (_NUMPY_NUMERIC, "_frombuffer"),
    ("numpy", "ndarray"): (("numpy",), "ndarray"),
    ("numpy", "dtype"): (("numpy",), "dtype"),
    # protocol < 3 writes Python-3 ``bytes`` as _codecs.encode(latin-1 text, "latin1")
    ("_codecs", "encode"): (("_codecs",), "encode"),
    # plain containers that protocol 2 spells as globals (Python 2 calls the module __builtin__)
    ("builtins", "set"): (("builtins",), "set"),
    ("builtins", "frozenset"): (("builtins",), "frozenset"),
    ("builtins", "bytearray"): (("builtins",), "bytearray"),
    ("__builtin__", "set"): (("builtins",), "set"),
    ("__builtin__", "frozenset"): (("builtins",), "frozenset"),
    ("__builtin__", "bytearray"): (("builtins",), "bytearray"),
}


# The largest array a data pickle may ask for. CIFAR-100's training file, the largest real one,
# holds 50,000 × 3,072 bytes (154 MB); a 126-byte pickle can otherwise ask numpy for gigabytes.
MAX_ARRAY_BYTES = 256 * 2**20
# A data pickle on disk: the arrays it holds plus their framing.
MAX_FILE_BYTES = 2 * MAX_ARRAY_BYTES


def _array_bytes(shape: Any, dtype: Any) -> int:
    import numpy as np

    dims = [shape] if isinstance(shape, int) else list(shape)
    n = 1
    for d in dims:
        n *= int(d)
    return n * np.dtype(dtype).itemsize


def _bounded(allocate: Any, source: str) -> Any:
    """``allocate`` (numpy.ndarray or multiarray._reconstruct) refusing arrays over the budget
    before any memory is taken."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if allocate.__name__ == "_reconstruct":  # _reconstruct(subtype, shape, dtype)
            # the subtype is the (guarded) ndarray the pickle named: numpy needs the class itself
            args = (getattr(args[0], "__wrapped__", args[0]), *args[1:])
            shape, dtype = args[1], args[2]
        else:  # ndarray(shape, dtype=float, ...)
            shape = args[0] if args else kwargs.get("shape", ())
            dtype = args[1] if len(args) > 1 else kwargs.get("dtype", float)
        size = _array_bytes(shape, dtype)
        if size > MAX_ARRAY_BYTES:
            raise UserError(
                f"{source} asks for a {size / 2**20:.0f} MiB array (shape {tuple(shape) if not isinstance(shape, int) else shape}), "
                f"more than a data file of this kind holds ({MAX_ARRAY_BYTES // 2**20} MiB at most): refused, nothing allocated"
            )
        return allocate(*args, **kwargs)

    guarded.__wrapped__ = allocate  # type: ignore[attr-defined]
    return guarded


def _from_data(build: Any, source: str) -> Any:
    """``bytearray``/``set``/``frozenset`` that only copy what the pickle already holds: pickle
    writes them with a bytes/str/list argument (protocol 2: ``bytearray(text, "latin-1")``), never
    a count, so ``bytearray(10**9)`` (a 42-byte file asking for 1 GB) is refused, and an argument
    longer than :data:`MAX_ARRAY_BYTES` too (``frozenset`` of a huge iterable is CPU time)."""

    def guarded(*args: Any) -> Any:
        if len(args) > 2 or (args and not isinstance(args[0], (bytes, bytearray, str, list, tuple, set, frozenset))):
            kind = type(args[0]).__name__ if args else "?"
            raise UserError(f"{source} asks {build.__name__}() of a {kind}: not what a data pickle holds; refused, nothing allocated")
        if args and len(args[0]) > MAX_ARRAY_BYTES:
            raise UserError(f"{source} asks a {build.__name__} of {len(args[0])} items: more than a data file holds; refused")
        return build(*args)

    return guarded


def _resolve(modules: tuple[str, ...], attr: str) -> Any:
    last: Exception | None = None
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:  # pragma: no cover - numpy version dependent
            last = e
    raise ImportError(f"cannot resolve {attr} from {modules}") from last  # pragma: no cover


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`ALLOWED_GLOBALS` (numpy arrays, plain containers).

    ``source`` names the file in error messages.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<bytes>", encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding, fix_imports=True)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        entry = ALLOWED_GLOBALS.get((module, name))
        if entry is None:
            raise UserError(
                f"refusing to unpickle {module}.{name} from {self.source}: only numpy arrays and plain "
                "containers are allowed in a data file (the file may be malicious or not what it claims to be)"
            )
        target = _resolve(*entry)
        if name in ("ndarray", "_reconstruct"):
            return _bounded(target, self.source)
        if name in ("bytearray", "set", "frozenset"):
            return _from_data(target, self.source)
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"refusing to unpickle a persistent id from {self.source}: not a plain data pickle")


def restricted_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; a corrupt pickle raises UserError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except UserError:
        raise
    except CORRUPT_PICKLE_ERRORS as e:
        raise UserError(f"{source} is truncated or corrupt ({type(e).__name__}: {e}); delete it and obtain the file again") from e


def restricted_load(path: str | Path, *, encoding: str = "bytes") -> Any:
    """Read and unpickle the file at ``path`` with :class:`RestrictedUnpickler`."""
    from dsd2.safe_read import read_bytes

    p = Path(path)
    data = read_bytes(p, max_bytes=MAX_FILE_BYTES)  # a regular file (never a FIFO or device), bounded
    return restricted_loads(data, source=str(p), encoding=encoding)
