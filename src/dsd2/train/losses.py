"""Training losses (:class:`Objective`): cross-entropy for vanilla IMP, soft targets; the KD
losses of DSD² students live in :mod:`dsd2.distill`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class Objective(Protocol):
    """A training loss. ``index``: the rows of the training split in the batch (lets an
    objective use per-sample precomputed values, e.g. cached teacher logits)."""

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


@dataclass(frozen=True, eq=False)
class SoftTargets:
    """Cross-entropy with soft targets, −Σ_j t_ij log softmax(z_i)_j, where t_i is row ``index``
    of ``probs`` (the training split's class probabilities, on the device); the integer
    ``targets`` are not used."""

    probs: torch.Tensor

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), self.probs[index])
