"""How a round starts: the retraining modes (``prune.retrain``: the weights and schedule a round
restarts from) and the pruning schedules (``prune.schedule``: iterative, one-shot, gradual)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsd2 import distributed, rundir, store
from dsd2.config import RunConfig, choice_keyword, choice_options, filled_options, options_of
from dsd2.errors import UserError
from dsd2.imp.build import make_model, round_seed, seeded_generator, structured_allocation
from dsd2.imp.hooks import Hook, RewindSnapshot
from dsd2.imp.setup import RunContext
from dsd2.prune import (
    GradientSource,
    Masks,
    NoChannelAtThisRate,
    ScoreInputs,
    apply_masks,
    batchnorm_masks,
    composed,
    full_masks,
    needs_gradients,
    next_masks,
    prune_with,
)
from dsd2.registry import OPTIMIZERS, PRUNING_ALLOCATIONS, PRUNING_CRITERIA, PRUNING_SCHEDULES, RETRAIN_MODES, SCHEDULES
from dsd2.registry.options import (
    ChannelOptions,
    FinetuneOptions,
    GradientScoreOptions,
    GradualOptions,
    LateRewindOptions,
    MultistepOptions,
    SgdOptions,
)
from dsd2.rundir import load_state
from dsd2.train import (
    Schedule,
)

# ----------------------------------------------------------------------------- retraining modes


@dataclass(frozen=True)
class RetrainMode:
    """How rounds i >= 1 restart after pruning; registered by name in :data:`dsd2.registry.RETRAIN_MODES`
    (``prune.retrain``). Round 0 always trains the initialisation with the configured schedule.

    ``restart(ctx, round_idx)`` loads the round's starting weights into ``ctx.model`` (None: keep
    the trained weights; the masks are applied after it). ``schedule(cfg, base, lr_scale)`` turns
    round 0's :class:`~dsd2.train.Schedule` arguments into the round's (None: the same).
    ``hooks(ctx)``: hooks the mode needs (the late-rewind snapshot), run before the others.
    A mode registered with an options model gets ``prune.retrain_options`` (validated, defaults
    filled in) as the keyword ``options`` in each of them.
    """

    restart: Callable[[RunContext, int], None] | None = None
    schedule: Callable[[RunConfig, dict[str, Any], float], dict[str, Any]] | None = None
    hooks: Callable[[RunContext], list[Hook]] | None = None


def _load_run_file(path_of: Callable[[Path], Path]) -> Callable[[RunContext, int], None]:
    def restart(ctx: RunContext, round_idx: int) -> None:
        path = path_of(ctx.run_dir)
        load_state(ctx.model, store.load_tensors(path), path)

    return restart


def _fresh_init(ctx: RunContext, round_idx: int) -> None:
    fresh = make_model(ctx.cfg, ctx.data, round_seed(ctx.cfg.seed, round_idx, stream=3))
    load_state(ctx.model, fresh.state_dict(), "a fresh initialisation")


def _finetune_schedule(cfg: RunConfig, base: dict[str, Any], lr_scale: float) -> dict[str, Any]:
    o: FinetuneOptions = options_of(cfg, RETRAIN_MODES, "finetune")
    return {**base, "epochs": o.epochs or cfg.train.epochs, "lr": o.lr * lr_scale, "kind": "constant"}


def _late_rewind_schedule(cfg: RunConfig, base: dict[str, Any], lr_scale: float) -> dict[str, Any]:
    o: LateRewindOptions = options_of(cfg, RETRAIN_MODES, "late_rewind")
    return {**base, "start_epoch": o.epoch}


def _rewind_snapshot(ctx: RunContext) -> list[Hook]:
    o: LateRewindOptions = options_of(ctx.cfg, RETRAIN_MODES, "late_rewind")
    return [RewindSnapshot(ctx.run_dir, o.epoch)]


# The built-in modes (names and descriptions in dsd2.registry.RETRAIN_MODES).
LR_REWIND = RetrainMode()  # keep the trained weights, restart the schedule (the reference)
FINETUNE = RetrainMode(schedule=_finetune_schedule)
LOTTERY = RetrainMode(restart=_load_run_file(rundir.init_path))
LATE_REWIND = RetrainMode(restart=_load_run_file(rundir.rewind_path), schedule=_late_rewind_schedule, hooks=_rewind_snapshot)
REINIT = RetrainMode(restart=_fresh_init)


def schedule_for(cfg: RunConfig, round_idx: int, lr_scale: float = 1.0) -> Schedule:
    t, p = cfg.train, cfg.prune
    sgd: SgdOptions = options_of(cfg, OPTIMIZERS, "sgd")
    multistep: MultistepOptions = options_of(cfg, SCHEDULES, "multistep")
    base: dict[str, Any] = dict(
        epochs=t.epochs,
        lr=t.lr,
        optimizer=t.optimizer,
        momentum=sgd.momentum,
        weight_decay=t.weight_decay,
        kind=t.schedule,
        milestones=multistep.milestones,
        lr_decay=multistep.lr_decay,
        warmup_epochs=t.warmup_epochs,
    )
    base["lr"] = t.lr * lr_scale
    if round_idx > 0:
        mode: RetrainMode = RETRAIN_MODES.get(p.retrain)
        base = mode.schedule(cfg, base, lr_scale, **choice_keyword(cfg, RETRAIN_MODES)) if mode.schedule is not None else base
    return Schedule(**base, **_choice_options(cfg, base))


def _choice_options(cfg: RunConfig, base: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's and lr schedule's own options; a retraining mode that switched either (finetune's
    constant lr) runs that one with its defaults: the config's options are for the configured one."""
    t = cfg.train
    return {
        "optimizer_options": filled_options(OPTIMIZERS, base["optimizer"], t.optimizer_options if base["optimizer"] == t.optimizer else {}),
        "schedule_options": filled_options(SCHEDULES, base["kind"], t.schedule_options if base["kind"] == t.schedule else {}),
    }


