"""The round loop: :func:`run_round` chains prune → reset → train → measure → save; :func:`run`
and :func:`resume` run every round of a config, from its checkpoints after a kill."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import checkpoint, distributed, rundir, store
from dsd2.compare import decide, memorisation, selection_column
from dsd2.config import RunConfig, options_of
from dsd2.distill.setup import Teaching, self_teaching
from dsd2.imp import modes
from dsd2.imp.best_epoch import BestEpoch
from dsd2.imp.build import round_seed, seeded_generator, state_dict_cpu, structured_allocation
from dsd2.imp.checks import check_config_matches
from dsd2.imp.execution import resolve_device
from dsd2.imp.hooks import Hook, make_hooks
from dsd2.imp.measure import measure
from dsd2.imp.modes import masked_tensors, prune_step, reset_weights, schedule_for
from dsd2.imp.record import extend_rounds
from dsd2.imp.retry import lr_scale_for
from dsd2.imp.setup import RunContext, start
from dsd2.imp.undo import StartUndo
from dsd2.phases import label_phases
from dsd2.prune import (
    ChannelFloor,
    Masks,
    full_masks,
)
from dsd2.registry import STOP_RULES
from dsd2.registry.options import StopOptions
from dsd2.rundir import RoundRow, load_state, run_dir_for
from dsd2.threads import Share
from dsd2.train import (
    EpochLog,
    Objective,
    TrainingDiverged,
    train,
)

# ----------------------------------------------------------------------------- loop state


@dataclass(frozen=True)
class Trained:
    """A trained round: its epoch logs, the lr factor it trained with and, under
    ``train.select_epoch=best_val``, its best-validation epoch."""

    logs: list[EpochLog]
    lr_scale: float
    best: BestEpoch | None = None


@dataclass
class Rounds:
    """The finished rounds (rows as labelled in rounds.csv, per-layer entropy, timings) and the
    masks the next round prunes from."""

    rows: list[RoundRow]
    entropy: list[dict[str, Any]]
    timings: list[dict[str, Any]]
    masks: Masks

    @property
    def last(self) -> RoundRow | None:
        return self.rows[-1] if self.rows else None


def resume_rounds(ctx: RunContext) -> Rounds:
    """The rounds already finished, from their checksummed files; the model gets the last one's weights."""
    done = rundir.read_finished(ctx.run_dir)
    masks = full_masks(ctx.weights)
    if done.rows:
        last = done.rows[-1].round
        state = rundir.round_state_path(ctx.run_dir, last)
        load_state(ctx.model, store.load_tensors(state), state)
        saved = rundir.load_masks(rundir.round_masks_path(ctx.run_dir, last), dict(ctx.weights), complete=True)
        masks = {k: saved[k].to(ctx.device) for k in ctx.weights}
    return Rounds(done.rows, done.entropy, done.timings, masks)


def _epoch_checkpointer(
    ctx: RunContext, objective: Objective, path: Path, gen: torch.Generator, total_epochs: int, best: BestEpoch | None = None
):
    """Save a mid-round checkpoint after an epoch when the configured interval has passed."""
    interval = ctx.cfg.train.checkpoint_interval_s
    last = [time.monotonic()]

    def save(next_epoch: int, opt: torch.optim.Optimizer, logs: list[EpochLog]) -> None:
        if not distributed.is_main():
            return  # the replicas are identical: rank 0 saves, every rank resumes from it
        if next_epoch >= total_epochs or time.monotonic() - last[0] < interval:
            return  # the finished round itself is saved right after
        checkpoint.save_epoch_state(
            path,
            model=ctx.model,
            optimizer=opt,
            generator=gen,
            next_epoch=next_epoch,
            logs=[vars(x) for x in logs],
            extra={**(_adapter_state(objective) or {}), **(best.checkpoint_state() if best is not None else {})},
        )
        last[0] = time.monotonic()

    return save


def resume_notice(round_idx: int, next_epoch: int, epochs: int) -> str:
    """The line a run prints when it continues a round from its epoch checkpoint."""
    return (
        f"round {round_idx}: resuming from its epoch checkpoint ({next_epoch} of {epochs} epochs already trained; "
        "`dsd2 resume --restart-round` retrains the round instead)"
    )


