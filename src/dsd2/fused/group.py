"""K IMP runs executed as one fused group, each writing its own standard run directory.

Every run is set up, pruned, reset, measured and saved by the same functions as an unfused run
(:mod:`dsd2.imp`); only the training of a round is shared: the runs that are at the same round
train together through :func:`dsd2.fused.train_fused`. So a run directory written here has the
same files and rounds.csv columns as an unfused one (its metrics.json timing adds ``"fused": K``),
and can be resumed or extended alone, fused or not.

Resume works at round granularity and is bit-identical to the uninterrupted group: each run's
finished rounds are read back from its files; a kill between the saves of one round leaves some
runs one round ahead, and those train that round again with the group, unsaved, so every run
trains each round in the same group as without the kill (a fused run's numbers depend on the
group's size, to rounding). Within a round, the group writes every run's epoch checkpoint
(the unfused format, at the shortest ``train.checkpoint_interval_s`` of the group): a group
killed mid-round goes on from them when every run has one at the same epoch, bit-identically;
otherwise the round starts over for the group. A run resumed alone continues from its own
checkpoint, unfused. Runs behind the others (extended alone, say) catch up first. A run its
early-stop rule ended, or that has trained all its rounds, leaves the group; the others go on.

What is not fused (the reason is said in one line, and those runs train as usual): a
data-parallel job, ``train.compile``, ``train.select_epoch=best_val``, gradual pruning,
network slimming, self-distillation, a streamed image folder, optimisers other than
sgd/adam/adamw, feature distillation, runs whose round schedules or batch sizes differ, and models
:mod:`dsd2.fused.stack` cannot fold (torchvision/timm graphs, attention, LayerNorm, dropout).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from dsd2 import checkpoint, distributed, imp, rundir, store
from dsd2.checkpoint import EpochState
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.fused.engine import Checkpoint, train_fused
from dsd2.fused.stack import NotFusable
from dsd2.imp.build import structured_allocation
from dsd2.imp.hooks import Hook, make_hooks
from dsd2.imp.loop import (
    Rounds,
    Trained,
    begin_run,
    finish_round,
    resume_rounds,
    stop_decision,
    tables_on_every_rank,
    train_round,
    write_early_stop,
)
from dsd2.imp.modes import masked_tensors, prune_step, reset_weights, schedule_for
from dsd2.imp.setup import RunContext, check_config_matches, lr_scale_for, round_seed, seeded_generator
from dsd2.imp.undo import StartUndo
from dsd2.prune import Masks, full_masks
from dsd2.rundir import RoundRow, load_state, run_dir_for
from dsd2.threads import Share
from dsd2.train import EpochLog, TrainingDiverged


def config_reason(cfgs: Sequence[RunConfig]) -> str | None:
    """Why these configs cannot train fused, read from the configs alone (None: try)."""
    if len(cfgs) < 2:
        return "a single run"
    if distributed.world().distributed:
        return "a data-parallel job trains one run over several processes"
    first = cfgs[0]
    for cfg in cfgs:
        t, p = cfg.train, cfg.prune
        if t.compile:
            return "train.compile=true (compiled steps are their own execution choice)"
        if t.select_epoch == "best_val":
            return "train.select_epoch=best_val evaluates every run after every epoch"
        if p.schedule == "gradual":
            return "prune.schedule=gradual prunes inside the round"
        if p.slimming_lambda > 0:
            return "network slimming adds a gradient hook to each run's own BatchNorm"
        if cfg.distill.self_distill:
            return "self-distillation changes each run's teacher every round"
        if structured_allocation(cfg):
            return "a channel allocation may stop a run at its channel floor (floor_stop.json is written by the unfused loop)"
        if getattr(cfg.dataset, "loader", "memory") == "stream":
            return "a streamed image folder reads every run's images from disk"
        if (t.batch_size, t.device, t.amp) != (first.train.batch_size, first.train.device, first.train.amp):
            return "the runs differ in train.batch_size, train.device or train.amp"
        if cfg.model != first.model:
            return "the runs use different models"
    return None


@dataclass
class Member:
    """One run of the group: its context, finished rounds and hooks."""

    ctx: RunContext
    rounds: Rounds
    hooks: list[Hook]

    @property
    def next_round(self) -> int:
        return len(self.rounds.rows)

    def trained_fused(self, i: int) -> bool:
        """Whether this run's saved round ``i`` was trained in a fused group (its timing says so)."""
        return i < len(self.rounds.timings) and "fused" in self.rounds.timings[i]

    def done(self) -> bool:
        cfg = self.ctx.cfg
        if self.next_round > cfg.prune.rounds:
            return True
        decision = stop_decision(cfg, self.rounds.rows)
        return decision is not None and decision.stop_round is not None


