"""Each registered choice's own options in a config (docs/plugins.md, "What you can register").

A registry whose choices may take options names the config mapping that holds them (its
``options_key``: ``noise.options``, ``prune.criterion_options``, ``prune.allocation_options``,
``prune.retrain_options``, ``prune.schedule_options``, ``train.optimizer_options``,
``train.schedule_options``, ``early_stop.rule_options``). The mapping is validated against the
options model the chosen entry was registered with (:func:`check_choice_options`) and stored
without the model's defaults, so giving a default or leaving it out is the same run id; the choice
gets it back with the defaults filled in (:func:`filled_options`) when it runs. Must not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsd2 import registry


def check_choice_options(reg: registry.Registry[Any], name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The options mapping of ``reg``'s choices (its ``options_key``, e.g. ``noise.options``) validated against the options model the choice ``name`` was registered
    with, without the values equal to its defaults; a ValueError naming the key otherwise."""
    key = reg.options_key
    model = reg.options_model(name) if name is not None else None
    if model is None:
        if options:
            raise ValueError(
                f"{key}: {reg.kind} {name!r} takes no options (only a plugin's {reg.kind} registered with an options "
                f"model does); remove {key} {sorted(options)}"
            )
        return {}
    from pydantic import ValidationError

    fields = model.model_fields
    accepted = ", ".join(f"{k} (required)" if f.is_required() else f"{k}={f.default!r}" for k, f in fields.items()) or "none"
    for option in options:  # a model ignores unknown keys by default: a typo would be dropped silently
        if option not in fields:
            hint = registry.did_you_mean(str(option), fields, prefix=f"{key}.")
            raise ValueError(f"{key}.{option}: {reg.kind} {name!r} has no option {option!r}.{hint} Its options (defaults): {accepted}")
    try:
        validated = model.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "?"
        value = f"={first['input']!r}" if first["type"] != "missing" else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{key}.{where}{value}: {msg} ({reg.kind} {name!r} options, defaults: {accepted})") from None
    return dict(validated.model_dump(mode="json", exclude_defaults=True))


def filled_options(reg: registry.Registry[Any], name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """A choice's validated options with its defaults filled in (what the choice gets when it runs)."""
    model = reg.options_model(name) if name is not None else None
    return {} if model is None else dict(model.model_validate(options).model_dump())


# the config field that names each registry's choice, by the registry's options_key (a criterion
# and an allocation are the prune section's scoring parts: given, or the method's own)
_CHOICE_FIELD = {
    "noise.options": ("noise", "kind"),
    "prune.retrain_options": ("prune", "retrain"),
    "prune.schedule_options": ("prune", "schedule"),
    "train.optimizer_options": ("train", "optimizer"),
    "train.schedule_options": ("train", "schedule"),
    "early_stop.rule_options": ("early_stop", "rule"),
}
_SCORING_PART = {"prune.criterion_options": "criterion", "prune.allocation_options": "allocation"}


def chosen(cfg: Any, reg: registry.Registry[Any]) -> str | None:
    """The name ``cfg`` (a :class:`~dsd2.config.RunConfig`) chooses from ``reg`` (None: a criterion or
    allocation the run does not name, a plugin method's own)."""
    key = reg.options_key or ""
    if key in _SCORING_PART:
        part: str | None = cfg.prune.scoring_part(_SCORING_PART[key])
        return part
    if key not in _CHOICE_FIELD:
        raise ValueError(f"no config field chooses a {reg.kind} with its own options")
    section, field = _CHOICE_FIELD[key]
    return str(getattr(getattr(cfg, section), field))


def choice_options(cfg: Any, reg: registry.Registry[Any]) -> dict[str, Any]:
    """The validated options of the choice ``cfg`` makes from ``reg``, defaults filled in (what a
    plugin's choice registered with an options model gets; ``{}`` for a choice without one)."""
    assert reg.options_key is not None
    section, _, field = reg.options_key.partition(".")
    return filled_options(reg, chosen(cfg, reg), getattr(getattr(cfg, section), field))


def options_keyword(reg: registry.Registry[Any], name: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"options": options}`` when the choice ``name`` was registered with an options model (it
    takes them as the keyword ``options``), else ``{}``: a choice without one keeps its signature."""
    return {"options": dict(options)} if name is not None and reg.options_model(name) is not None else {}


def choice_keyword(cfg: Any, reg: registry.Registry[Any]) -> dict[str, Any]:
    """``{"options": ...}`` to call the choice ``cfg`` makes from ``reg`` with, when it was
    registered with an options model (:func:`options_keyword`), else ``{}``."""
    return options_keyword(reg, chosen(cfg, reg), choice_options(cfg, reg))
