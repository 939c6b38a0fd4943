"""A transition matrix (``noise.matrix``): its rows checked, or read from a ``.npy`` / ``.yaml`` file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from dsd2.config.safe_yaml import MAX_CONFIG_NODES, load_yaml_text
from dsd2.errors import UserError

# Rows of a transition matrix must sum to 1 within this (dsd2.noise checks the same and renormalises).
MATRIX_ROW_TOL = 1e-6


def check_transition_rows(rows: list[list[float]]) -> None:
    """A transition matrix's shape and entries (ValueError): square, finite, non-negative, rows
    summing to 1 within :data:`MATRIX_ROW_TOL`. The dataset's K is checked when labels are made."""
    k = len(rows)
    if k < 2 or any(len(r) != k for r in rows):
        raise ValueError(f"must be a square K x K matrix with K >= 2, got {k} rows of lengths {sorted({len(r) for r in rows})}")
    for i, row in enumerate(rows):
        if any(v != v or v in (float("inf"), float("-inf")) for v in row):
            raise ValueError(f"row {i} holds NaN or infinite entries")
        if any(v < 0 for v in row):
            raise ValueError(f"row {i} has a negative entry: {min(row)}")
        if abs(sum(row) - 1.0) > MATRIX_ROW_TOL:
            raise ValueError(f"row {i} sums to {sum(row):.9g}, not 1 (row i is P(noisy | clean = i))")


# A transition matrix file is checked before its bytes are parsed: the suffix, that it is a
# regular file (not /dev/zero or a FIFO), its size, and for .npy the shape its header declares.
MAX_MATRIX_CLASSES = 1000
MAX_MATRIX_YAML_BYTES = 1 << 20  # a YAML matrix past ~200 classes: write it as .npy


def read_matrix_file(path: str) -> tuple[list[list[float]], str]:
    """The rows of a ``.npy`` (numeric, read without unpickling) or ``.yaml`` matrix file, and the
    sha256 of the file (ValueError when it cannot be read)."""
    from dsd2.safe_read import read_bytes

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".yaml", ".yml"):
        raise ValueError(f"the matrix file {path} must end in .npy or .yaml")
    npy_cap = 4096 + 8 * MAX_MATRIX_CLASSES**2
    try:
        raw = read_bytes(p, max_bytes=npy_cap if suffix == ".npy" else MAX_MATRIX_YAML_BYTES)
    except UserError as err:
        raise ValueError(f"cannot read the matrix file: {err}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if suffix == ".npy":
        import io

        import numpy as np

        buf = io.BytesIO(raw)
        fmt = np.lib.format
        try:
            version = fmt.read_magic(buf)
            header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = header(buf)  # the shape before any data is read
        except (ValueError, SyntaxError, TypeError) as err:
            raise ValueError(f"{path} is not a .npy file: {err}") from None
        if dtype.hasobject:
            raise ValueError(f"{path} is not a numeric .npy array (pickled arrays are refused): its dtype is {dtype}")
        if len(shape) != 2 or not all(2 <= n <= MAX_MATRIX_CLASSES for n in shape) or dtype.kind not in "biuf":
            raise ValueError(
                f"{path} must hold a 2-D numeric K x K array with 2 <= K <= {MAX_MATRIX_CLASSES}, got dtype {dtype} and shape {shape}"
            )
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as err:  # numpy's refusal of an object (pickled) array lands here too
            raise ValueError(f"{path} is not a numeric .npy array (pickled arrays are refused): {err}") from None
        if arr.dtype.kind not in "biuf" or arr.ndim != 2:
            raise ValueError(f"{path} must hold a 2-D numeric array, got dtype {arr.dtype} and shape {arr.shape}")
        return arr.astype(np.float64).tolist(), digest
    try:
        # a K x K matrix may hold more values than a config; without aliases never more than its bytes
        rows = load_yaml_text(raw.decode(), source=str(path), max_nodes=max(len(raw), MAX_CONFIG_NODES))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    except UserError as err:
        raise ValueError(str(err)) from None
    if isinstance(rows, dict) and "matrix" in rows:
        rows = rows["matrix"]
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise ValueError(f"{path} must hold a list of rows (or a mapping with key matrix)")
    return rows, digest
