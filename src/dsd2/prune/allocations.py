"""Unstructured allocations: turn scores into the next masks with one threshold over all layers
(global), the same fraction of every layer (uniform) or Erdős–Rényi-Kernel densities (erk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .masks import Masks, count_alive, count_total, drop_smallest, unflatten


def global_allocation(
    scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, density: float | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` weights of lowest score over all layers together (one threshold)."""
    names = list(scores)
    flat_scores = torch.cat([scores[n].flatten() for n in names])
    alive = torch.cat([masks[n].flatten().cpu() for n in names])
    flat = drop_smallest(flat_scores, alive, round(rate * int(alive.sum())))
    return unflatten(flat, names, masks)


def uniform_allocation(
    scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, density: float | None = None
) -> Masks:
    """Remove ``round(rate * alive_l)`` weights of lowest score in every layer l separately."""
    return {n: _drop_per_layer(scores[n], masks[n], round(rate * int(masks[n].sum()))) for n in scores}


def _drop_per_layer(score: torch.Tensor, mask: torch.Tensor, n_drop: int) -> torch.Tensor:
    flat = drop_smallest(score.flatten(), mask.flatten().cpu(), n_drop)
    return flat.view_as(mask).to(mask.device)


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel layer densities (Evci et al. 2020, RigL) for an overall ``density``.

    Layer l's density is ε·(Σ dims)/(Π dims) (for a conv: (n_out + n_in + k_h + k_w)/(n_out·n_in·k_h·k_w),
    for a Linear Erdős–Rényi's (n_out + n_in)/(n_out·n_in)), ε chosen so the kept weights add up
    to ``density`` of the total. A layer whose density would pass 1 stays dense and ε is solved
    again over the others (as RigL's code does), until none does.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"ERK needs an overall density in (0, 1], got {density}")
    size = {n: _numel(s) for n, s in shapes.items()}
    raw = {n: sum(s) / size[n] for n, s in shapes.items()}
    keep = density * sum(size.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = keep - sum(size[n] for n in dense)
        divisor = sum(raw[n] * size[n] for n in rest)
        eps = budget / divisor if divisor else 0.0
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.add(max(over, key=lambda n: raw[n]))


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def erk_allocation(
    scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, density: float | None = None
) -> Masks:
    """Keep ``round(d_l · n_l)`` weights of highest score in layer l, d_l the ERK density for the
    round's overall target ``density`` (IMP passes (1 - rate)^round; None: (1 - rate) × the
    current density). ERK densities grow with the target, so from dense masks every round's
    masks nest in the previous ones; a layer already sparser than its share loses nothing."""
    if density is None:
        density = (1.0 - rate) * count_alive(masks) / max(count_total(masks), 1)
    target = erk_densities({n: tuple(m.shape) for n, m in masks.items()}, density)
    out: Masks = {}
    for n in scores:
        alive = int(masks[n].sum())
        out[n] = _drop_per_layer(scores[n], masks[n], alive - min(alive, round(target[n] * masks[n].numel())))
    return out
