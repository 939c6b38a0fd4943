"""Model-specific defaults of the pruning set (``prune.include_classifier``,
``prune.exclude_first_conv``): what a model prunes when the config does not say.

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

from dsd2.registry import normalise_name

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
    if not defaults or not isinstance(prune, dict):
        return data
    return {**data, "prune": {**defaults, **prune}}
