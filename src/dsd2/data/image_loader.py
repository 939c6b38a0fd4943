"""Decoding an image folder's files: PIL to RGB uint8, torchvision transforms v2, and
:class:`ImageLoader`'s DataLoader workers, each random transform seeded by (epoch seed, sample
index) so the result does not depend on the number of workers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dsd2 import safe_read
from dsd2.data.core import AugmentSpec
from dsd2.data.files import ImageFiles, PathTable
from dsd2.errors import UserError

EVAL_CROP_FRACTION = 0.875  # evaluation: resize the shorter side to image_size / 0.875, centre-crop image_size
MAX_AUTO_WORKERS = 8

# What a loader item asks for: a seeded random training transform, the evaluation transform, or
# the resize + centre crop of the memory path.
TRAIN, EVAL, RESIDENT = 0, 1, 2


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def decode_rgb(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 ``3 × H × W`` RGB (PIL decodes; palette, grey, alpha, CMYK
    and 16-bit images are converted); UserError naming the file when it does not decode."""
    from PIL import Image

    safe_read.check_regular(path, what="image")  # a FIFO would block the decoder forever, a device never ends
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: scale, PIL's RGB conversion would clip
                arr16 = np.asarray(im, dtype=np.float64)
                grey = np.clip(arr16 / (65535.0 if im.mode != "I" or arr16.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255)
                rgb = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
            else:
                rgb = np.array(im.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct/zlib errors, DecompressionBombError
        raise UserError(f"cannot decode image {path}: {_first_line(err)}; remove or replace the file") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UserError(f"cannot decode image {path}: it decodes to shape {rgb.shape}; remove or replace the file")
    return torch.from_numpy(rgb).permute(2, 0, 1)


def eval_resize(image_size: int) -> int:
    """Shorter side before the evaluation centre crop: image_size / 0.875 (256 for 224)."""
    return max(image_size, round(image_size / EVAL_CROP_FRACTION))


def _transforms(image_size: int, augment: AugmentSpec) -> dict[int, Any]:
    from torchvision.transforms import v2

    s = image_size
    train: list[Any] = [v2.RandomResizedCrop(s, antialias=True)] if augment.resized_crop else [v2.Resize(eval_resize(s)), v2.CenterCrop(s)]
    if augment.flip:
        train.append(v2.RandomHorizontalFlip())
    return {
        TRAIN: v2.Compose(train),
        EVAL: v2.Compose([v2.Resize(eval_resize(s), antialias=True), v2.CenterCrop(s)]),
        RESIDENT: v2.Compose([v2.Resize(s, antialias=True), v2.CenterCrop(s)]),
    }


_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def sample_seeds(epoch_seed: int, index: np.ndarray) -> np.ndarray:
    """One seed per sample from (epoch seed, sample index): splitmix64, uint64."""
    with np.errstate(over="ignore"):
        z = _U64(epoch_seed) + (index.astype(np.uint64) + _U64(1)) * _GOLDEN
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


class _Items(torch.utils.data.Dataset):
    """Loader items ``(table row, mode, seed)`` → ``(uint8 3×S×S image, decoded ok)``.

    A failed decode returns a black image and False (a worker's exception would reach the main
    process as a multi-line traceback); :class:`ImageLoader` turns it into a UserError naming the
    file. The training transform runs under ``torch.manual_seed(seed)`` in a forked RNG state, so
    it depends on the seed alone, not on which process or what ran before.
    """

    def __init__(self, table: PathTable, image_size: int, augment: AugmentSpec):
        self.table, self.image_size, self.augment = table, image_size, augment
        self._tf: dict[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, bool]:
        row, mode, seed = item
        if self._tf is None:
            self._tf = _transforms(self.image_size, self.augment)
        try:
            img = decode_rgb(self.table.path(row))
        except UserError:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False
        if mode == TRAIN:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self._tf[TRAIN](img)
        else:
            out = self._tf[mode](img)
        return out.contiguous(), True


def _collate(batch: list[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.bool)


@dataclass
class _Plan:
    """The DataLoader's batch sampler: the batches of the pass being read, set before each pass
    (lives in the main process; persistent workers only see the items)."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mode: int = EVAL
    seeds: np.ndarray | None = None
    batch_size: int = 1

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def batch(self, b: int) -> list[tuple[int, int, int]]:
        lo, hi = b * self.batch_size, min(len(self.rows), (b + 1) * self.batch_size)
        rows = self.rows[lo:hi].tolist()
        seeds = self.seeds[lo:hi].tolist() if self.seeds is not None else [0] * len(rows)
        return [(r, self.mode, s) for r, s in zip(rows, seeds)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for b in range(len(self)):
            yield self.batch(b)


def default_workers() -> int:
    """``dataset.workers: auto``: the usable cores less one for the training process, at most 8."""
    from dsd2.threads import usable_cores

    return max(1, min(MAX_AUTO_WORKERS, usable_cores() - 1))


def resolve_workers(workers: int | str | None) -> int:
    if workers is None or workers == "auto":
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"dataset.workers must be an integer >= 0 or auto, got {workers!r}")
    return workers


class ImageLoader:
    """Decodes a folder's files in DataLoader workers (persistent across passes), batch by batch in
    the order asked. One per run: training, evaluation and entropy passes share its workers.

    ``batches(rows, mode, seeds, batch_size)`` yields uint8 ``B × 3 × S × S`` CPU tensors (pinned
    when ``pin_memory``); ``mode`` TRAIN needs one seed per row (:func:`sample_seeds`).
    """

    def __init__(self, table: PathTable, image_size: int, *, augment: AugmentSpec, workers: int = 0, pin_memory: bool = False):
        self.table, self.image_size, self.workers = table, image_size, int(workers)
        self._items = _Items(table, image_size, augment)
        self._plan = _Plan()
        self._pin = pin_memory
        self._loader: torch.utils.data.DataLoader | None = None

    def _dataloader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            w = self.workers
            self._loader = torch.utils.data.DataLoader(
                self._items,
                batch_sampler=self._plan,
                num_workers=w,
                collate_fn=_collate,
                pin_memory=self._pin,
                persistent_workers=w > 0,
                prefetch_factor=4 if w > 0 else None,
                # forked (Linux's default): a spawned worker would re-import the caller's __main__,
                # which breaks scripts without a main guard; a forked one drops the run lock it
                # inherits (dsd2.store) and exits on its own a few seconds after a kill of the run
            )
        return self._loader

    def batches(self, rows: np.ndarray, mode: int, seeds: np.ndarray | None, batch_size: int) -> Iterator[torch.Tensor]:
        if mode == TRAIN and (seeds is None or len(seeds) != len(rows)):
            raise ValueError("training batches need one seed per row")
        if len(rows) == 0:
            return
        plan = _Plan(np.asarray(rows, dtype=np.int64), mode, seeds, max(1, int(batch_size)))
        self._plan.rows, self._plan.mode, self._plan.seeds, self._plan.batch_size = plan.rows, plan.mode, plan.seeds, plan.batch_size
        for b, (images, ok) in enumerate(self._dataloader()):
            if not bool(ok.all()):
                self._raise_unreadable(plan, b, ok)
            yield images

    def _raise_unreadable(self, plan: _Plan, b: int, ok: torch.Tensor) -> None:
        row = plan.batch(b)[int((~ok).nonzero()[0])][0]
        path = self.table.path(row)
        decode_rgb(path)  # raises the UserError with the decoder's reason
        raise UserError(f"cannot decode image {path} in a loader worker (it decodes now: a flaky file system?)")

    def close(self) -> None:
        """Stop the workers (they also stop with the process)."""
        loader, self._loader = self._loader, None
        it = getattr(loader, "_iterator", None) if loader is not None else None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def decode_all(files: ImageFiles, *, workers: int, batch_size: int = 256) -> torch.Tensor:
    """Every image of ``files`` resized and centre-cropped to ``image_size``²: one uint8 N×3×S×S tensor."""
    s = files.image_size
    out = torch.empty((len(files), 3, s, s), dtype=torch.uint8)
    loader = ImageLoader(files.table, s, augment=AugmentSpec(), workers=workers if len(files) > batch_size else 0)
    try:
        at = 0
        for images in loader.batches(files.rows, RESIDENT, None, batch_size):
            out[at : at + images.shape[0]] = images
            at += images.shape[0]
    finally:
        loader.close()
    return out
