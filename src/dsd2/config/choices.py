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

import math
from collections.abc import Mapping
from typing import Any

from dsd2 import registry


def check_choice_options(reg: registry.Registry[Any], name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The options mapping of ``reg``'s choices (its ``options_key``, e.g. ``noise.options``) validated against the options model the choice ``name`` was registered
    with, without the values equal to its defaults; a ValueError naming the key otherwise."""
    key = reg.options_key
    model = plugin_model(reg, name)
    if name is not None and options and reg.flat_options(name):
        flat = ", ".join(reg.flat_options(name).values())
        raise ValueError(f"{key}: {reg.kind} {name!r} is a built-in choice whose options are the keys {flat}: give those, remove {key}")
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
            raise ValueError(
                f"{key}.{_short(str(option))}: {reg.kind} {name!r} has no option {_short(repr(option))}.{hint} Its options (defaults): {accepted}"
            )
    try:
        validated = model.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "?"
        value = f"={first['input']!r}" if first["type"] != "missing" else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{key}.{where}{_short(value)}: {msg} ({reg.kind} {name!r} options, defaults: {accepted})") from None
    kept = validated.model_dump(exclude_defaults=True)
    if bad := _non_finite(kept):  # JSON (config.yaml, the run id) has no inf/nan: the dump would say null
        raise ValueError(f"{key}.{bad}: not a finite number ({reg.kind} {name!r} options)")
    return dict(validated.model_dump(mode="json", exclude_defaults=True))


def _non_finite(value: Any, where: str = "") -> str | None:
    """``path=value`` of the first float in ``value`` (nested mappings and sequences) that is inf or nan."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}={value}"
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        if found := _non_finite(v, f"{where}.{k}" if where else str(k)):
            return found
    return None


def _short(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters: an error line names a huge value without printing it."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plugin_model(reg: registry.Registry[Any], name: str | None) -> Any:
    """The options model of a choice that takes its options from ``reg.options_key`` (a plugin's
    choice registered with one), or None (no options, or a built-in choice's flat keys)."""
    if name is None or reg.flat_options(name):
        return None
    return reg.options_model(name)


def filled_options(reg: registry.Registry[Any], name: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """A plugin choice's validated options with its defaults filled in (what it gets when it runs)."""
    model = plugin_model(reg, name)
    return {} if model is None else dict(model.model_validate(dict(options)).model_dump())


def options_of(cfg: Any, reg: registry.Registry[Any], name: str | None = None) -> Any:
    """The one accessor of a choice's own options: the validated, typed options of the choice
    ``name`` of ``reg`` (default: the one ``cfg`` makes). A built-in choice's are its small model
    of :mod:`dsd2.registry.options` built from the flat keys it reads (finetune's from
    ``prune.finetune_lr`` / ``finetune_epochs``); a plugin's are its options model over the
    config's mapping (its defaults when ``cfg`` chooses another); None for a choice without options."""
    name = chosen(cfg, reg) if name is None else reg.canonical(name)
    if name is None:
        return None
    if flat := reg.flat_options(name):
        return reg.options_model(name)(**{option: _value(cfg, key) for option, key in flat.items()})
    model = plugin_model(reg, name)
    if model is None:
        return None
    given = _value(cfg, reg.options_key or "") if name == chosen(cfg, reg) else {}
    return model.model_validate(given)


def _value(cfg: Any, key: str) -> Any:
    section, _, field = key.partition(".")
    return getattr(getattr(cfg, section), field)


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
    return filled_options(reg, chosen(cfg, reg), _value(cfg, reg.options_key or ""))


def options_keyword(reg: registry.Registry[Any], name: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"options": options}`` when the choice ``name`` was registered with an options model (it
    takes them as the keyword ``options``), else ``{}``: a choice without one keeps its signature."""
    return {"options": dict(options)} if plugin_model(reg, name) is not None else {}


def choice_keyword(cfg: Any, reg: registry.Registry[Any]) -> dict[str, Any]:
    """``{"options": ...}`` to call the choice ``cfg`` makes from ``reg`` with, when it was
    registered with an options model (:func:`options_keyword`), else ``{}``."""
    return options_keyword(reg, chosen(cfg, reg), choice_options(cfg, reg))
