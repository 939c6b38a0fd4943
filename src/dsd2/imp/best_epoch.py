"""``train.select_epoch=best_val``: the best-validation epoch of a round, part of its training
(:func:`dsd2.imp.loop.train_round` keeps it, the round's row and files take it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dsd2.imp.build import state_dict_cpu
from dsd2.imp.measure import predict_classes
from dsd2.imp.setup import RunContext
from dsd2.train import EpochLog, accuracy


class BestEpoch:
    """The best epoch of round ``round_idx`` so far: after every epoch, the validation accuracy; the
    weights of the best epoch (ties: the earlier) and its test accuracy are kept for the round's
    files. Evaluation runs in eval mode and draws no random numbers, so training is unchanged.
    Every rank evaluates (the prediction is sharded); the epoch checkpoint carries the best so
    far, so a resumed round keeps the same best epoch."""

    PREFIX = "best/"

    def __init__(self, ctx: RunContext, round_idx: int):
        self.ctx, self.round_idx = ctx, round_idx
        self.val, self.test = ctx.split("val"), ctx.split("test")
        self.epoch: int | None = None
        self.val_acc = -1.0
        self.test_acc: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def epoch_end(self, log: EpochLog, model: nn.Module) -> None:
        d = self.ctx.data
        acc = accuracy(predict_classes(self.ctx, self.val), d.val_y)
        if acc is not None and acc > self.val_acc:
            self.epoch, self.val_acc, self.state = log.epoch, acc, state_dict_cpu(model)
            self.test_acc = accuracy(predict_classes(self.ctx, self.test), d.test_y)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The best so far, as tensors for the epoch checkpoint's ``extra``."""
        if self.state is None:
            return {}
        meta = torch.tensor([float(self.epoch or 0), self.val_acc, -1.0 if self.test_acc is None else self.test_acc], dtype=torch.float64)
        return {f"{self.PREFIX}meta": meta, **{f"{self.PREFIX}state/{k}": v for k, v in self.state.items()}}

    def restore(self, extra: dict[str, torch.Tensor]) -> None:
        """The best so far from an epoch checkpoint (nothing when it holds none)."""
        meta = extra.get(f"{self.PREFIX}meta")
        if meta is None:
            return
        epoch, val_acc, test_acc = meta.tolist()
        self.epoch, self.val_acc, self.test_acc = int(epoch), float(val_acc), None if test_acc < 0 else float(test_acc)
        cut = len(f"{self.PREFIX}state/")
        self.state = {k[cut:]: v for k, v in extra.items() if k.startswith(f"{self.PREFIX}state/")}

    def columns(self) -> dict[str, Any]:
        """The round's best-epoch columns of rounds.csv."""
        return {"best_epoch": self.epoch, "best_val_acc": self.val_acc, "best_test_acc": self.test_acc}
