"""Model registry: ``MODELS``, ``register_model``, ``build_model``, ``list_models``, ``model_options``.

A builder is a function ``builder(num_classes, in_channels, input_size, **options)``
returning an ``nn.Module``. Its keyword options (everything after the three standard
arguments) must have defaults; ``build_model`` reads them from the signature to validate
the user's options, to convert command-line strings (``"true"``, ``"3"``, ``"512,512"``)
to the option's type (its annotation, else its default's type) with pydantic, and to say
what is accepted when something is wrong.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from torch import nn

from dsd2.errors import UserError
from dsd2.registry import Registry, did_you_mean

Builder = Callable[..., nn.Module]

STANDARD_ARGS = ("num_classes", "in_channels", "input_size")

# name -> builder; metadata: ``input_shape``, the input the model is designed for (informational).
MODELS: Registry[Builder] = Registry("model")


def register_model(name: str, *, input_shape: tuple[int, ...] | None = None, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name`` (lower case, ``-`` read as ``_``).

    ``input_shape``: the input the model is designed for, e.g. ``(3, 32, 32)`` (shown by
    ``dsd2 models``). A taken name raises unless ``overwrite=True``.
    """

    def decorator(builder: Builder) -> Builder:
        params = inspect.signature(builder).parameters
        missing = [a for a in STANDARD_ARGS if a not in params]
        if missing:
            raise TypeError(f"model builder {builder.__qualname__} lacks arguments {missing}")
        for p in params.values():
            if p.name in STANDARD_ARGS:
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                raise TypeError(f"model builder {builder.__qualname__}: option {p.name!r} must be a named argument with a default")
        _option_types(builder)  # an option type pydantic cannot validate fails here, not at build time
        metadata = {"input_shape": tuple(input_shape)} if input_shape is not None else {}
        return MODELS.register(name, builder, metadata=metadata, overwrite=overwrite)

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def model_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts and their defaults (for ``--help``-style output)."""
    builder = MODELS.get(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values() if p.name not in STANDARD_ARGS}


def _format_options(options: dict[str, object]) -> str:
    if not options:
        return "(this model takes no options)"
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


# ----------------------------------------------------------------------------- option types
# An option's type is its annotation (or its default's type). Pydantic converts values to it,
# with three command-line additions: "512,512" (or a single integer) is a list, strings are
# stripped before they are read as numbers or booleans, and a boolean is not an integer.


def _not_bool_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value.strip() if isinstance(value, str) else value


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().strip("()[]").strip()
        return [t for t in text.split(",") if t.strip()] if text else []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


_SEQUENCES = (tuple, list)


def cli_type(hint: Any) -> Any:
    """``hint`` with the command-line conversions above, recursively."""
    if hint is bool:
        return Annotated[bool, BeforeValidator(_strip)]
    if hint in (int, float):
        return Annotated[hint, BeforeValidator(_not_bool_number)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _SEQUENCES and args:
        inner = tuple(a if a is Ellipsis else cli_type(a) for a in args)
        return Annotated[origin[inner], BeforeValidator(_as_list)]
    if origin in (Union, types.UnionType):
        return Union[tuple(cli_type(a) for a in args)]
    return hint


def hint_from_default(default: Any) -> Any:
    if default is None:
        return Any
    if isinstance(default, tuple) and default and all(type(v) is type(default[0]) for v in default):
        return tuple.__class_getitem__((type(default[0]), ...))
    if isinstance(default, (bool, int, float, str)):
        return type(default)
    return Any


def _expected(hint: Any) -> str | None:
    """What a value of ``hint`` looks like, in words (None: let pydantic say it)."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _SEQUENCES and args and all(a in (int, Ellipsis) for a in args):
        return "a comma-separated list of integers, e.g. 512,512"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return None


@functools.cache
def _option_types(builder: Builder) -> dict[str, tuple[Any, TypeAdapter[Any]]]:
    """Per option of ``builder``: its type and the pydantic adapter that validates a value."""
    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    out: dict[str, tuple[Any, TypeAdapter[Any]]] = {}
    for p in inspect.signature(builder).parameters.values():
        if p.name in STANDARD_ARGS:
            continue
        hint = hints.get(p.name, hint_from_default(p.default))
        out[p.name] = (hint, TypeAdapter(cli_type(hint), config=ConfigDict(arbitrary_types_allowed=True)))
    return out


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
    converted to the option's type, so command-line values work as they are.
    Every error a user can fix raises :class:`dsd2.errors.UserError`.
    """
    key = MODELS.canonical(name)
    builder = MODELS.get(key)
    _check_positive_int(key, "num_classes", num_classes)
    _check_positive_int(key, "in_channels", in_channels)
    _check_positive_int(key, "input_size", input_size)
    kwargs = validate_options(key, options)
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "memory" not in str(err).lower():
            raise
        raise UserError(
            f"model {name!r} with options {kwargs} does not fit in memory ({type(err).__name__}); choose smaller options"
        ) from None


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options converted to the builder's types; UserError for an unknown model, an unknown
    option (with a did-you-mean hint) or a value of the wrong type."""
    key = MODELS.canonical(name)
    builder = MODELS.get(key)
    accepted = model_options(key)
    accepted_text = _format_options(accepted)
    types_ = _option_types(builder)
    kwargs: dict[str, Any] = {}
    for option, value in options.items():
        if option not in accepted:
            hint = did_you_mean(option, accepted, prefix="model.")
            if not hint:  # most often an option of the config's model for another model: model.name=... keeps them
                hint = f" If it is left over from the config's model section, replace the whole section: 'model={{name: {key}}}'."
            raise UserError(f"model.{option}: model {key!r} has no option {option!r}.{hint} Accepted options (defaults): {accepted_text}.")
        hint, adapter = types_[option]
        try:
            kwargs[option] = adapter.validate_python(value)
        except ValidationError as err:
            expected = _expected(hint) or err.errors()[0]["msg"].removeprefix("Value error, ")
            raise UserError(
                f"model {key!r}: option {option}={value!r} is invalid, expected {expected}. Accepted options (defaults): {accepted_text}."
            ) from None
    return kwargs
