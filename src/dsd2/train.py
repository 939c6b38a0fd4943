"""One readable training function and batched evaluation (airbench style).

The whole split lives on the device as uint8 (or float) tensors; each step gathers a batch by
index, augments it on the device in one batched op, normalises it, and runs the model. There is
no per-sample Python and no ``.item()`` in the hot loop: losses accumulate on the device and are
read once per epoch, where NaN/Inf are also detected.

A streamed image folder (docs/data.md) is the other :class:`Source`: :class:`StreamBatches`
gets its uint8 batches from DataLoader workers, which decode and augment each image; labels
stay a device tensor indexed by the batch's rows, as for the resident :class:`Batches`.

The loss is a strategy passed in (``Objective``): cross-entropy for vanilla IMP, the KD loss for
DSD² students. Masks are re-applied after every optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dsd2.config.choices import options_keyword
from dsd2.data import AugmentSpec, ImageFiles, ImageLoader, augment_batch, normalize
from dsd2.data.image_folder import EVAL, TRAIN, sample_seeds
from dsd2.distributed import all_reduce_min, all_reduce_sum, step_rows, world, wrap
from dsd2.errors import UserError
from dsd2.prune import apply_masks
from dsd2.registry import OPTIMIZERS, SCHEDULES

if TYPE_CHECKING:
    from dsd2.checkpoint import EpochState


class TrainingDiverged(UserError):
    """Loss or weights became NaN/Inf."""


class Objective(Protocol):
    """A training loss. ``index``: the rows of the training split in the batch (lets an
    objective use per-sample precomputed values, e.g. cached teacher logits)."""

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


@dataclass(frozen=True, eq=False)
class SoftTargets:
    """Cross-entropy with soft targets, −Σ_j t_ij log softmax(z_i)_j, where t_i is row ``index``
    of ``probs`` (the training split's class probabilities, on the device); the integer
    ``targets`` are not used."""

    probs: torch.Tensor

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), self.probs[index])


@dataclass(frozen=True)
class Schedule:
    """Optimiser and learning-rate schedule of one round."""

    epochs: int
    lr: float
    optimizer: str = "sgd"  # a name in dsd2.registry.OPTIMIZERS
    momentum: float = 0.9
    weight_decay: float = 1e-4
    kind: str = "multistep"  # a name in dsd2.registry.SCHEDULES: multistep | cosine | constant
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    start_epoch: int = 0  # >0 resumes the schedule mid-way (late rewinding)
    warmup_epochs: int = 0  # linear warm-up (transformers), before any schedule kind
    # a plugin optimizer's / schedule's own options, defaults filled in (train.optimizer_options,
    # train.schedule_options), passed as the keyword ``options`` to one registered with an options model
    optimizer_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    schedule_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` by the registered schedule ``kind``; during the first
        ``warmup_epochs`` epochs it rises linearly, (e+1)/warmup of the schedule's own value."""
        lr = SCHEDULES.get(self.kind)(self, epoch, **options_keyword(SCHEDULES, self.kind, self.schedule_options))
        return lr * (epoch + 1) / self.warmup_epochs if epoch < self.warmup_epochs else lr


# The built-in schedules and optimisers, registered by name in dsd2.registry (SCHEDULES, OPTIMIZERS).


def multistep_lr(s: Schedule, epoch: int) -> float:
    passed = sum(1 for m in s.milestones if epoch >= round(m * s.epochs))
    return s.lr * s.lr_decay**passed


def cosine_lr(s: Schedule, epoch: int) -> float:
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / s.epochs))


def constant_lr(s: Schedule, epoch: int) -> float:
    return s.lr


# fused kernels: on CPU no faster than for-each (benchmarks/results), kept for CUDA (unmeasured)
def sgd_optimizer(params: list[nn.Parameter], s: Schedule) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, fused=True)


def adam_optimizer(params: list[nn.Parameter], s: Schedule) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay, fused=True)


def adamw_optimizer(params: list[nn.Parameter], s: Schedule) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, fused=True)


def make_optimizer(params, s: Schedule) -> torch.optim.Optimizer:
    """The registered optimizer ``s.optimizer`` over ``params``."""
    return OPTIMIZERS.get(s.optimizer)(list(params), s, **options_keyword(OPTIMIZERS, s.optimizer, s.optimizer_options))


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