def train_round(ctx: RunContext, round_idx: int, masks: Masks, hooks: list[Hook], *, teaching: Teaching | None) -> Trained:
    """Train one round (taught by ``teaching``), from its epoch checkpoint when a kill interrupted
    it, keeping its best-validation epoch when the config selects it."""
    cfg, objective = ctx.cfg, ctx.objective_with(teaching)
    lr_scale = lr_scale_for(ctx.run_dir, round_idx)
    schedule = schedule_for(cfg, round_idx, lr_scale)
    gen = seeded_generator(ctx.device, round_seed(cfg.seed, round_idx, stream=1))
    for hook in hooks:
        hook.round_start(round_idx)
    partial = checkpoint.partial_path(ctx.run_dir, round_idx)
    resume_state = checkpoint.load_epoch_state(partial)
    if resume_state is not None:
        load_state(ctx.model, resume_state.model_state, partial)
        if distributed.is_main():  # a rerun that continues mid-round says so (one line, as the thread notice)
            print(resume_notice(round_idx, resume_state.next_epoch, schedule.epochs), file=sys.stderr, flush=True)
    reset = getattr(objective, "reset", None)
    if reset is not None:  # feature distillation: the round's adapter from its seed, or as the checkpoint left it
        reset(round_seed(cfg.seed, round_idx, stream=7))
        if resume_state is not None:
            adapter = {k: v for k, v in resume_state.extra.items() if not k.startswith(BestEpoch.PREFIX)}
            objective.load_adapter_state(adapter)  # type: ignore[attr-defined]
    best = BestEpoch(ctx, round_idx) if cfg.train.select_epoch == "best_val" else None  # on every rank: evaluation is sharded
    if best is not None and resume_state is not None:
        best.restore(resume_state.extra)

    if resume_state is not None and modes.is_gradual_round(ctx, round_idx):
        # the masks pruned so far are the zeros of the checkpointed weights (re-zeroed after every step)
        for name, m in masks.items():
            m.copy_(ctx.weights[name] != 0)

    def epoch_end(log: EpochLog, model: nn.Module) -> None:
        if modes.is_gradual_round(ctx, round_idx):
            modes.gradual_step(ctx, masks, round_idx, log.epoch - 1, schedule.epochs)  # log.epoch counts from 1
        if best is not None:
            best.epoch_end(log, model)
        for hook in hooks:
            hook.epoch_end(round_idx, schedule.epochs, log, model)

    masked, all_masks = masked_tensors(ctx, masks)
    try:
        logs = train(
            ctx.model,
            ctx.train_batches,
            schedule,
            batch_size=cfg.train.batch_size,
            generator=gen,
            masks=all_masks,
            weights=masked,
            objective=objective,
            amp=cfg.train.amp,
            on_epoch_end=epoch_end,
            resume=resume_state,
            checkpoint=_epoch_checkpointer(ctx, objective, partial, gen, schedule.epochs, best),
            compile_model=cfg.train.compile,
        )
    except TrainingDiverged as err:
        raise TrainingDiverged(_divergence_advice(str(err), ctx.run_dir, lr_scale, resumed=resume_state is not None)) from None
    return Trained(logs, lr_scale, best)


def _divergence_advice(message: str, run_dir: Path, lr_scale: float, *, resumed: bool) -> str:
    """What to do after a divergence, given the lr factor in use and where the round started."""
    head = message.split(". Finished rounds", 1)[0]
    advice = f"{head}. Finished rounds are kept. Retry with a lower lr: dsd2 resume {run_dir} --lr-scale {lr_scale / 10:g}"
    if resumed:
        advice += (
            " --restart-round (this attempt started from the round's epoch checkpoint, which may already hold diverged "
            "weights; --restart-round drops it and retrains the round from the last finished round)"
        )
    return advice


