"""One round's optimiser and learning-rate schedule (:class:`Schedule`), and the built-in
schedules and optimisers registered by name in :mod:`dsd2.registry`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dsd2.config.choices import options_keyword
from dsd2.registry import OPTIMIZERS, SCHEDULES


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