def autocast_for(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class EpochLog:
    epoch: int
    lr: float
    loss: float
    acc: float


def train(
    model: nn.Module,
    data: Source,
    schedule: Schedule,
    *,
    batch_size: int,
    generator: torch.Generator,
    masks: Mapping[str, torch.Tensor] | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    objective: Objective = cross_entropy,
    amp: bool = False,
    on_epoch_end: Callable[[EpochLog, nn.Module], None] | None = None,
    resume: EpochState | None = None,
    checkpoint: Callable[[int, torch.optim.Optimizer, list[EpochLog]], None] | None = None,
    compile_model: bool = False,
) -> list[EpochLog]:
    """Train ``model`` on ``data`` for ``schedule.epochs - schedule.start_epoch`` epochs.

    ``generator`` lives on the data's device and drives both shuffling and augmentation, so a
    seeded generator makes the round reproducible. ``resume`` (an epoch checkpoint: optimiser
    and generator state, epoch log) continues a round mid-way; ``checkpoint(next_epoch,
    optimizer, logs)`` is called after every epoch so the caller can save one.
    ``compile_model``: run the steps through ``torch.compile`` (``train.compile``; not bitwise
    equal to eager mode, reproducible within it).

    In a data-parallel job (:mod:`dsd2.distributed`) ``batch_size`` is the global batch: each
    rank trains on its slice of every batch of the one-process order, the model is wrapped in
    DistributedDataParallel, and each rank's mean loss is weighted by its share of the batch,
    so the averaged gradient is that of the global batch's mean loss. The epoch log is summed
    over the ranks: identical on every rank.
    """
    opt = _make_optimizer(model, objective, schedule)
    logs, start = _resume(opt, generator, resume) if resume is not None else ([], schedule.start_epoch)
    net: Callable[[torch.Tensor], torch.Tensor] = wrap(model, data.device)  # the model itself for one process
    if compile_model:  # forward and backward through torch.compile; the weights stay the model's own
        net = torch.compile(net)
    model.train()
    for epoch in range(start, schedule.epochs):
        lr = schedule.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        sums = _train_epoch(net, data, opt, objective, generator, batch_size, masks, weights, amp)
        log = _epoch_log(epoch, lr, sums, data.num_rows)
        logs.append(log)
        if on_epoch_end is not None:
            on_epoch_end(log, model)
        if checkpoint is not None:
            checkpoint(epoch + 1, opt, logs)
    _check_finite_weights(model)
    return logs


def _make_optimizer(model: nn.Module, objective: Objective, schedule: Schedule) -> torch.optim.Optimizer:
    learned = getattr(objective, "parameters", None)  # a loss with weights of its own (feature distillation's adapter)
    return make_optimizer([*model.parameters(), *(learned() if learned is not None else [])], schedule)


def _resume(opt: torch.optim.Optimizer, generator: torch.Generator, resume: EpochState) -> tuple[list[EpochLog], int]:
    """Restore an epoch checkpoint's optimiser and generator state: its epoch log and the next epoch."""
    opt.load_state_dict(resume.optimizer_state)
    _match_param_layout(opt)
    generator.set_state(resume.generator_state)
    return [EpochLog(**log) for log in resume.logs], resume.next_epoch


@dataclass
class _EpochSums:
    """One epoch's totals, kept on the device (one sync per epoch): the loss summed over samples,
    the correct predictions, the steps, and the first step with a non-finite loss (-1: none)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    steps: torch.Tensor
    first_bad: torch.Tensor


def _train_epoch(
    net: Callable[[torch.Tensor], torch.Tensor],
    data: Source,
    opt: torch.optim.Optimizer,
    objective: Objective,
    generator: torch.Generator,
    batch_size: int,
    masks: Mapping[str, torch.Tensor] | None,
    weights: Mapping[str, torch.Tensor] | None,
    amp: bool,
) -> _EpochSums:
    """One pass over ``data`` (this rank's slice of every batch in a data-parallel job), the masks
    re-applied after every step; the sums are over all ranks."""
    device = data.device
    w = world()
    n = data.num_rows
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    # first step of the epoch with a non-finite loss, tracked on the device (no sync per step)
    step = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    batches = data.epoch(generator, batch_size, (w.rank, w.size)) if w.distributed else data.epoch(generator, batch_size)
    for k, (xb, idx) in enumerate(batches):
        yb = data.y[idx]
        with autocast_for(device, amp):
            logits = net(xb)
        loss = objective(logits, yb, xb, idx)
        real, backward_loss = idx.numel(), loss
        if w.distributed:
            count = min(batch_size, n - k * batch_size)
            real = step_rows(count, w.rank, w.size)[2]
            # DDP averages the ranks' gradients; weighting each rank's mean by its share makes
            # that average the gradient of the global batch's mean loss (factor 1 for equal shares)
            backward_loss = loss * (real * w.size / count)
        opt.zero_grad(set_to_none=True)
        backward_loss.backward()
        opt.step()
        if masks is not None and weights is not None:
            apply_masks(weights, masks)
        loss_sum += loss.detach() * real
        correct += (logits.detach().argmax(1)[:real] == yb[:real]).sum()
        step += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
    if w.distributed:
        loss_sum, correct, first_bad = _reduce_epoch(loss_sum, correct, first_bad, step)
    return _EpochSums(loss_sum, correct, step, first_bad)


def _epoch_log(epoch: int, lr: float, sums: _EpochSums, n: int) -> EpochLog:
    """The epoch's log line; a non-finite mean loss stops the round (:class:`TrainingDiverged`)."""
    mean_loss = float(sums.loss_sum) / n  # one sync per epoch
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}, step {int(sums.first_bad)} of {int(sums.steps)}: the loss became {mean_loss}. "
            "Finished rounds and the last epoch checkpoint are kept; retry from the last good state "
            "with a lower lr: dsd2 resume RUN_DIR --lr-scale 0.1"
        )
    return EpochLog(epoch=epoch + 1, lr=lr, loss=mean_loss, acc=int(sums.correct) / n)


