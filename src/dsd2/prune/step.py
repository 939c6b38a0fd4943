"""One pruning step: a registered criterion and allocation composed (:func:`prune_with`), or a
registered method (the reference's built-in pairs, bit-identical to their one-piece forms)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dsd2.config.choices import options_keyword
from dsd2.errors import UserError
from dsd2.registry import PRUNING_ALLOCATIONS, PRUNING_CRITERIA, PRUNING_METHODS

from .allocations import global_allocation, uniform_allocation
from .channels import check_layers_alive
from .criteria import ScoreInputs, magnitude_scores, random_scores
from .masks import Masks, check_step


def prune_with(
    criterion: str,
    allocation: str,
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    *,
    inputs: ScoreInputs | None = None,
    density: float | None = None,
    min_channels: int = 1,
    allocation_options: Mapping[str, Any] | None = None,
) -> Masks:
    """The next masks: scores of the registered ``criterion``, removed as the registered ``allocation`` says.

    An allocation registered with an options model gets ``allocation_options`` as the keyword ``options``.

    A structured allocation never leaves a layer without an output channel: the built-in ones keep
    ``min_channels`` per layer, and any structured allocation's result is checked (UserError)."""
    check_step(weights, masks, rate)
    inputs = inputs if inputs is not None else ScoreInputs(masks)
    scores = PRUNING_CRITERIA.get(criterion)(weights, inputs)
    meta: Mapping[str, Any] = PRUNING_ALLOCATIONS.metadata(allocation)
    # the built-in channel allocations take the per-layer floor; a plugin's gets the plain call
    extra: dict[str, Any] = {"min_channels": min_channels} if meta.get("min_channels") else {}
    extra.update(options_keyword(PRUNING_ALLOCATIONS, allocation, allocation_options or {}))  # a plugin's own options
    new = PRUNING_ALLOCATIONS.get(allocation)(scores, masks, rate, density, **extra)
    if meta.get("structured"):
        check_layers_alive(masks, new)
    return new


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` weights of smallest |w| over all layers together (L1 unstructured).

    ``generator`` is unused (magnitude pruning draws nothing): the signature of every pruning method."""
    check_step(weights, masks, rate)
    return global_allocation(magnitude_scores(weights), masks, rate)


def layerwise_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive_l)`` weights of smallest |w| in every layer l separately (``generator`` unused)."""
    check_step(weights, masks, rate)
    return uniform_allocation(magnitude_scores(weights), masks, rate)


def random_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` alive weights chosen uniformly at random over all layers."""
    if generator is None:
        raise ValueError("random pruning needs a generator")
    check_step(weights, masks, rate)
    return global_allocation(random_scores(weights, ScoreInputs(masks, generator)), masks, rate)


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


def composed(method: str, criterion: str | None, allocation: str | None) -> tuple[str, str] | None:
    """The (criterion, allocation) pair a run prunes with, or None to call ``method`` itself.

    Neither given: None (the method as registered, plugins' included). Otherwise the one not
    given comes from the method's registry metadata (``criterion`` / ``allocation``: the
    built-in methods have both); a method without it cannot be combined (UserError)."""
    if criterion is None and allocation is None:
        return None
    implied: Mapping[str, Any] = PRUNING_METHODS.metadata(method)
    crit = criterion if criterion is not None else implied.get("criterion")
    alloc = allocation if allocation is not None else implied.get("allocation")
    if crit is None or alloc is None:
        missing = "prune.criterion" if crit is None else "prune.allocation"
        raise UserError(f"pruning method {method!r} names no criterion and allocation of its own: give {missing} too")
    return crit, alloc


def needs_gradients(criterion: str) -> bool:
    """Whether the registered ``criterion`` reads the training-loss gradients (registry metadata)."""
    return bool(PRUNING_CRITERIA.metadata(criterion).get("gradients"))
