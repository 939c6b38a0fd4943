"""The training loop: :func:`train` runs a round's epochs, one device sync per epoch, masks
re-applied after every optimiser step, NaN/Inf detected once per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dsd2.distributed import all_reduce_min, all_reduce_sum, step_rows, world, wrap
from dsd2.errors import UserError
from dsd2.prune import apply_masks

from .evaluate import autocast_for
from .losses import Objective, cross_entropy
from .schedule import Schedule, make_optimizer
from .sources import Source

if TYPE_CHECKING:
    from dsd2.checkpoint import EpochState


class TrainingDiverged(UserError):
    """Loss or weights became NaN/Inf."""


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