def _reduce_epoch(
    loss_sum: torch.Tensor, correct: torch.Tensor, first_bad: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The epoch's loss sum and correct count over all ranks, and the first step any rank saw a
    non-finite loss (-1: none); the same on every rank, so all stop together on a divergence."""
    totals = all_reduce_sum(torch.stack([loss_sum.double(), correct.double()]))
    bad = all_reduce_min(torch.where(first_bad < 0, steps + 1, first_bad))
    return totals[0], totals[1].long(), torch.where(bad > steps, -1, bad)


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give the optimiser's per-parameter state tensors their parameter's memory layout.

    A checkpoint stores them contiguous; a channels_last conv weight's momentum loaded that way
    has other strides than the weight, and the fused kernels then pair the wrong elements (the
    resumed round silently diverged from the uninterrupted one). Values are copied logically."""
    for group in opt.param_groups:
        for param in group["params"]:
            state = opt.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _check_finite_weights(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(f"parameter {name} contains NaN/Inf after training; lower train.lr and resume")


@torch.no_grad()
def logits_of(model: nn.Module, data: Source, *, batch_size: int, amp: bool = False, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Float32 logits for every row of ``data`` (or rows ``lo..hi-1``; unaugmented, eval mode), on the data's device."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for xb in data.ordered(batch_size) if rows is None else data.ordered(batch_size, rows):
            with autocast_for(data.device, amp):
                out.append(model(xb).float())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, 0, device=data.device)
    return torch.cat(out)


def predict(model: nn.Module, data: Source, *, batch_size: int, amp: bool = False, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Predicted classes (int64, on the data's device) for every row of ``data`` (or rows ``lo..hi-1``); eval mode."""
    logits = logits_of(model, data, batch_size=batch_size, amp=amp, rows=rows)
    if logits.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=data.device)
    return logits.argmax(1)


def accuracy(pred: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None) -> float | None:
    """Fraction correct, optionally over ``index`` only; None when there is nothing to score."""
    if index is not None:
        pred, labels = pred[index], labels[index]
    if labels.numel() == 0:
        return None
    return int((pred == labels).sum()) / labels.numel()  # exact fraction, not a float32 mean
