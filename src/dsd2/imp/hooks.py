"""What runs alongside the rounds without changing their numbers: the late-rewind snapshot,
TensorBoard, progress, the caller's ``on_round``. Hooks observe; what changes a round's row or
files (the best-validation epoch: :mod:`dsd2.imp.best_epoch`) is part of its training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from dsd2 import distributed, rundir, store
from dsd2.config import choice_keyword
from dsd2.errors import UserError
from dsd2.imp.build import state_dict_cpu
from dsd2.imp.setup import RunContext
from dsd2.registry import RETRAIN_MODES
from dsd2.rundir import RoundRow
from dsd2.train import (
    EpochLog,
)

# ----------------------------------------------------------------------------- hooks


class Hook:
    """Runs alongside the rounds without changing their numbers; every method is a no-op here."""

    def round_start(self, round_idx: int) -> None:
        pass

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        pass

    def round_end(self, row: RoundRow) -> None:
        pass

    def close(self) -> None:
        pass


class RewindSnapshot(Hook):
    """late_rewind: the weights of epoch ``prune.rewind_epoch`` of round 0, which later rounds restart from."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        self.path = rundir.rewind_path(run_dir)

    def round_start(self, round_idx: int) -> None:
        if round_idx == 0 and self.epoch == 0:  # epoch 0 is the initialisation
            store.save_tensors(self.path, store.load_tensors(rundir.init_path(self.run_dir)))

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        if round_idx == 0 and log.epoch == self.epoch:
            store.save_tensors(self.path, state_dict_cpu(model))


class TensorBoard(Hook):
    """Optional TensorBoard scalars: per epoch (loss, accuracy, lr) and per round (every metric)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError:
            raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        step = round_idx * epochs + log.epoch
        for key in ("loss", "acc", "lr"):
            self.writer.add_scalar(f"epoch/{key}", getattr(log, key), step)

    def round_end(self, row: RoundRow) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "round":
                self.writer.add_scalar(f"round/{key}", value, row.round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class EpochProgress(Hook):
    """The caller's ``progress(round, epochs, log)`` after every epoch."""

    def __init__(self, fn: Callable[[int, int, EpochLog], None]):
        self.fn = fn

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        self.fn(round_idx, epochs, log)


class RoundDone(Hook):
    """The caller's ``on_round(row)`` once a round is saved (the row as rounds.csv now has it)."""

    def __init__(self, fn: Callable[[RoundRow], None]):
        self.fn = fn

    def round_end(self, row: RoundRow) -> None:
        self.fn(row)


def make_hooks(
    ctx: RunContext,
    *,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: Callable[[int, int, EpochLog], None] | None = None,
) -> list[Hook]:
    """The run's hooks, called in this order (the retraining mode's first: the late-rewind snapshot is
    on disk before anyone hears of its epoch)."""
    hooks: list[Hook] = []
    if not distributed.is_main():
        return hooks  # the others write files or report progress: rank 0's job
    mode = RETRAIN_MODES.get(ctx.cfg.prune.retrain)  # a dsd2.imp.modes.RetrainMode
    if mode.hooks is not None:
        hooks.extend(mode.hooks(ctx, **choice_keyword(ctx.cfg, RETRAIN_MODES)))
    if ctx.cfg.train.tensorboard:
        hooks.append(TensorBoard(ctx.run_dir))
    if progress is not None:
        hooks.append(EpochProgress(progress))
    if on_round is not None:
        hooks.append(RoundDone(on_round))
    return hooks
