"""The format of an export folder, and the checks a reader runs before trusting one.

An export is a folder users download from others, so nothing in it is used before it is checked:
``model.json`` is validated against :class:`ExportInfo` (types, bounds, structured shapes, the
files it lists), each listed file must be a regular file in the folder (no path, no link) with the
listed size and sha256, and ``model.safetensors``'s header (shapes, dtypes, offsets, and a
compressed file's dense shapes) is checked against the file's size before any tensor is read.
Every refusal is one :class:`~dsd2.errors.UserError` line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from dsd2.errors import UserError

FORMAT = "dsd2-export"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
# Layout of model.safetensors, also in its metadata (safetensors readers see it without model.json).
DENSE, COMPRESSED = "dense", "sparse-values"
# Key suffixes of a compressed tensor; '#' cannot occur in a state-dict key (module attribute names).
VALUES, BITMASK, INDICES = "#values", "#bitmask", "#indices"
# The names an export writes: the only files model.json may list (so no path leaves the folder),
# and the only ones `export --force` may replace (dsd2.outdir).
EXPORT_NAMES = frozenset({MODEL_JSON, WEIGHTS, ONNX, ONNX + ".data"})
# model.json is a few kB to a few MB (per-layer tables): larger is not ours.
MAX_MODEL_JSON = 64 << 20
# A safetensors header is a few kB per thousand tensors; safetensors itself caps it at 100 MB.
MAX_HEADER = 100_000_000
MAX_DIMS = 8

_Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Dim = Annotated[int, Field(ge=0, le=2**40)]
_Shape = Annotated[list[_Dim], Field(max_length=MAX_DIMS)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class FileEntry(_Strict):
    bytes: int = Field(ge=0)
    sha256: _Sha256


class ModelSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    options: dict[str, Any]


class Structured(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")  # layers, kept_whole, params: informative
    shapes: dict[str, Annotated[_Shape, Field(min_length=1)]]


class ExportInfo(_Strict):
    """What a reader uses of ``model.json``; the other keys (provenance, accuracies, sparsity)
    are informative and pass through."""

    model_config = ConfigDict(strict=True, extra="allow")
    format: Literal["dsd2-export"]
    format_version: int = Field(ge=1, le=FORMAT_VERSION)
    weights_format: Literal["dense", "sparse-values"] = "dense"
    model: ModelSpec
    plugins: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=100)
    num_classes: int = Field(ge=1, le=1_000_000)
    in_channels: int = Field(ge=1, le=1 << 16)
    input_size: int = Field(ge=1, le=1 << 20)
    input_shape: Annotated[list[Annotated[int, Field(ge=1, le=1 << 20)]], Field(min_length=1, max_length=4)]
    files: dict[str, FileEntry]
    structured: Structured | None = None

    @field_validator("files")
    @classmethod
    def _listed_files(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        other = sorted(set(files) - EXPORT_NAMES)
        if other:
            raise ValueError(
                f"lists {other[0][:80]!r}, which is not a file an export writes ({', '.join(sorted(EXPORT_NAMES - {MODEL_JSON}))})"
            )
        if WEIGHTS not in files:
            raise ValueError(f"does not list {WEIGHTS} with its sha256")
        return files


def _regular(path: Path, what: str) -> os.stat_result:
    """lstat of ``path``, refused unless it is a regular file (a link, FIFO or folder is not)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing although {what}") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise UserError(f"{path} is {kind}: an export holds only plain files; get the folder again from its author")
    return st


def _json_bytes(raw: bytes, path: Path) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than any file of ours
        raise UserError(f"{path} is not valid JSON (corrupt, or not dsd2's)") from None


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    return f"{where}: {e['msg'][:200]}"


def parse_info(export_dir: Path) -> dict[str, Any]:
    """``model.json`` of ``export_dir``, validated against :class:`ExportInfo` (not yet the files)."""
    path = export_dir / MODEL_JSON
    if not export_dir.is_dir():
        raise UserError(f"{export_dir} is not a folder: give the folder `dsd2 export` wrote")
    if not os.path.lexists(path):
        raise UserError(f"{export_dir} is not a dsd2 export (no {MODEL_JSON}); give the folder `dsd2 export` wrote")
    st = _regular(path, "the export needs it")
    if st.st_size > MAX_MODEL_JSON:
        raise UserError(f"{path} is {st.st_size:,} bytes, far more than an export's description: not dsd2's")
    info = _json_bytes(path.read_bytes(), path)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{path} is not a dsd2 export description")
    version = info.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise UserError(f"{path} has format version {version}; this dsd2 reads up to {FORMAT_VERSION}: upgrade dsd2")
    try:
        ExportInfo.model_validate(info)
    except ValidationError as err:
        raise UserError(f"{path} is not a valid dsd2 export description ({_first_error(err)}): export the run again") from None
    return info