# benchmarks/results/fused_idle_s6.json, fused_demo_idle_s6.json (2 idle cores): said, not decided
CPU_NOTE = (
    "fused: on CPU, fusing measured no faster than separate processes for small MLPs (1.07x) and slower for conv "
    "nets (LeNet-5 0.67x; the demo 0.66x; docs/fused.md, Speed): it is meant for GPUs; without --fuse "
    "(dsd2 run --seeds, sweep, demo) the runs train unfused"
)


def run_group(
    cfgs: Sequence[RunConfig],
    out: str | Path = "runs",
    *,
    say: Callable[[str], None] = print,
    on_round: Callable[[int, RoundRow], None] | None = None,
    progress: Callable[[int, int, int, EpochLog], None] | None = None,
    run_dirs: Sequence[Path] | None = None,
) -> list[Path]:
    """Run (or resume) the IMP studies of ``cfgs`` as one fused group; their run directories,
    in order. ``on_round(k, row)`` after run k's round, ``progress(k, round, epochs, log)`` after
    its epochs. Configs that cannot be fused run one after another as ``dsd2.imp.run`` runs them
    (``say`` gets one line saying why). ``run_dirs``: where the runs go (default: where
    ``dsd2 run`` would put each under ``out``)."""
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else [run_dir_for(c, out) for c in cfgs]
    if len(set(dirs)) != len(dirs):
        raise UserError("two configs of the fused group have the same run id (same config and seed): give each run its own seed")
    reason = config_reason(cfgs)
    if reason is not None:
        if len(cfgs) > 1:
            say(f"fused: running {len(cfgs)} runs one after another ({reason})")
        return [imp.run(c, d.parent, run_dir=d) for c, d in zip(cfgs, dirs)]
    with ExitStack() as held:
        members: list[Member] = []
        started: list[StartUndo] = []  # the runs this call started (it holds their locks), and how to take that back
        try:
            for k, (cfg, run_dir) in enumerate(zip(cfgs, dirs)):
                ctx = begin_run(check_config_matches(run_dir, cfg), run_dir, held, Share(), started)
                held.callback(ctx.close)
                rounds = resume_rounds(ctx)
                tables_on_every_rank(ctx, rounds)
                members.append(Member(ctx, rounds, make_hooks(ctx, **_callbacks(k, on_round, progress))))
        except BaseException as err:
            # a run that cannot start stops the group before anything trains: the runs this call
            # started leave no half-made directory (as a failed unfused start), the others are as they were
            _close_hooks(members)
            for undo in started:  # a run that fails to start takes back its own start (begin_run)
                undo()
            if isinstance(err, UserError) and str(run_dir) not in str(err):  # which run of the group
                raise UserError(f"{run_dir} (a run of a fused group, which trained nothing): {err}") from None
            raise
        try:
            _loop(members, say)
        finally:
            _close_hooks(members)
    return dirs


def _close_hooks(members: list[Member]) -> None:
    for m in members:
        for hook in m.hooks:
            hook.close()


def _callbacks(k: int, on_round, progress) -> dict:
    return {
        "on_round": None if on_round is None else (lambda row: on_round(k, row)),
        "progress": None if progress is None else (lambda r, e, log: progress(k, r, e, log)),
    }