def save_round(
    ctx: RunContext,
    masks: Masks,
    row: RoundRow,
    layer_rows: list[dict[str, Any]],
    timing: dict[str, Any],
    logs: list[EpochLog],
    best_state: dict[str, torch.Tensor] | None = None,
    adapter: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the round's folder, its manifest last (from then on the round counts as finished),
    and drop its epoch checkpoint. ``best_state``: the best-validation epoch's weights
    (``train.select_epoch=best_val``), checksummed in the manifest beside the others; ``adapter``:
    feature distillation's trained adapter."""
    rd = rundir.round_dir(ctx.run_dir, row.round)  # made by the first write, which refuses a link there
    store.save_tensors(rd / rundir.STATE, state_dict_cpu(ctx.model))
    store.save_tensors(rd / rundir.MASKS, masks)
    if adapter is not None:  # feature distillation: the round's trained adapter, beside (not in) the student's state
        store.save_tensors(rd / "adapter.safetensors", adapter)
    store.write_json(
        rd / rundir.METRICS,
        {"row": row.as_dict(), "entropy_layers": layer_rows, "timing": timing, "epochs": [vars(log) for log in logs]},
    )
    files = list(rundir.ROUND_FILES)
    if best_state is not None:
        store.save_tensors(rd / rundir.BEST_STATE, best_state)
        files.append(rundir.BEST_STATE)
    store.write_manifest(rd, files)
    checkpoint.partial_path(ctx.run_dir, row.round).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- tables and stopping


def label_rows(rows: list[RoundRow], *, finished: bool, n_eval: int | None = None) -> list[str]:
    """Phase of every round (docs/phases.md); ``finished``: every configured round was trained;
    ``n_eval``: samples behind the selection accuracy (sets the accuracy tolerance)."""
    if not rows:
        return []
    col = selection_column(rows)
    return label_phases(
        [r[col] for r in rows],
        memorisation=memorisation(rows),  # the flipped samples', else the probe's (noise.probe)
        fit=[r.unflipped_acc for r in rows],
        finished=finished,
        n_eval=n_eval,
    )


def _n_eval(ctx: RunContext) -> int:
    """Samples behind the selection column: validation, or test when there is no validation split."""
    return int(ctx.data.val_y.numel()) or int(ctx.data.test_y.numel())


def relabel(ctx: RunContext, rounds: Rounds) -> None:
    """Label the phases over the curve so far."""
    # a curve the channel floor ended is finished too: no later round can exist
    finished = len(rounds.rows) == ctx.cfg.prune.rounds + 1 or rundir.floor_stopped_at(ctx.run_dir) is not None
    phases = label_rows(rounds.rows, finished=finished, n_eval=_n_eval(ctx))
    rounds.rows = [dataclasses.replace(r, phase=p) for r, p in zip(rounds.rows, phases)]


def write_tables(ctx: RunContext, rounds: Rounds) -> None:
    """Relabel the phases over the curve so far and rewrite rounds.csv, entropy.csv and timings.csv."""
    relabel(ctx, rounds)
    columns = rundir.round_columns(ctx.cfg.train.select_epoch == "best_val", structured_allocation(ctx.cfg), ctx.labels.probe is not None)
    store.write_csv(ctx.run_dir / rundir.ROUNDS_CSV, [r.as_dict() for r in rounds.rows], columns)
    store.write_csv(ctx.run_dir / rundir.ENTROPY_CSV, rounds.entropy, rundir.ENTROPY_COLUMNS)
    store.write_csv(ctx.run_dir / rundir.TIMINGS_CSV, rounds.timings, rundir.TIMING_COLUMNS)
    rundir.record_tables(ctx.run_dir)


def stop_decision(cfg: RunConfig, rows: list[RoundRow]):
    """The early-stop rule of ``cfg`` applied to the finished rows (None when no rule is set)."""
    if cfg.early_stop.rule == "none" or not rows:
        return None
    es = cfg.early_stop
    o: StopOptions = options_of(cfg, STOP_RULES, "plain")  # the keys every rule is called with (a plugin's too)
    return decide(rows, es.rule, tolerance=o.tolerance, patience=o.patience, select=o.select, options=es.rule_options)


def write_early_stop(ctx: RunContext, rows: list[RoundRow]) -> None:
    decision = stop_decision(ctx.cfg, rows)
    if decision is not None:
        store.write_json(rundir.early_stop_path(ctx.run_dir), {"rule": ctx.cfg.early_stop.rule, **_as_dict(decision)})


def _write_floor_stop(ctx: RunContext, rounds: Rounds, floor: ChannelFloor) -> None:
    """Record that the channel floor left round ``len(rows)`` nothing to prune: the run is complete
    at its last finished round (as an early stop), and its phases are labelled as a finished curve."""
    last = rounds.rows[-1].round
    store.write_json(
        rundir.floor_stop_path(ctx.run_dir), {"stop_round": last, "min_channels": ctx.cfg.prune.min_channels, "reason": str(floor)}
    )
    write_tables(ctx, rounds)


def _as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)


