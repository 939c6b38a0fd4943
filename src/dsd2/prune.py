"""Pruning masks: selection by global / layer-wise magnitude or at random, apply, sparsity.

Masks are plain bool tensors keyed by the state-dict name of the weight they cover. They are
re-applied after every optimiser step (``apply_masks``), which keeps pruned weights at exactly
zero without forward hooks or re-parametrisation, so a pruned model's ``state_dict`` is that of
the dense architecture with zeros in it.

Each round removes ``round(rate * alive)`` of the weights still alive (as ``torch.nn.utils.prune``
does), so after round i the sparsity is 1 - (1 - rate)^i up to one weight per round.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dsd2.registry import PRUNING_METHODS

Masks = dict[str, torch.Tensor]


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


def _check(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"prune rate must be in (0, 1), got {rate}")
    if set(weights) != set(masks):
        raise ValueError(f"weights and masks cover different tensors: {sorted(set(weights) ^ set(masks))}")


def _drop_smallest(scores: torch.Tensor, alive: torch.Tensor, n_drop: int) -> torch.Tensor:
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


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` weights of smallest |w| over all layers together (L1 unstructured).

    ``generator`` is unused (magnitude pruning draws nothing): the signature of every pruning method."""
    _check(weights, masks, rate)
    names = list(weights)
    scores = torch.cat([weights[n].detach().abs().float().flatten().cpu() for n in names])
    alive = torch.cat([masks[n].flatten().cpu() for n in names])
    flat = _drop_smallest(scores, alive, round(rate * int(alive.sum())))
    return _unflatten(flat, names, masks)


def layerwise_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive_l)`` weights of smallest |w| in every layer l separately (``generator`` unused)."""
    _check(weights, masks, rate)
    out: Masks = {}
    for n, w in weights.items():
        alive = masks[n].flatten().cpu()
        flat = _drop_smallest(w.detach().abs().float().flatten().cpu(), alive, round(rate * int(alive.sum())))
        out[n] = flat.view_as(masks[n]).to(masks[n].device)
    return out


def random_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` alive weights chosen uniformly at random over all layers."""
    if generator is None:
        raise ValueError("random pruning needs a generator")
    _check(weights, masks, rate)
    names = list(weights)
    alive = torch.cat([masks[n].flatten().cpu() for n in names])
    scores = torch.rand(alive.numel(), generator=generator)
    flat = _drop_smallest(scores, alive, round(rate * int(alive.sum())))
    return _unflatten(flat, names, masks)


def _unflatten(flat: torch.Tensor, names: list[str], like: Mapping[str, torch.Tensor]) -> Masks:
    out: Masks = {}
    start = 0
    for n in names:
        k = like[n].numel()
        out[n] = flat[start : start + k].view_as(like[n]).to(like[n].device)
        start += k
    return out


def next_masks(
    method: str,
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    generator: torch.Generator | None = None,
) -> Masks:
    """The masks of the next round by the registered pruning method ``method``
    (:data:`dsd2.registry.PRUNING_METHODS`; an unknown name raises UnknownNameError, a ValueError)."""
    return PRUNING_METHODS.get(method)(weights, masks, rate, generator)


@torch.no_grad()
def apply_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (call after every optimiser step)."""
    for name, w in weights.items():
        w.mul_(masks[name])