def _loop(members: list[Member], say: Callable[[str], None]) -> None:
    """Round after round: the runs at the lowest next round train together, until all are done."""
    fusable = [True]
    noted = [False]  # CPU_NOTE said (once, when runs first train fused on a CPU)
    left: set[int] = set()  # id() of the runs that left the group (their stop file is written)
    while True:
        for m in members:
            if id(m) not in left and m.done():
                # a run that leaves the group is complete: its stop file is written now, as its
                # unfused run would write it, not lost if another run of the group fails later
                left.add(id(m))
                write_early_stop(m.ctx, m.rounds.rows)
        todo = [m for m in members if not m.done()]
        if not todo:
            return
        i = min(m.next_round for m in todo)
        live = [m for m in todo if m.next_round == i]
        # runs a kill left one round ahead (they saved round i, the others did not): they train
        # round i again with the group, unsaved, so the group is the one an uninterrupted run had.
        # Only a round trained fused can be such: a run that finished (or half finished) on its
        # own before joining this group is not retrained
        ghosts = [m for m in members if m.next_round == i + 1 and m not in live and m.trained_fused(i)] if fusable[0] else []
        _group_round(live, ghosts, i, fusable, say, noted)


def _load_round(ctx: RunContext, j: int) -> Masks:
    """Put round ``j``'s saved weights into the run's model (j = -1: its initialisation); its masks."""
    if j < 0:
        path = rundir.init_path(ctx.run_dir)
        load_state(ctx.model, store.load_tensors(path), path)
        return full_masks(ctx.weights)
    state = rundir.round_state_path(ctx.run_dir, j)
    load_state(ctx.model, store.load_tensors(state), state)
    saved = store.load_tensors(rundir.round_masks_path(ctx.run_dir, j))
    return {k: saved[k].to(ctx.device) for k in ctx.weights}


def _group_round(
    live: list[Member], ghosts: list[Member], i: int, fusable: list[bool], say: Callable[[str], None], noted: list[bool]
) -> None:
    t0 = time.perf_counter()
    masks = []
    for m in ghosts:
        mk = prune_step(m.ctx, _load_round(m.ctx, i - 1), i)
        reset_weights(m.ctx, i, mk)
        masks.append(mk)
    for m in live:
        mk = prune_step(m.ctx, m.rounds.masks, i)
        reset_weights(m.ctx, i, mk)
        masks.append(mk)
    group = [*ghosts, *live]
    scales = [lr_scale_for(m.ctx.run_dir, i) for m in group]
    schedules = [schedule_for(m.ctx.cfg, i, s) for m, s in zip(group, scales)]
    why = None
    if len(group) < 2:
        why = "one run left at this round"
    elif any(s != schedules[0] for s in schedules):
        why = "the runs' schedules differ at this round (epochs, lr, lr scale)"
    elif not fusable[0]:
        why = "unfusable"
    logs: list[list[EpochLog]] | None = None
    if why is None:
        try:
            logs = _train_together(group, len(ghosts), i, masks, schedules[0], say)
        except NotFusable as err:
            fusable[0] = False
            say(f"fused: training the runs one after another ({err})")
        if logs is not None and not noted[0] and group[0].ctx.device.type == "cpu":
            noted[0] = True
            say(CPU_NOTE)
    elif why not in ("unfusable", "one run left at this round"):
        say(f"fused: round {i} trains its {len(live)} runs one after another ({why})")
    for m in ghosts:  # back to the round they saved
        m.rounds.masks = _load_round(m.ctx, i)
    live_masks = masks[len(ghosts) :]
    if logs is None:
        for m, mk in zip(live, live_masks):
            start = time.perf_counter()
            trained = train_round(m.ctx, i, mk, m.hooks, teaching=m.ctx.teaching)
            finish_round(m.ctx, m.rounds, i, m.hooks, mk, trained, start, teaching=m.ctx.teaching)
        return
    train_s = time.perf_counter() - t0
    extra = {"fused": len(group)}
    for m, mk, run_logs, scale in zip(live, live_masks, logs[len(ghosts) :], scales[len(ghosts) :]):
        # train_s: the group's shared training; wall_s adds this run's own measuring and saving
        finish_round(
            m.ctx, m.rounds, i, m.hooks, mk, Trained(run_logs, scale), time.perf_counter() - train_s, extra, teaching=m.ctx.teaching
        )


def _partials(live: list[Member], i: int, say: Callable[[str], None]) -> list[EpochState] | None:
    """The runs' epoch checkpoints of round ``i`` when every run has one at the same epoch
    (their weights are loaded into the models); None otherwise (the round starts over)."""
    paths = [checkpoint.partial_path(m.ctx.run_dir, i) for m in live]
    states = [checkpoint.load_epoch_state(p) for p in paths]
    if not any(st is not None for st in states):
        return None
    found = [st for st in states if st is not None]
    if len(found) != len(states) or len({st.next_epoch for st in found}) != 1:
        say(f"fused: the runs' epoch checkpoints of round {i} are not all at one epoch: the round starts over for the group")
        return None
    for m, st, path in zip(live, found, paths):
        load_state(m.ctx.model, st.model_state, path)
    return found