# ----------------------------------------------------------------------------- the loop


def run_round(ctx: RunContext, rounds: Rounds, round_idx: int, hooks: list[Hook], before: Teaching | None) -> Teaching | None:
    """One round: prune → teach → reset → train → measure → save; then the tables and the hooks.
    ``before``: the previous round's teaching (the run's at its first round); returns this round's."""
    t0 = time.perf_counter()
    masks = prune_step(ctx, rounds.masks, round_idx)
    teaching = round_teaching(ctx, round_idx, before)
    reset_weights(ctx, round_idx, masks)
    trained = train_round(ctx, round_idx, masks, hooks, teaching=teaching)
    finish_round(ctx, rounds, round_idx, hooks, masks, trained, t0, teaching=teaching)
    return teaching


def finish_round(
    ctx: RunContext,
    rounds: Rounds,
    round_idx: int,
    hooks: list[Hook],
    masks: Masks,
    trained: Trained,
    t0: float,
    timing_extra: dict[str, Any] | None = None,
    *,
    teaching: Teaching | None,
) -> None:
    """A trained round's measure → save → tables → hooks (``t0``: when the round began; its row
    and files take its best-validation epoch, when it kept one;
    ``timing_extra``: more keys for its metrics.json timing, e.g. the fused group's size;
    ``teaching``: the round's)."""
    train_s = time.perf_counter() - t0
    logs, best = trained.logs, trained.best
    scored = modes.scored_examples(ctx, round_idx, len(logs))
    row, layer_rows = measure(ctx, round_idx, masks, logs, rounds.last, scored, teaching=teaching)
    if best is not None:
        row = dataclasses.replace(row, **best.columns())
    timing = {
        "round": round_idx,
        "wall_s": time.perf_counter() - t0,
        "train_s": train_s,
        "device": str(ctx.device),
        "lr_scale": trained.lr_scale,
        "threads": ctx.threads,
        **(timing_extra or {}),
    }
    w = distributed.world()
    if w.distributed:
        timing["world_size"] = w.size  # metrics.json: which rounds ran how split
    if w.main:
        adapter = _adapter_state(ctx.objective_with(teaching))
        save_round(ctx, masks, row, layer_rows, timing, logs, best.state if best is not None else None, adapter)
    rounds.rows.append(row)
    rounds.entropy.extend(layer_rows)
    rounds.timings.append(timing)
    rounds.masks = masks
    tables_on_every_rank(ctx, rounds)
    for hook in hooks:
        hook.round_end(rounds.rows[-1])
    distributed.barrier()  # the round is on disk before any rank reads a file of it (late rewind, resume)


def _adapter_state(objective: Objective) -> dict[str, torch.Tensor] | None:
    """Feature distillation's trained adapter (None for any other objective)."""
    state = getattr(objective, "adapter_state", None)
    return state() if state is not None else None


def round_teaching(ctx: RunContext, round_idx: int, before: Teaching | None) -> Teaching | None:
    """The teaching round ``round_idx`` trains with, given the previous round's: the same, but
    under self-distillation, where round i >= 1 learns from round i - 1 as saved on disk (the
    same teacher whether the run was interrupted or not)."""
    if not (ctx.cfg.distill.self_distill and round_idx > 0):
        return before
    close = getattr(ctx.objective_with(before), "close", None)
    if close is not None:  # the previous round's hint hooks on the student
        close()
    channels_last = ctx.train_batches.channels_last
    t = self_teaching(ctx.cfg, ctx.run_dir, round_idx, ctx.device, ctx.train_batches, channels_last, student=ctx.model)
    assert t.objective is not None
    return t


