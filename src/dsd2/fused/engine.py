"""Train K runs of one architecture as one fused computation (:mod:`dsd2.fused.stack`).

What each run keeps to itself, exactly as :func:`dsd2.train.train` would give it:

- its batch order and augmentation: every step, run k's batch comes from its own
  ``sources[k].epoch(generators[k], batch_size)`` (the same call an unfused run makes), so the
  rows, crops and flips are bit-identical to the unfused run's;
- its labels and loss: ``objectives[k]`` on run k's logits, labels ``sources[k].y[idx_k]`` and
  inputs; the fused loss is the sum of the K losses, whose gradient w.r.t. run k's weights is run
  k's own gradient;
- its optimiser state: one registered element-wise optimiser (sgd, adam, adamw) over the stacked
  weights is K independent optimisers (momentum, weight decay and the update are per element),
  built by :func:`dsd2.train.make_optimizer`, the schedule's lr set per epoch as train does;
- its masks: re-applied after every optimiser step, as train does;
- its BatchNorm statistics (a folded BatchNorm is per run, see :mod:`dsd2.fused.stack`).

What differs: the kernels (a grouped convolution and a batched matmul instead of K small ones),
so the floating-point sums are ordered differently: fused and unfused weights agree to rounding
error, which training then amplifies (docs/fused.md gives the measured tolerance). A fused group
re-run gives bit-identical results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dsd2.checkpoint import EpochState
from dsd2.data import augment_batch, normalize
from dsd2.fused.stack import NotFusable, check, fold, load, stack, unfold, unload
from dsd2.train import Batches, EpochLog, Objective, Schedule, Source, TrainingDiverged, autocast_for, cross_entropy, make_optimizer

# optimisers whose update is element-wise (no norm over a tensor): stacked = K separate ones
ELEMENTWISE_OPTIMIZERS = ("sgd", "adam", "adamw")

Masks = Mapping[str, torch.Tensor]


def _name_of(model: nn.Module) -> dict[int, str]:
    return {id(t): name for name, t in model.named_parameters()}


def stacked_masks(
    fused: nn.Module, models: Sequence[nn.Module], weights: Sequence[Mapping[str, torch.Tensor] | None], masks: Sequence[Masks | None]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fused tensor, stacked mask) pairs: run k's mask of a parameter at its slice; a run that
    masks nothing there gets ones (its weights stay as trained)."""
    k = len(models)
    fparams = dict(fused.named_parameters())
    per_name: dict[str, list[torch.Tensor | None]] = {}
    for i, (model, w, m) in enumerate(zip(models, weights, masks)):
        if w is None or m is None:
            continue
        names = _name_of(model)
        for key, tensor in w.items():
            name = names.get(id(tensor))
            if name is None:
                raise NotFusable(f"run {i} masks {key}, which is not one of its model's parameters")
            per_name.setdefault(name, [None] * k)[i] = m[key]
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, ms in per_name.items():
        t = fparams[name]
        like = next(x for x in ms if x is not None)
        full = [x if x is not None else torch.ones_like(like) for x in ms]
        out.append((t, torch.stack([x.to(t.dtype) for x in full]).reshape(t.shape)))
    return out


def _shared_layout(sources: Sequence[Source]) -> bool:
    """Resident splits that differ only in their rows and labels: their batches can be folded
    as uint8 and normalised once (the same element-wise arithmetic as each run's own prepare)."""
    resident = [s for s in sources if isinstance(s, Batches)]
    if len(resident) != len(sources):
        return False
    key = [(s.mean, s.std, s.augment, s.channels_last, s.x.dtype, s.x.shape[1:]) for s in resident]
    return all(x == key[0] for x in key)


# the largest copy of the K runs' training images made to gather their batches in one call
STACK_BYTES = 256 * 2**20


def _same_images(srcs: Sequence[Batches]) -> bool:
    """The splits hold the same images (runs that differ in seed, noise or labels only): one
    gather serves all K runs."""
    x = srcs[0].x
    return all(s.x is x or (s.x.shape == x.shape and torch.equal(s.x, x)) for s in srcs[1:])


