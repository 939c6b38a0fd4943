"""Fused execution: K runs of one architecture trained as one batched computation (docs/fused.md).

:mod:`.stack` folds K models into one module, :mod:`.engine` trains it as K runs would train
alone, :mod:`.group` runs K IMP runs round by round, each writing its own run directory.
"""

from dsd2.fused.engine import ELEMENTWISE_OPTIMIZERS, train_fused, why_not
from dsd2.fused.stack import NotFusable, check, fold, load, stack, unfold, unload

__all__ = ["ELEMENTWISE_OPTIMIZERS", "NotFusable", "check", "fold", "load", "stack", "train_fused", "unfold", "unload", "why_not"]