def _checkpointer(live: list[Member], n_ghosts: int, gens: list, i: int, epochs: int) -> Checkpoint:
    """Save every live run's epoch checkpoint (the unfused format) when the shortest
    ``train.checkpoint_interval_s`` of the group has passed; never after the last epoch."""
    interval = min(m.ctx.cfg.train.checkpoint_interval_s for m in live)
    last = [time.monotonic()]

    def save(next_epoch: int, optimizers: Callable[[], list], logs: list[list[EpochLog]]) -> None:
        if next_epoch >= epochs or time.monotonic() - last[0] < interval:
            return
        opts = optimizers()
        for j, m in enumerate(live, n_ghosts):
            checkpoint.save_epoch_state(
                checkpoint.partial_path(m.ctx.run_dir, i),
                model=m.ctx.model,
                optimizer=opts[j],
                generator=gens[j],
                next_epoch=next_epoch,
                logs=[vars(x) for x in logs[j]],
            )
        last[0] = time.monotonic()

    return save


def _train_together(group: list[Member], n_ghosts: int, i: int, masks: list, schedule, say: Callable[[str], None]) -> list[list[EpochLog]]:
    """Train round ``i`` of the group; the first ``n_ghosts`` runs re-train a saved round (no hooks)."""
    if any(m.ctx.data.streamed for m in group):  # config_reason sees dataset.loader=stream; auto may choose it too
        raise NotFusable("a streamed image folder reads every run's images from disk (dataset.loader=auto chose stream)")
    if len({tuple(m.ctx.train_batches.example(1).shape) for m in group}) > 1:  # one batch holds every run's inputs
        raise NotFusable("the runs' inputs differ in shape (their datasets differ)")
    live = group[n_ghosts:]
    for m in live:
        for hook in m.hooks:
            hook.round_start(i)

    def epoch_end(m: Member) -> Callable[[EpochLog, nn.Module], None]:
        def call(log: EpochLog, model: nn.Module) -> None:
            for hook in m.hooks:
                hook.epoch_end(i, schedule.epochs, log, model)

        return call

    weights, all_masks = zip(*(masked_tensors(m.ctx, mk) for m, mk in zip(group, masks)))
    cfg = group[0].ctx.cfg
    gens = [seeded_generator(m.ctx.device, round_seed(m.ctx.cfg.seed, i, stream=1)) for m in group]
    resume = _partials(live, i, say) if n_ghosts == 0 else None
    try:
        return train_fused(
            [m.ctx.model for m in group],
            [m.ctx.train_batches for m in group],
            schedule,
            batch_size=cfg.train.batch_size,
            generators=gens,
            masks=list(all_masks),
            weights=list(weights),
            objectives=[m.ctx.objective for m in group],
            amp=cfg.train.amp,
            on_epoch_end=[None] * n_ghosts + [epoch_end(m) for m in live],
            resume=resume,
            checkpoint=_checkpointer(live, n_ghosts, gens, i, schedule.epochs),
        )
    except TrainingDiverged as err:
        raise TrainingDiverged(_diverged(str(err), group, i)) from None


def _diverged(message: str, group: list[Member], i: int) -> str:
    """The engine's divergence message with the run named by its directory, and the command that
    retries it with a tenth of the lr it had (as an unfused run's advice says it)."""
    for k, m in enumerate(group):
        marker = f"run {k} of the fused group"
        if marker in message:
            scale = lr_scale_for(m.ctx.run_dir, i)
            return (
                f"{message.replace(marker, str(m.ctx.run_dir))}. Finished rounds are kept. Retry that run with a lower lr: "
                f"dsd2 resume {m.ctx.run_dir} --lr-scale {scale / 10:g} (it goes on alone); the same command then goes on with the others"
            )
    return f"{message}. Finished rounds are kept; retry the run with a lower lr: dsd2 resume RUN_DIR --lr-scale 0.1"