def _epoch(sources: Sequence[Source], generators: Sequence[torch.Generator], batch_size: int):
    """One epoch of the K runs: per step, the folded input, the K per-run inputs (views) and the
    ``[K, B]`` rows of the step (row k: run k's). Every run draws its permutation and
    augmentation from its own generator in the order :meth:`dsd2.train.Batches.epoch` does, so
    its rows, crops and flips are the unfused run's."""
    k = len(sources)
    if not _shared_layout(sources):
        for batches in zip(*[s.epoch(g, batch_size) for s, g in zip(sources, generators)]):
            xs = [xb for xb, _ in batches]
            yield fold(xs), xs, torch.stack([idx for _, idx in batches])
        return
    srcs = [s for s in sources if isinstance(s, Batches)]
    first = srcs[0]
    perms = torch.stack([torch.randperm(s.num_rows, generator=g, device=s.device) for s, g in zip(srcs, generators)])
    mean, std = (first.mean, first.std) if len(first.mean) == 1 else (first.mean * k, first.std * k)
    augmented = first.x.dim() == 4 and not first.augment.is_identity
    one_gather = not augmented and _same_images(srcs)
    # different images (e.g. each seed's own subset): a [K, N, ...] copy, gathered once per step
    images = None if augmented or one_gather or k * first.x.nbytes > STACK_BYTES else torch.stack([s.x for s in srcs])
    runs = torch.arange(k, device=first.device).unsqueeze(0)
    for offset in range(0, first.num_rows, batch_size):
        idx = perms[:, offset : offset + batch_size]
        if one_gather:  # [B, K, ...]: the bytes torch.stack of the K gathers gives
            folded = first.x[idx.t()].contiguous().flatten(1, 2)
        elif images is not None:
            folded = images[runs, idx.t()].contiguous().flatten(1, 2)
        else:
            raw = [s.x[i] for s, i in zip(srcs, idx)]
            if augmented:
                raw = [augment_batch(r, s.augment, g) for r, s, g in zip(raw, srcs, generators)]
            folded = torch.stack(raw, 1).flatten(1, 2)
        xf = normalize(folded, mean, std)
        if first.channels_last and xf.dim() == 4:
            xf = xf.contiguous(memory_format=torch.channels_last)
        per_run = xf.view(xf.shape[0], k, xf.shape[1] // k, *xf.shape[2:])
        yield xf, [per_run[:, i] for i in range(k)], idx


def why_not(models: Sequence[nn.Module], schedule: Schedule, objectives: Sequence[Objective]) -> str | None:
    """Why these runs cannot be trained fused (None: they can), without building anything."""
    if schedule.optimizer not in ELEMENTWISE_OPTIMIZERS:
        return f"optimizer {schedule.optimizer!r} is not one of the element-wise ones ({', '.join(ELEMENTWISE_OPTIMIZERS)})"
    for obj in objectives:
        if getattr(obj, "parameters", None) is not None:
            return "a loss with weights of its own (feature distillation's adapter) is trained per run"
    try:
        from dsd2.fused.stack import check_same_architecture

        check_same_architecture(models)
    except NotFusable as err:
        return str(err)
    return None


def _per_element(value: object, shape: torch.Size) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == shape


def split_optimizer(
    opt: torch.optim.Optimizer, fused: nn.Module, models: Sequence[nn.Module], schedule: Schedule
) -> list[torch.optim.Optimizer]:
    """K optimisers over the K models' own parameters holding run k's slice of ``opt``'s state:
    what an unfused run's optimiser would hold (an epoch checkpoint saves them)."""
    k = len(models)
    fparams = dict(fused.named_parameters())
    out = []
    for i, model in enumerate(models):
        single = make_optimizer(model.parameters(), schedule)
        for group in single.param_groups:
            group["lr"] = opt.param_groups[0]["lr"]
        for name, p in model.named_parameters():
            fp = fparams[name]
            state = opt.state.get(fp)
            if not state:
                continue
            single.state[p] = {
                key: (v.reshape(k, *p.shape)[i].clone() if _per_element(v, fp.shape) else v.clone() if torch.is_tensor(v) else v)
                for key, v in state.items()
            }
        out.append(single)
    return out


def _join_optimizer(
    opt: torch.optim.Optimizer, fused: nn.Module, models: Sequence[nn.Module], schedule: Schedule, states: Sequence[dict]
) -> None:
    """Load K unfused optimiser state dicts (epoch checkpoints) into the stacked ``opt``; each
    state tensor takes its parameter's memory layout (the fused kernels pair elements by stride)."""
    singles = []
    for model, sd in zip(models, states):
        single = make_optimizer(model.parameters(), schedule)
        single.load_state_dict(sd)
        singles.append(single)
    for name, fp in fused.named_parameters():
        per_run = [single.state.get(dict(model.named_parameters())[name], {}) for single, model in zip(singles, models)]
        if not per_run[0]:
            continue
        joined = {}
        for key, v in per_run[0].items():
            shape = dict(models[0].named_parameters())[name].shape
            if _per_element(v, shape):
                stacked = torch.stack([st[key] for st in per_run]).reshape(fp.shape)
                joined[key] = torch.empty_like(fp, dtype=v.dtype).copy_(stacked)
            else:
                joined[key] = v
        opt.state[fp] = joined


# checkpoint(next_epoch, optimizers, logs): the K runs' per-run optimisers made on demand
Checkpoint = Callable[[int, Callable[[], list[torch.optim.Optimizer]], list[list[EpochLog]]], None]


def train_fused(
    models: Sequence[nn.Module],
    sources: Sequence[Source],
    schedule: Schedule,
    *,
    batch_size: int,
    generators: Sequence[torch.Generator],
    masks: Sequence[Masks | None] | None = None,
    weights: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    objectives: Sequence[Objective] | None = None,
    amp: bool = False,
    on_epoch_end: Sequence[Callable[[EpochLog, nn.Module], None] | None] | None = None,
    resume: Sequence[EpochState] | None = None,
    checkpoint: Checkpoint | None = None,
) -> list[list[EpochLog]]:
    """Train the K ``models`` (same architecture; run k reads ``sources[k]`` with
    ``generators[k]``) for the schedule's epochs as one fused computation, like K calls of
    :func:`dsd2.train.train` with the same arguments run by run. The trained weights and
    buffers are written back into ``models`` at every epoch end (``on_epoch_end[k]`` sees run k's
    model as unfused training leaves it). Returns run k's epoch logs at index k.

    ``resume``: one epoch checkpoint per run, all at the same epoch (the models hold their
    weights already, as :func:`dsd2.train.train` expects): optimiser states, generator states
    and logs continue from them. ``checkpoint(next_epoch, optimizers, logs)`` is called after
    every epoch; ``optimizers()`` gives the K runs' own optimisers (the format of an unfused
    run's epoch checkpoint, so either path resumes from it).

    Raises :class:`~dsd2.fused.stack.NotFusable` before training when the models cannot be fused."""
    k = len(models)
    if not (len(sources) == len(generators) == k):
        raise ValueError("train_fused needs one source and one generator per model")
    objs: list[Objective] = list(objectives) if objectives is not None else [cross_entropy] * k
    masks_l = list(masks) if masks is not None else [None] * k
    weights_l = list(weights) if weights is not None else [None] * k
    hooks = list(on_epoch_end) if on_epoch_end is not None else [None] * k
    _check_fusable(models, sources, schedule, objs)
    n = sources[0].num_rows
    labels = torch.stack([s.y for s in sources])  # [K, N]: one gather per step for all runs
    fused = stack(models)
    check(fused, models, [s.example(2) for s in sources])
    fused.train()
    opt = make_optimizer(fused.parameters(), schedule)
    pairs = stacked_masks(fused, models, weights_l, masks_l)
    all_logs: list[list[EpochLog]] = [[] for _ in range(k)]
    start = schedule.start_epoch
    if resume is not None:
        all_logs, start = _resume(opt, fused, models, schedule, generators, resume)
    for epoch in range(start, schedule.epochs):
        lr = schedule.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        sums = _train_epoch(fused, sources, generators, labels, opt, objs, pairs, batch_size, amp)
        unload(fused, models)
        _check_epoch(sums, n, epoch)
        _record_epoch(sums, n, epoch, lr, all_logs, hooks, models)
        if checkpoint is not None:
            checkpoint(epoch + 1, lambda: split_optimizer(opt, fused, models, schedule), all_logs)
    _check_finite_weights(models)
    return all_logs


def _check_fusable(models: Sequence[nn.Module], sources: Sequence[Source], schedule: Schedule, objs: Sequence[Objective]) -> None:
    """Raise :class:`NotFusable` when the runs cannot train as one: :func:`why_not`, or training
    splits of other sizes or labels of another type or shape."""
    reason = why_not(models, schedule, objs)
    if reason is not None:
        raise NotFusable(reason)
    n = sources[0].num_rows
    if any(s.num_rows != n for s in sources):
        raise NotFusable("the runs' training splits differ in size")
    if len({(s.y.dtype, s.y.shape) for s in sources}) != 1:
        raise NotFusable("the runs' labels differ in type or shape")


def _resume(
    opt: torch.optim.Optimizer,
    fused: nn.Module,
    models: Sequence[nn.Module],
    schedule: Schedule,
    generators: Sequence[torch.Generator],
    resume: Sequence[EpochState],
) -> tuple[list[list[EpochLog]], int]:
    """Restore the K runs' epoch checkpoints (optimiser and generator states): their logs and the next epoch."""
    if len(resume) != len(models) or len({r.next_epoch for r in resume}) != 1:
        raise ValueError("resume needs one epoch checkpoint per run, all at the same epoch")
    _join_optimizer(opt, fused, models, schedule, [r.optimizer_state for r in resume])
    for g, r in zip(generators, resume):
        g.set_state(r.generator_state)
    return [[EpochLog(**log) for log in r.logs] for r in resume], resume[0].next_epoch


@dataclass
class _EpochSums:
    """One epoch's per-run totals ([K] each), kept on the device (one sync per epoch): the loss
    summed over samples, the correct predictions, the steps, and each run's first step with a
    non-finite loss (-1: none)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    steps: torch.Tensor
    first_bad: torch.Tensor


def _train_epoch(
    fused: nn.Module,
    sources: Sequence[Source],
    generators: Sequence[torch.Generator],
    labels: torch.Tensor,
    opt: torch.optim.Optimizer,
    objs: Sequence[Objective],
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    amp: bool,
) -> _EpochSums:
    """One pass of every run over its own batches, one fused step each, the masks re-applied after every step."""
    k = len(objs)
    device = sources[0].device
    loss_sum = torch.zeros(k, device=device)
    correct = torch.zeros(k, device=device, dtype=torch.long)
    step = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((k,), -1, device=device, dtype=torch.long)
    for xf, xs, idx in _epoch(sources, generators, batch_size):
        y = labels.gather(1, idx)  # [K, B]: run k's labels of its rows
        with autocast_for(device, amp):
            out = fused(xf)
        logits = unfold(out, k)
        losses = torch.stack([obj(logits[i], y[i], xs[i], idx[i]) for i, obj in enumerate(objs)])
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        with torch.no_grad():
            for t, m in pairs:
                t.mul_(m)
        real = xs[0].shape[0]
        detached = losses.detach()
        loss_sum += detached * real
        correct += (logits.detach().argmax(2) == y).sum(1)
        step += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), step, first_bad)
    return _EpochSums(loss_sum, correct, step, first_bad)


def _check_epoch(sums: _EpochSums, n: int, epoch: int) -> None:
    """A run whose mean loss is not finite stops the group (:class:`TrainingDiverged`), naming it and its first bad step."""
    means = (sums.loss_sum.double() / n).tolist()  # one sync per epoch
    for i, mean_loss in enumerate(means):
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"run {i} of the fused group diverged at epoch {epoch + 1}, step {int(sums.first_bad[i])} of {int(sums.steps)}: "
                f"the loss became {mean_loss}"
            )


def _record_epoch(
    sums: _EpochSums,
    n: int,
    epoch: int,
    lr: float,
    all_logs: list[list[EpochLog]],
    hooks: Sequence[Callable[[EpochLog, nn.Module], None] | None],
    models: Sequence[nn.Module],
) -> None:
    """Append each run's epoch log and call its ``on_epoch_end`` hook with its model."""
    for i in range(len(models)):
        log = EpochLog(epoch=epoch + 1, lr=lr, loss=float(sums.loss_sum[i]) / n, acc=int(sums.correct[i]) / n)
        all_logs[i].append(log)
        hook = hooks[i]
        if hook is not None:
            hook(log, models[i])


def _check_finite_weights(models: Sequence[nn.Module]) -> None:
    for i, model in enumerate(models):
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"run {i} of the fused group: parameter {name} contains NaN/Inf after fused training")


__all__ = ["ELEMENTWISE_OPTIMIZERS", "NotFusable", "load", "stack", "stacked_masks", "train_fused", "unload", "why_not"]
