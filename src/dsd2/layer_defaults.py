"""Model-specific defaults of the pruning set (``prune.include_classifier``,
``prune.exclude_first_conv``): what a model prunes when the config does not say.

Structured (channel) allocations leave the classifier out by default too: they remove whole
output rows, and the classifier's rows are the classes, so pruning it removes classes (a
LeNet-300-100 with ``channel_uniform`` lost 2 of its 10 classes per round). A config that names
``prune.include_classifier: true`` with such an allocation is refused when a new run starts
(:func:`prunes_classes`); runs started before keep training as they began.

The global defaults are the reference's (every Conv/Linear weight, the classifier included). A
model listed in :data:`MODEL_PRUNE_DEFAULTS` replaces them for the keys it names, before the
config is validated, and only for keys the config does not give: an explicit value always wins,
and config.yaml records the value used, so a run resumes with the pruning set it started with.
The run id hashes the values that differ from the global defaults, so a model default that
differs changes the id of configs that relied on the global one (they prune other layers now).

No torch here: configs are validated before torch loads.
"""

from __future__ import annotations

from typing import Any

from dsd2.registry import PRUNING_ALLOCATIONS, PRUNING_METHODS, normalise_name

# model name (as registered) -> {prune key: default}. The built-in ViT prunes its attention and
# MLP Linears only: the patch embedding (its first and only conv) and the head stay dense, as in
# the ViT presets and docs/models.md.
MODEL_PRUNE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {"exclude_first_conv": True, "include_classifier": False},
}


def with_model_prune_defaults(data: Any) -> Any:
    """``data`` (a raw run config mapping) with its model's pruning-set defaults filled in where
    its ``prune`` section names no value; anything else is returned as it is (the schema judges it)."""
    if not isinstance(data, dict):
        return data
    model = data.get("model")
    name = model.get("name") if isinstance(model, dict) else getattr(model, "name", None)
    defaults = MODEL_PRUNE_DEFAULTS.get(normalise_name(name)) if isinstance(name, str) else None
    prune = data.get("prune", {})
    if not isinstance(prune, dict):
        return data
    if structured_allocation(prune.get("method", "global_magnitude"), prune.get("criterion"), prune.get("allocation")):
        defaults = {**(defaults or {}), "include_classifier": False}
    if not defaults:
        return data
    return {**data, "prune": {**defaults, **prune}}


def structured_allocation(method: Any, criterion: Any, allocation: Any) -> bool:
    """Whether a prune section removes whole output channels: its allocation (the given one, or the
    method's own when only the criterion is given) is registered as ``structured``. Unknown names
    are not (the schema reports them)."""
    if criterion is None and allocation is None:
        return False
    if allocation is None and isinstance(method, str) and method in PRUNING_METHODS:
        allocation = PRUNING_METHODS.metadata(method).get("allocation")
    return (
        isinstance(allocation, str)
        and allocation in PRUNING_ALLOCATIONS
        and bool(PRUNING_ALLOCATIONS.metadata(allocation).get("structured"))
    )


def prunes_classes(method: str, criterion: str | None, allocation: str | None, include_classifier: bool) -> str | None:
    """Why a new run with this pruning set would remove classes (None: it would not)."""
    if not (include_classifier and structured_allocation(method, criterion, allocation)):
        return None
    return (
        "a structured allocation removes whole output rows, and the classifier's rows are the classes: "
        "with prune.include_classifier=true it would remove classes. Leave prune.include_classifier out "
        "(structured allocations default to false) or set it to false"
    )