def run(
    cfg: RunConfig,
    out: str | Path = "runs",
    *,
    run_dir: Path | None = None,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: Callable[[int, int, EpochLog], None] | None = None,
    share: Share = Share(),
) -> Path:
    """Run (or resume) the IMP study of ``cfg``; return its run directory.

    ``on_round(row)`` is called after every round (the row is also a read-only mapping of column
    to value), ``progress(round, epochs, log)`` after every epoch. ``share``: the runs this one
    shares the machine with and a thread cap, for ``train.threads=auto`` (:mod:`dsd2.threads`).

    Under a launcher that starts several processes (``torchrun``: RANK/WORLD_SIZE set) the
    processes train this one run data-parallel (:mod:`dsd2.distributed`): rank 0 holds the
    lock and writes the run directory, the others read what it wrote; the callbacks run on
    rank 0 only."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg, out)
    with distributed.session(resolve_device(cfg.train.device).type) as world:
        if world.distributed:
            distributed.check_global_batch(cfg.train.batch_size, world.size)
        checked = distributed.on_main(lambda: check_config_matches(run_dir, cfg))
        cfg = distributed.broadcast_object(checked) if world.distributed else checked  # type: ignore[assignment]
        with ExitStack() as held:
            ctx = distributed.on_main(lambda: begin_run(cfg, run_dir, held, share))
            if ctx is None:  # another rank: rank 0 has written config, meta, labels and init
                ctx = start(cfg, run_dir, share)
            _rounds(ctx, on_round, progress)
    return run_dir


def begin_run(cfg: RunConfig, run_dir: Path, held: ExitStack, share: Share, started: list[StartUndo] | None = None) -> RunContext:
    """Lock the run directory (``held`` keeps the lock), extend it when ``cfg`` asks more rounds,
    and start the run; a run that fails to start leaves no half-made directory (nor one that says
    it was extended but trained nothing). ``started``: gets how to take this start back, once it
    succeeded (a fused group one of whose later runs cannot start takes back them all)."""
    fresh = not run_dir.exists()
    held.enter_context(store.run_lock(run_dir))
    undo = StartUndo.found(run_dir, fresh=fresh)
    extended = False
    if not fresh and (run_dir / rundir.META).is_file():
        saved = rundir.read_config(run_dir)
        if cfg.prune.rounds > saved.prune.rounds:
            extend_rounds(run_dir, saved, cfg)
            extended = True
    try:
        ctx = start(cfg, run_dir, share)
    except BaseException:  # missing data, unknown model, no memory
        StartUndo(run_dir, fresh, undo.before if extended else {})()
        raise
    if started is not None:
        started.append(undo)
    if distributed.world().distributed:
        _record_world(run_dir, cfg)
    return ctx


def _record_world(run_dir: Path, cfg: RunConfig) -> None:
    """meta.json's "distributed": how the latest launch split the run (a resume may use another
    world size: the sample order does not depend on it; each round's metrics.json has its own)."""
    meta = rundir.read_meta(run_dir)
    meta["distributed"] = distributed.describe(cfg.train.batch_size)
    store.write_json(run_dir / rundir.META, meta)


def _rounds(ctx: RunContext, on_round: Callable[[RoundRow], None] | None, progress: Callable[[int, int, EpochLog], None] | None) -> None:
    """The rounds still to train, until the last or the early-stop rule's stop."""
    cfg, main = ctx.cfg, distributed.is_main()
    rounds = resume_rounds(ctx)
    tables_on_every_rank(ctx, rounds)
    hooks = make_hooks(ctx, on_round=on_round, progress=progress)
    floor: ChannelFloor | None = None
    teaching = ctx.teaching
    try:
        for i in range(len(rounds.rows), cfg.prune.rounds + 1):
            decision = stop_decision(cfg, rounds.rows)
            if decision is not None and decision.stop_round is not None:
                break
            if rundir.floor_stopped_at(ctx.run_dir) is not None:
                break  # resumed after the floor ended it: nothing is left to prune
            try:
                teaching = run_round(ctx, rounds, i, hooks, teaching)
            except ChannelFloor as blocked:
                if i == 0 or modes.is_gradual_round(ctx, i):
                    raise  # mid-round (gradual): the round is half trained, not the end of the curve
                floor = blocked  # between rounds: round i - 1 is the curve's last
                break
    finally:
        for hook in hooks:
            hook.close()
        ctx.close()
    if main:
        write_early_stop(ctx, rounds.rows)
        if floor is not None:
            _write_floor_stop(ctx, rounds, floor)
    distributed.barrier()  # every file is written when any rank returns


def tables_on_every_rank(ctx: RunContext, rounds: Rounds) -> None:
    """Rank 0 writes the tables; the other ranks label the phases the same way (the stop rule reads them)."""
    if distributed.is_main():
        write_tables(ctx, rounds)
    else:
        relabel(ctx, rounds)


def resume(run_dir: str | Path, **kwargs) -> Path:
    """Continue the run in ``run_dir`` with the config it recorded."""
    return run(rundir.read_config(run_dir), run_dir=Path(run_dir), **kwargs)