# ----------------------------------------------------------------------------- the steps of a round


def prune_step(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """Round i >= 1's masks by the run's pruning schedule (``prune.schedule``); round 0 prunes nothing."""
    if round_idx == 0:
        return masks
    schedule = PRUNING_SCHEDULES.get(ctx.cfg.prune.schedule)
    new = schedule(ctx, masks, round_idx, **choice_keyword(ctx.cfg, PRUNING_SCHEDULES))
    # every rank prunes its replica (identical weights, same seed); a difference means they drifted
    distributed.check_same(new, f"masks of round {round_idx}")
    return new


def _prune(ctx: RunContext, masks: Masks, round_idx: int, rate: float, density: float) -> Masks:
    """Remove ``rate`` of the alive weights of ``ctx.model`` by the configured method (ERK aims at ``density``)."""
    p = ctx.cfg.prune
    gen = torch.Generator().manual_seed(round_seed(ctx.cfg.seed, round_idx, stream=2))
    pair = composed(p.method, p.criterion, p.allocation)
    if pair is None:
        return next_masks(p.method, ctx.weights, masks, rate, gen)
    grads = gradient_source(ctx, round_idx) if needs_gradients(pair[0]) else None
    inputs = ScoreInputs(masks, gen, grads, ctx.model, choice_options(ctx.cfg, PRUNING_CRITERIA))
    return prune_with(
        *pair,
        ctx.weights,
        masks,
        rate,
        inputs=inputs,
        density=density,
        min_channels=channel_floor(ctx.cfg),
        allocation_options=choice_options(ctx.cfg, PRUNING_ALLOCATIONS),
    )


def channel_floor(cfg: RunConfig) -> int:
    """The output channels every layer keeps under a structured allocation: the built-in channel
    allocations' typed option (the key a plugin allocation registered with min_channels=True reads too)."""
    o: ChannelOptions = options_of(cfg, PRUNING_ALLOCATIONS, "channel")
    return o.min_channels


def iterative_schedule(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """IMP: remove ``prune.rate`` of the weights round i-1 left (ERK aims at the geometric (1-rate)^i)."""
    rate = ctx.cfg.prune.rate
    return _prune(ctx, masks, round_idx, rate, (1.0 - rate) ** round_idx)


def target_sparsity(cfg: RunConfig, round_idx: int) -> float:
    """One-shot round i's target: ``prune.targets[i-1]``, or IMP's 1-(1-rate)^i when none are given."""
    p = cfg.prune
    if not p.targets:
        return 1.0 - (1.0 - p.rate) ** round_idx
    if round_idx > len(p.targets):
        raise UserError(f"round {round_idx} has no target: prune.targets lists {len(p.targets)}; lower prune.rounds")
    return p.targets[round_idx - 1]


def one_shot_schedule(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """He et al.'s one-shot baseline: load round 0's dense trained weights and prune them straight
    to round i's target sparsity; each round is an independent one-shot model (not round i-1's)."""
    path = rundir.round_state_path(ctx.run_dir, 0)
    load_state(ctx.model, store.load_tensors(path), path)  # the retraining mode may restart from elsewhere after
    target = target_sparsity(ctx.cfg, round_idx)
    return _prune(ctx, full_masks(ctx.weights), round_idx, target, 1.0 - target)


def gradual_schedule(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """Zhu & Gupta's gradual pruning: round i starts dense from the initialisation; :func:`gradual_step`
    prunes at the end of each epoch of its window while it trains."""
    path = rundir.init_path(ctx.run_dir)
    load_state(ctx.model, store.load_tensors(path), path)
    return full_masks(ctx.weights)


def gmp_sparsity(final: float, epoch: int, start: int, end: int) -> float:
    """Sparsity after epoch ``epoch``: s_f (1 - (1 - (t - t0)/(nΔt))^3) with Δt one epoch, s_i = 0,
    t = epoch + 1 counted from t0 = start, n = end - start + 1; 0 before the window, s_f after it."""
    if epoch < start:
        return 0.0
    n = end - start + 1
    done = min(epoch - start + 1, n) / n
    return final * (1.0 - (1.0 - done) ** 3)


def gradual_window(cfg: RunConfig, epochs: int) -> tuple[int, int]:
    """The epochs (first, last; 0-based) after which gradual pruning prunes. ``prune.gradual_end``
    unset: the last quarter of the epochs (at least one, when there are two) trains at the final
    sparsity, as Zhu & Gupta keep training after the last pruning step so the network recovers
    (the reference's last lr milestone is at 3/4 of the epochs)."""
    o: GradualOptions = options_of(cfg, PRUNING_SCHEDULES, "gradual")
    default_end = epochs - 1 - max(1, epochs // 4)
    end = max(0, default_end) if o.end is None else min(o.end, epochs - 1)
    return min(o.start, end), end


def gradual_step(ctx: RunContext, masks: Masks, round_idx: int, epoch: int, epochs: int) -> None:
    """Prune by the configured method to this epoch's sparsity on the cubic schedule, updating
    ``masks`` in place (train re-applies the same tensors after every step). Not under no_grad:
    the gradient criteria take the loss's gradients here."""
    start, end = gradual_window(ctx.cfg, epochs)
    target = gmp_sparsity(target_sparsity(ctx.cfg, round_idx), epoch, start, end)
    total = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    remove = alive - round((1.0 - target) * total)
    if remove <= 0:
        return
    try:
        new = _prune(ctx, masks, round_idx, remove / alive, 1.0 - target)
    except NoChannelAtThisRate:
        new = masks  # this epoch's share rounds to no channel: a later, larger step removes them
    with torch.no_grad():
        for name, m in masks.items():
            m.copy_(new[name])
    apply_masks(ctx.weights, masks)


def scored_examples(ctx: RunContext, round_idx: int, epochs: int) -> int:
    """Training examples the gradient criteria (magnitude_gradient, snip) passed forward and
    backward to score round ``round_idx``'s pruning: ``prune.score_batches`` batches per pruning
    step, one step per round (iterative, one-shot) or one per epoch that removes weights
    (gradual: counted from the schedule, so a resumed round counts the same). 0 otherwise."""
    p = ctx.cfg.prune
    pair = composed(p.method, p.criterion, p.allocation)
    if round_idx == 0 or pair is None or not needs_gradients(pair[0]):
        return 0
    per_step = min(gradient_options(ctx.cfg).batches * ctx.cfg.train.batch_size, ctx.train_batches.num_rows)
    if p.schedule != "gradual":
        return per_step
    start, end = gradual_window(ctx.cfg, epochs)
    total = sum(w.numel() for w in ctx.weights.values())
    alive, steps = total, 0
    for epoch in range(epochs):
        keep = round((1.0 - gmp_sparsity(target_sparsity(ctx.cfg, round_idx), epoch, start, end)) * total)
        if alive - keep > 0:
            steps, alive = steps + 1, keep
    return steps * per_step


def is_gradual_round(ctx: RunContext, round_idx: int) -> bool:
    return round_idx > 0 and ctx.cfg.prune.schedule == "gradual"


def gradient_source(ctx: RunContext, round_idx: int) -> GradientSource:
    """The training-loss gradients the gradient criteria score with: cross-entropy on the noisy
    labels of the first ``prune.score_batches`` batches of a shuffled epoch drawn from the round's
    own seed (the same batches on every rank and on a resumed run), taken in eval mode (BatchNorm
    as ``prune.score_batchnorm`` says) on the model itself (not a DDP wrapper); SNIP reads the
    run's initial weights (init.safetensors)."""
    src, o = ctx.train_batches, gradient_options(ctx.cfg)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = seeded_generator(src.device, round_seed(ctx.cfg.seed, round_idx, stream=6))
        for k, (xb, idx) in enumerate(src.epoch(gen, ctx.cfg.train.batch_size)):
            if k >= o.batches:
                break
            yield xb, src.y[idx]

    def init_state() -> dict[str, torch.Tensor]:
        return store.load_tensors(rundir.init_path(ctx.run_dir))

    return GradientSource(ctx.model, ctx.weights, batches, init_state=init_state, batchnorm=o.batchnorm)


def gradient_options(cfg: RunConfig) -> GradientScoreOptions:
    """The gradient source's batches and BatchNorm mode: the built-in gradient criteria's typed options
    (snip's and magnitude_gradient's are the same keys, which a plugin criterion registered with
    gradients=True reads too: the keys PRUNING_CRITERIA owns)."""
    o: GradientScoreOptions = options_of(cfg, PRUNING_CRITERIA, "snip")
    return o


def reset_weights(ctx: RunContext, round_idx: int, masks: Masks) -> None:
    """The weights a round starts from: those the retraining mode restarts from, then masked."""
    mode: RetrainMode = RETRAIN_MODES.get(ctx.cfg.prune.retrain)
    if round_idx > 0 and mode.restart is not None:
        mode.restart(ctx, round_idx, **choice_keyword(ctx.cfg, RETRAIN_MODES))
    apply_masks(*masked_tensors(ctx, masks))


def masked_tensors(ctx: RunContext, masks: Masks) -> tuple[dict[str, torch.Tensor], Masks]:
    """What the masks zero after every optimiser step: the pruned weights; with a structured
    allocation also the BatchNorm γ and β of the removed channels (a removed channel outputs 0)."""
    if not structured_allocation(ctx.cfg):
        return dict(ctx.weights), masks
    params, bn_masks = batchnorm_masks(ctx.model, masks)
    return {**ctx.weights, **params}, {**masks, **bn_masks}
