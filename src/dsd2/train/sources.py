"""Where training batches come from (:class:`Source`): a split resident on the device
(:class:`Batches`, augmented there in one batched op) or a streamed image folder
(:class:`StreamBatches`, decoded and augmented by DataLoader workers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from dsd2.data import AugmentSpec, ImageFiles, ImageLoader, augment_batch, normalize
from dsd2.data.image_folder import EVAL, TRAIN, sample_seeds
from dsd2.distributed import step_rows
from dsd2.errors import UserError


class Source(Protocol):
    """What training and evaluation read: a split's model inputs, batch by batch, on the device.

    ``epoch(generator, batch_size)`` yields ``(inputs, idx)`` for one shuffled, augmented epoch:
    ``idx`` (on the device) are the rows of the split in the batch, so per-row tensors (labels,
    cached teacher logits) are indexed by it; the order and augmentation come from ``generator``
    alone. ``ordered(batch_size)`` yields the unaugmented inputs of every row in order.

    ``shard=(rank, size)`` (a data-parallel job, :mod:`dsd2.distributed`): every rank draws the
    same permutation and augmentation from the same generator and gets its slice of each global
    batch (:func:`~dsd2.distributed.step_rows`); ``rows=(lo, hi)`` restricts ``ordered`` to rows
    ``lo..hi-1``.
    """

    y: torch.Tensor
    augment: AugmentSpec
    channels_last: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def num_rows(self) -> int: ...

    @property
    def augmented(self) -> bool: ...

    def epoch(
        self, generator: torch.Generator, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def ordered(self, batch_size: int, rows: tuple[int, int] | None = None) -> Iterator[torch.Tensor]: ...

    def example(self, k: int = 2) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass
class Batches:
    """A split on the device plus how to turn a slice of it into model input (the resident :class:`Source`)."""

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    channels_last: bool = False

    def prepare(self, xb: torch.Tensor, generator: torch.Generator | None = None, train: bool = False) -> torch.Tensor:
        if train and xb.dim() == 4:
            xb = augment_batch(xb, self.augment, generator)
        xb = normalize(xb, self.mean, self.std)
        if self.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def num_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def augmented(self) -> bool:
        """Training inputs differ from one epoch to the next (images with a non-identity augmentation)."""
        return self.x.dim() == 4 and not self.augment.is_identity

    def epoch(
        self, generator: torch.Generator, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A permutation from ``generator``, then per batch: gather, augment (same generator), normalise."""
        perm = torch.randperm(self.num_rows, generator=generator, device=self.device)
        rank, size = shard
        for offset in range(0, self.num_rows, batch_size):
            idx = perm[offset : offset + batch_size]
            if size == 1:
                yield self.prepare(self.x[idx], generator, train=True), idx
                continue
            # the whole global batch is augmented (uint8, cheap next to the model) so each
            # sample's crop and flip are those of the one-process run, whatever the world size
            xb = self.x[idx]
            if xb.dim() == 4:
                xb = augment_batch(xb, self.augment, generator)
            lo, hi, _ = step_rows(idx.numel(), rank, size)
            yield self.prepare(xb[lo:hi]), idx[lo:hi]

    def ordered(self, batch_size: int, rows: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        lo, hi = rows if rows is not None else (0, self.num_rows)
        for start in range(lo, hi, batch_size):
            yield self.prepare(self.x[start : min(start + batch_size, hi)])

    def example(self, k: int = 2) -> torch.Tensor:
        """The first ``k`` rows as model input (FLOP counting)."""
        return self.prepare(self.x[:k])

    def close(self) -> None:
        pass


@dataclass
class StreamBatches:
    """A streamed image folder's split (:class:`~dsd2.data.ImageFiles`) as a :class:`Source`.

    The loader's workers decode and transform the images (uint8); batches are moved to
    ``device`` and normalised there. ``epoch`` draws the row permutation from ``generator``, then
    one 62-bit epoch seed; sample i's random transform is seeded by (epoch seed, i)
    (:func:`~dsd2.data.image_folder.sample_seeds`), so an epoch depends on the generator's state
    alone: not on the number of workers, and a run resumed from an epoch checkpoint (which stores
    the generator state) reproduces the uninterrupted one. Without augmentation training reads
    the evaluation transform.
    """

    files: ImageFiles
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: ImageLoader
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    channels_last: bool = False

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def num_rows(self) -> int:
        return len(self.files)

    @property
    def augmented(self) -> bool:
        return not self.augment.is_identity

    def prepare(self, xb: torch.Tensor) -> torch.Tensor:
        xb = normalize(xb.to(self.device, non_blocking=True), self.mean, self.std)
        return xb.contiguous(memory_format=torch.channels_last) if self.channels_last else xb

    def epoch(
        self, generator: torch.Generator, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(self.num_rows, generator=generator, device=self.device)
        epoch_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device))
        order = perm.cpu().numpy()
        mode, seeds = (TRAIN, sample_seeds(epoch_seed, order)) if self.augmented else (EVAL, None)
        rank, size = shard
        if size > 1:
            # the distributed sampler: this rank's slice of every global batch; a sample's seed
            # comes from (epoch seed, its index), so it is augmented as in the one-process run
            picks = torch.from_numpy(_rank_positions(self.num_rows, batch_size, rank, size))
            perm, order = perm[picks.to(perm.device)], order[picks.numpy()]
            seeds = seeds[picks.numpy()] if seeds is not None else None
            batch_size //= size
        offset = 0
        for xb in self.loader.batches(self.files.rows[order], mode, seeds, batch_size):
            idx = perm[offset : offset + xb.shape[0]]
            offset += xb.shape[0]
            yield self.prepare(xb), idx

    def ordered(self, batch_size: int, rows: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        lo, hi = rows if rows is not None else (0, self.num_rows)
        for xb in self.loader.batches(self.files.rows[lo:hi], EVAL, None, batch_size):
            yield self.prepare(xb)

    def example(self, k: int = 2) -> torch.Tensor:
        s = self.files.image_size
        return self.prepare(torch.zeros((k, 3, s, s), dtype=torch.uint8))

    def close(self) -> None:
        self.loader.close()


def _rank_positions(n: int, batch_size: int, rank: int, size: int):
    """Positions in an epoch's order of the rows ``rank`` trains on, global batch after global
    batch. Every full batch gives ``batch_size // size`` rows (the loader batches the list by that
    size), the last one its slice, at least one row (see :func:`~dsd2.distributed.step_rows`)."""
    import numpy as np

    parts = []
    for offset in range(0, n, batch_size):
        lo, hi, _ = step_rows(min(batch_size, n - offset), rank, size)
        parts.append(np.arange(offset + lo, offset + hi))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# A resident split may take this share of the device's free memory: the rest is for the model,
# its optimiser state and the activations of a batch.
RESIDENT_SHARE = 0.5


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes; None where nothing needs checking (the CPU: the split
    was decoded into this memory already, image folders bound it by dataset.memory_budget_gb)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def check_resident_fits(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    """Refuse, before copying, a split whose tensors would take more than :data:`RESIDENT_SHARE`
    of ``device``'s free memory."""
    if x.device == device:
        return
    free = free_device_bytes(device)
    need = x.nelement() * x.element_size() + y.nelement() * y.element_size()
    if free is not None and need > RESIDENT_SHARE * free:
        raise UserError(
            f"the data ({need / 1e9:.2f} GB as {x.dtype} {tuple(x.shape)}) do not fit on {device}: dsd2 keeps a split resident "
            f"on the device and allows it {RESIDENT_SHARE:.0%} of the {free / 1e9:.2f} GB free there; use dataset.train_subset, "
            "an image folder with dataset.loader=stream, or a device with more memory (docs/data.md, 'Memory')"
        )


def make_source(
    x: torch.Tensor | ImageFiles,
    y: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    augment: AugmentSpec | None = None,
    channels_last: bool = False,
    loader: ImageLoader | None = None,
) -> Batches | StreamBatches:
    """The :class:`Source` of a split: resident tensors moved to ``device``, or a streamed image
    folder's files read through ``loader``; ``y`` (labels) goes to ``device``."""
    spec = augment if augment is not None else AugmentSpec()
    if isinstance(x, ImageFiles):
        if loader is None:
            raise ValueError("a streamed split needs its ImageLoader")
        return StreamBatches(x, y.to(device), mean, std, loader, spec, channels_last)
    check_resident_fits(x, y, device)
    return Batches(x.to(device), y.to(device), mean, std, spec, channels_last)
