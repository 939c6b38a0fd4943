"""Splits whose images stay on disk: :class:`PathTable` (the file list) and :class:`ImageFiles`
(rows of it standing where a split's image tensor would be). A types module: the dataset base
(:mod:`dsd2.data.core`) names these without knowing the image-folder dataset that makes them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class PathTable:
    """Relative image paths under ``root`` in two numpy arrays (no per-path Python object, so
    forked DataLoader workers do not copy a million strings through reference counting)."""

    root: str
    blob: np.ndarray  # uint8: the UTF-8 relative paths back to back, "/"-separated
    offsets: np.ndarray  # int64, len(self) + 1

    @classmethod
    def from_paths(cls, root: str | Path, relative: list[str]) -> PathTable:
        encoded = [p.encode() for p in relative]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(str(root), blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def relative(self, row: int) -> str:
        return self.blob[self.offsets[row] : self.offsets[row + 1]].tobytes().decode()

    def path(self, row: int) -> str:
        return os.path.join(self.root, *self.relative(row).split("/"))

    def digest(self) -> str:
        """sha256 of the relative paths in row order (what a run directory records)."""
        h = hashlib.sha256(self.offsets.tobytes())
        h.update(self.blob.tobytes())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """A split whose images stay on disk: row i is ``table`` row ``rows[i]``, decoded on demand to
    uint8 ``3 × image_size × image_size``. Stands where a split's image tensor would be
    (``shape``, ``dim()``, ``len``); :meth:`take` selects rows."""

    table: PathTable
    rows: np.ndarray  # int64 rows of ``table``
    image_size: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), 3, self.image_size, self.image_size)

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: torch.Tensor | np.ndarray) -> ImageFiles:
        index = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        return ImageFiles(self.table, self.rows[index.astype(np.int64)], self.image_size)

    def path(self, i: int) -> str:
        return self.table.path(int(self.rows[i]))