def check_files(export_dir: Path, info: dict[str, Any], sha256: Any) -> None:
    """Every file ``model.json`` lists: a regular file of the folder with its size and sha256."""
    path = export_dir / MODEL_JSON
    for name, entry in info["files"].items():
        f = export_dir / name
        st = _regular(f, f"{path} lists it")
        if st.st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
            raise UserError(f"{f} does not match its checksum in {path} (corrupt or edited): export the run again")


# safetensors dtype -> bytes per element
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def tensor_header(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """(name -> (dtype, shape), metadata) of a safetensors file, each tensor's shape, dtype and
    offsets checked against the file's size (nothing is allocated from what the header claims)."""
    size = os.lstat(path).st_size
    bad = f"{path} is corrupt or not a safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER, size - 8):
            raise UserError(f"{bad} (its header length does not fit the file's {size:,} bytes)")
        header = _json_bytes(f.read(n), path)
    if not isinstance(header, dict):
        raise UserError(f"{bad} (its header is not a mapping)")
    data_len = size - 8 - n
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise UserError(f"{bad} (its metadata is not a mapping of strings)")
    out: dict[str, tuple[str, list[int]]] = {}
    for name, t in header.items():
        ok = isinstance(t, dict) and t.get("dtype") in _DTYPE_BYTES and isinstance(t.get("shape"), list)
        shape = t.get("shape") if ok else None
        offsets = t.get("data_offsets") if ok else None
        ok = ok and isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_nonneg_int(s) for s in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(_nonneg_int(o) for o in offsets)
        if not ok:
            raise UserError(f"{bad} (tensor {str(name)[:80]!r} has no valid dtype, shape and offsets)")
        assert isinstance(shape, list) and isinstance(offsets, list)
        start, end = offsets
        if not start <= end <= data_len or end - start != math.prod(shape) * _DTYPE_BYTES[t["dtype"]]:
            raise UserError(f"{bad} (tensor {str(name)[:80]!r}: shape {shape} does not fit its bytes in the file)")
        out[name] = (t["dtype"], [int(s) for s in shape])
    return out, meta


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**62


def dense_shapes(path: Path, header: dict[str, tuple[str, list[int]]], meta: dict[str, str], weights_format: str) -> dict[str, list[int]]:
    """The dense state dict's shapes that ``model.safetensors`` holds: its own tensors' for a dense
    file; for a compressed one, each ``name#values`` with its bitmask or indices checked against
    the dense shape the metadata gives (counts and sizes agree before anything is unpacked)."""
    if weights_format != COMPRESSED:
        return {k: shape for k, (_, shape) in header.items()}
    bad = f"{path} is not a valid compressed export"
    raw = meta.get("dsd2_shapes")
    shapes = _json_bytes(raw.encode(), path) if isinstance(raw, str) else None
    ok = isinstance(shapes, dict) and all(
        isinstance(s, list) and len(s) <= MAX_DIMS and all(_nonneg_int(d) for d in s) for s in shapes.values()
    )
    if not ok:
        raise UserError(f"{bad} (its dsd2_shapes metadata is missing or malformed)")
    assert isinstance(shapes, dict)
    out = {k: shape for k, (_, shape) in header.items() if not k.endswith((VALUES, BITMASK, INDICES))}
    packed = {k for k in header if k.endswith((VALUES, BITMASK, INDICES))}
    for k, shape in shapes.items():
        n = math.prod(shape)
        values, bits, where = header.get(k + VALUES), header.get(k + BITMASK), header.get(k + INDICES)
        if values is None or len(values[1]) != 1 or (bits is None) == (where is None) or k in out:
            raise UserError(f"{bad} (tensor {k[:80]!r} lacks its values, or has both or neither of a bitmask and indices)")
        kept = values[1][0]
        if bits is not None:
            fits = bits[0] == "U8" and bits[1] == [(n + 7) // 8] and kept <= n
        else:
            fits = where is not None and where[0] == "I32" and where[1] == [kept] and kept <= n
        if not fits:
            raise UserError(f"{bad} (tensor {k[:80]!r}: {kept} values do not fit shape {shape})")
        out[k] = list(shape)
        packed -= {k + VALUES, k + BITMASK, k + INDICES}
    if packed:
        raise UserError(f"{bad} (packed tensor {sorted(packed)[0][:80]!r} has no shape in its metadata)")
    return out
