"""The built-in choices' own options: one small, frozen, typed model per choice that has any.

Each is built from the flat config keys the choice reads (its registry entry's metadata ``flat``,
e.g. finetune's ``lr`` from ``prune.finetune_lr``), which stay the way users give them; code that
runs a choice reads them through :func:`dsd2.config.options_of`, not from the sections. The
values were validated by the config schema already: these models only give them a type and a
name. Must not import torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class BuiltinOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FinetuneOptions(BuiltinOptions):
    """prune.retrain=finetune: a constant ``lr`` for ``epochs`` per round (None: train.epochs)."""

    lr: float
    epochs: int | None


class LateRewindOptions(BuiltinOptions):
    """prune.retrain=late_rewind: rounds restart from the weights of round 0's epoch ``epoch``."""

    epoch: int


FINETUNE_FLAT = {"lr": "prune.finetune_lr", "epochs": "prune.finetune_epochs"}
LATE_REWIND_FLAT = {"epoch": "prune.rewind_epoch"}


class GradualOptions(BuiltinOptions):
    """prune.schedule=gradual: the epochs (0-based) after which it prunes (``end`` None: all but the last quarter)."""

    start: int
    end: int | None


GRADUAL_FLAT = {"start": "prune.gradual_start", "end": "prune.gradual_end"}


class SgdOptions(BuiltinOptions):
    """train.optimizer=sgd."""

    momentum: float


SGD_FLAT = {"momentum": "train.momentum"}


class MultistepOptions(BuiltinOptions):
    """train.schedule=multistep: lr times ``lr_decay`` at each of the ``milestones`` (fractions of the epochs)."""

    milestones: tuple[float, ...]
    lr_decay: float


MULTISTEP_FLAT = {"milestones": "train.milestones", "lr_decay": "train.lr_decay"}


class GradientScoreOptions(BuiltinOptions):
    """The gradient criteria (magnitude_gradient, snip): ``batches`` training batches, BatchNorm as ``batchnorm``."""

    batches: int
    batchnorm: Literal["running", "batch"]


GRADIENT_SCORE_FLAT = {"batches": "prune.score_batches", "batchnorm": "prune.score_batchnorm"}


class ChannelOptions(BuiltinOptions):
    """The structured (channel*) allocations: every pruned layer keeps ``min_channels`` output channels."""

    min_channels: int


CHANNEL_FLAT = {"min_channels": "prune.min_channels"}


class StopOptions(BuiltinOptions):
    """The plain and entropy stop rules."""

    tolerance: float
    patience: int
    select: Literal["best", "last_good"]


STOP_FLAT = {"tolerance": "early_stop.tolerance", "patience": "early_stop.patience", "select": "early_stop.select"}


class AsymmetricOptions(BuiltinOptions):
    """noise.kind=asymmetric: class c's samples get ``class_map[c]`` (None: the dataset's map)."""

    class_map: dict[int, int] | None


class InstanceOptions(BuiltinOptions):
    """noise.kind=instance: ``std`` of the truncated normal of the per-sample flip rates."""

    std: float


ASYMMETRIC_FLAT = {"class_map": "noise.class_map"}
INSTANCE_FLAT = {"std": "noise.instance_std"}
