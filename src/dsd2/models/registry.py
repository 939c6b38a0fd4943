"""Model registry: ``register_model``, ``build_model``, ``list_models``, ``model_options``.

A builder is a function ``builder(num_classes, in_channels, input_size, **options)``
returning an ``nn.Module``. Its keyword options (everything after the three standard
arguments) must have defaults; ``build_model`` reads them from the signature to validate
the user's options, to coerce command-line strings (``"true"``, ``"3"``, ``"512,512"``)
to the default's type, and to say what is accepted when something is wrong.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from dsd2.errors import UserError

Builder = Callable[..., nn.Module]

_STANDARD_ARGS = ("num_classes", "in_channels", "input_size")
_REGISTRY: dict[str, Builder] = {}

_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name`` (lower case, ``-`` read as ``_``)."""
    key = _normalise(name)

    def decorator(builder: Builder) -> Builder:
        params = inspect.signature(builder).parameters
        missing = [a for a in _STANDARD_ARGS if a not in params]
        if missing:
            raise TypeError(f"model builder {builder.__qualname__} lacks arguments {missing}")
        for p in params.values():
            if p.name in _STANDARD_ARGS:
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                raise TypeError(
                    f"model builder {builder.__qualname__}: option {p.name!r} must be a "
                    "named argument with a default"
                )
        if key in _REGISTRY and _REGISTRY[key] is not builder:
            raise ValueError(f"model name {key!r} is already registered")
        _REGISTRY[key] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[str, Builder]:
    if not isinstance(name, str):
        raise UserError(f"model name must be a string, got {name!r}; choose one of: {', '.join(list_models())}")
    key = _normalise(name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(
            f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}."
        )
    return key, _REGISTRY[key]


def model_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts and their defaults (for ``--help``-style output)."""
    _, builder = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.name not in _STANDARD_ARGS
    }


def _format_options(options: dict[str, object]) -> str:
    if not options:
        return "(this model takes no options)"
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _to_int(item: Any) -> int:
    """An int from an int, an integral float or a decimal string; ValueError otherwise."""
    if isinstance(item, bool):
        raise ValueError(item)
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str):
        return int(item.strip())
    raise ValueError(item)


def _coerce(model: str, option: str, value: Any, default: object, accepted: str) -> Any:
    """Bring ``value`` to the type of ``default``; UserError if that is impossible."""

    def bad(expected: str) -> UserError:
        return UserError(
            f"model {model!r}: option {option}={value!r} is invalid, expected {expected}. "
            f"Accepted options (defaults): {accepted}."
        )

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("true or false")
    if isinstance(default, int):
        try:
            return _to_int(value)
        except ValueError:
            raise bad("an integer") from None
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad("a string")
    if isinstance(default, tuple):
        items: Any = value
        if isinstance(value, str):
            text = value.strip().strip("()[]").strip()
            items = [t for t in text.split(",") if t.strip()] if text else []
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        if not isinstance(items, (list, tuple)):
            raise bad("a comma-separated list of integers, e.g. 512,512")
        try:
            return tuple(_to_int(item) for item in items)
        except ValueError:
            raise bad("a comma-separated list of integers, e.g. 512,512") from None
    return value


def _check_positive_int(name: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"model {name!r}: {what} must be a positive integer, got {value!r}.")
    return value


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    ``input_size`` is the side of square images (or the length L of 1-D inputs for
    ``mlp``). Options are validated against the builder's signature; strings are
    converted to the default's type, so command-line values work as they are.
    Every error a user can fix raises :class:`dsd2.errors.UserError`.
    """
    key, builder = _lookup(name)
    _check_positive_int(key, "num_classes", num_classes)
    _check_positive_int(key, "in_channels", in_channels)
    _check_positive_int(key, "input_size", input_size)
    kwargs = validate_options(key, options)
    return builder(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options converted to the builder's types; UserError for an unknown model, an unknown
    option (with a did-you-mean hint) or a value of the wrong type."""
    key, _ = _lookup(name)
    accepted = model_options(key)
    accepted_text = _format_options(accepted)
    kwargs: dict[str, Any] = {}
    for option, value in options.items():
        if option not in accepted:
            close = difflib.get_close_matches(option, list(accepted), n=1)
            hint = f" Did you mean 'model.{close[0]}'?" if close else ""
            raise UserError(
                f"model.{option}: model {key!r} has no option {option!r}.{hint} "
                f"Accepted options (defaults): {accepted_text}."
            )
        kwargs[option] = _coerce(key, option, value, accepted[option], accepted_text)
    return kwargs
