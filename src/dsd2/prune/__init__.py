"""Pruning masks: a criterion scores the weights, an allocation decides how many each layer loses; apply, sparsity.

Masks are plain bool tensors keyed by the state-dict name of the weight they cover. They are
re-applied after every optimiser step (``apply_masks``), which keeps pruned weights at exactly
zero without forward hooks or re-parametrisation, so a pruned model's ``state_dict`` is that of
the dense architecture with zeros in it.

Each round removes ``round(rate * alive)`` of the weights still alive (as ``torch.nn.utils.prune``
does), so after round i the sparsity is 1 - (1 - rate)^i up to one weight per round.

A pruning step is two composable choices (docs/pruning.md):

- a *criterion* (:data:`dsd2.registry.PRUNING_CRITERIA`) scores every weight, low = pruned first:
  ``criterion(weights, inputs: ScoreInputs) -> {name: float scores on the CPU}``: magnitude |w|,
  random, magnitude × gradient |w·g| and SNIP |w₀·g(w₀)|; the gradient ones read
  :class:`GradientSource` from ``inputs``;
- an *allocation* (:data:`dsd2.registry.PRUNING_ALLOCATIONS`) turns scores into the next masks:
  ``allocation(scores, masks, rate, density) -> masks``: one threshold over all layers (global),
  the same fraction of every layer (uniform), or Erdős–Rényi-Kernel layer densities (erk), which
  aims at the round's target ``density`` of the whole set; the structured ones remove whole
  output channels (channel, channel_uniform, channel_normalised) and keep ``min_channels`` of
  every layer, so the model is never cut in two.

The registered pruning *methods* (``prune.method``: ``method(weights, masks, rate, generator)``)
are the reference's pairs, bit-identical to their earlier one-piece implementations:
global_magnitude = magnitude + global, layerwise_magnitude = magnitude + uniform, random =
random + global.
"""

from .allocations import erk_allocation, erk_densities, global_allocation, uniform_allocation
from .channels import (
    BATCHNORMS,
    ChannelFloor,
    NoChannelAtThisRate,
    add_slimming_penalty,
    alive_rows,
    batchnorm_after,
    batchnorm_masks,
    channel_allocation,
    channel_normalised_allocation,
    channel_sparsity,
    channel_uniform_allocation,
    check_layers_alive,
    row_sparsity,
    slimming_scores,
)
from .criteria import GradientSource, ScoreInputs, magnitude_gradient_scores, magnitude_scores, random_scores, snip_scores
from .masks import (
    Masks,
    Scores,
    apply_masks,
    check_step,
    count_alive,
    count_total,
    drop_smallest,
    full_masks,
    layer_densities,
    sparsity,
    unflatten,
)
from .step import composed, global_magnitude_masks, layerwise_magnitude_masks, needs_gradients, next_masks, prune_with, random_masks

__all__ = [
    "BATCHNORMS",
    "ChannelFloor",
    "GradientSource",
    "Masks",
    "NoChannelAtThisRate",
    "ScoreInputs",
    "Scores",
    "add_slimming_penalty",
    "alive_rows",
    "apply_masks",
    "batchnorm_after",
    "batchnorm_masks",
    "channel_allocation",
    "channel_normalised_allocation",
    "channel_sparsity",
    "channel_uniform_allocation",
    "check_layers_alive",
    "check_step",
    "composed",
    "count_alive",
    "count_total",
    "drop_smallest",
    "erk_allocation",
    "erk_densities",
    "full_masks",
    "global_allocation",
    "global_magnitude_masks",
    "layer_densities",
    "layerwise_magnitude_masks",
    "magnitude_gradient_scores",
    "magnitude_scores",
    "needs_gradients",
    "next_masks",
    "prune_with",
    "random_masks",
    "random_scores",
    "row_sparsity",
    "slimming_scores",
    "snip_scores",
    "sparsity",
    "unflatten",
    "uniform_allocation",
]
