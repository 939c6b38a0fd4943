"""Masks and what every pruning step shares: counting, applying, the step's input check, and
removing the lowest-scored alive entries."""

from __future__ import annotations

from collections.abc import Mapping

import torch

Masks = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


def full_masks(weights: Mapping[str, torch.Tensor]) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def count_alive(masks: Mapping[str, torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def count_total(masks: Mapping[str, torch.Tensor]) -> int:
    return int(sum(m.numel() for m in masks.values()))


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    total = count_total(masks)
    return 1.0 - count_alive(masks) / total if total else 0.0


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in masks.items()}


def check_step(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"prune rate must be in (0, 1), got {rate}")
    if set(weights) != set(masks):
        raise ValueError(f"weights and masks cover different tensors: {sorted(set(weights) ^ set(masks))}")


def drop_smallest(scores: torch.Tensor, alive: torch.Tensor, n_drop: int) -> torch.Tensor:
    """New flat mask: ``alive`` minus the ``n_drop`` alive entries of lowest score.

    Ties break by position (stable sort), so the result is deterministic.
    """
    new = alive.clone()
    if n_drop <= 0:
        return new
    alive_idx = alive.nonzero().squeeze(1)
    order = torch.sort(scores[alive_idx], stable=True).indices
    new[alive_idx[order[:n_drop]]] = False
    return new


def unflatten(flat: torch.Tensor, names: list[str], like: Mapping[str, torch.Tensor]) -> Masks:
    out: Masks = {}
    start = 0
    for n in names:
        k = like[n].numel()
        out[n] = flat[start : start + k].view_as(like[n]).to(like[n].device)
        start += k
    return out


@torch.no_grad()
def apply_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (call after every optimiser step)."""
    for name, w in weights.items():
        w.mul_(masks[name])
