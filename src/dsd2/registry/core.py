"""The one registry class for every kind of named, pluggable thing (:class:`Registry`).

A :class:`Registry` maps names to objects (a model builder, a dataset loader, a pruning method,
...) with free-form metadata per entry (a description, a dataset's sizes, a model's input shape).
Its rules, the same for every kind:

- a name is read case-insensitively, ``-`` as ``_``, surrounding spaces ignored
  (:func:`normalise_name`, the one place this rule lives); the registry stores the normalised name;
- an unknown name raises :class:`UnknownNameError` (a :class:`~dsd2.errors.UserError` and a
  ``ValueError``) with a did-you-mean hint and the registered names;
- registering a taken name raises :class:`DuplicateNameError` unless ``overwrite=True``
  (registering the very same object again is allowed: it only replaces the metadata);
- a *family* (:meth:`Registry.register_family`) answers every name ``<prefix>/<name>`` on demand
  (e.g. ``torchvision/resnet50``): its resolver is called the first time such a name is looked
  up, its result is kept, and an unknown name gets a did-you-mean hint from the family's names.
  Family names are not listed by :meth:`Registry.names` (a family can be large or need an
  optional package); :meth:`Registry.families` lists the families.

Must not import torch (:mod:`dsd2.config` validates names before anything heavy is loaded).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from dsd2.errors import UserError

T = TypeVar("T")

__all__ = [
    "DuplicateNameError",
    "Family",
    "Lazy",
    "Registry",
    "UnknownNameError",
    "did_you_mean",
    "normalise_name",
]


def normalise_name(name: str) -> str:
    """The registry form of a name: lower case, ``-`` → ``_``, no surrounding spaces."""
    return name.strip().lower().replace("-", "_")


def did_you_mean(word: str, choices: Iterable[str], *, prefix: str = "") -> str:
    """``" Did you mean '<prefix><closest>'?"``, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


class UnknownNameError(UserError, ValueError):
    """A name no registry entry has (also a ValueError, so pydantic validators report it)."""


class DuplicateNameError(UserError, ValueError):
    """A name registered twice without ``overwrite=True``."""


@dataclass(frozen=True)
class Lazy:
    """A reference ``"package.module:attribute"`` to an object imported when first looked up."""

    path: str

    def resolve(self) -> Any:
        module, sep, attr = self.path.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"Lazy reference {self.path!r} is not of the form 'package.module:attribute'")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


_MISSING: Any = object()


@dataclass
class _Entry:
    obj: Any
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """Names ``<prefix>/<name>`` answered on demand (see :meth:`Registry.register_family`).

    ``resolve(name)`` gets the part after the slash (normalised) and returns ``(object,
    metadata)``; it raises ``LookupError`` for a name it does not know (the registry turns that
    into an :class:`UnknownNameError` with a hint from ``names()``) and a
    :class:`~dsd2.errors.UserError` when it cannot answer at all (an optional package missing).
    ``names()`` lists the names it knows (for hints and listings), ``description`` says what
    the family is, ``listing`` how a user lists its names.
    """

    prefix: str
    resolve: Callable[[str], tuple[Any, Mapping[str, Any]]]
    names: Callable[[], list[str]]
    description: str
    listing: str = ""


class Registry(Generic[T]):
    """Named objects of one kind (``kind`` names it in messages: "model", "pruning method").

    ``register(name, obj, metadata=..., overwrite=False)`` or, without ``obj``, as a decorator;
    ``get(name)`` the object, ``canonical(name)`` the registered spelling, ``metadata(name)``,
    ``names()``; ``name in registry`` follows the same normalisation.
    """

    def __init__(
        self,
        kind: str,
        plural: str | None = None,
        *,
        owns: tuple[str, ...] = (),
        undeclared: Callable[[Mapping[str, Any]], Iterable[str]] | None = None,
        options_key: str | None = None,
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        # the config options ("section.key") this registry's choices may read, and which of them an
        # entry that declares no ``reads`` reads (from its metadata; None: all of them)
        self.owns = tuple(owns)
        self._undeclared = undeclared
        self.options_key = options_key  # the config mapping of a choice's own options (None: none can have them)
        self._entries: dict[str, _Entry] = {}
        self._families: dict[str, Family] = {}
        self._resolved: dict[str, _Entry] = {}  # family names looked up so far

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names()) or 'empty'})"

    # ------------------------------------------------------------------ registering

    def register(self, name: str, obj: Any = _MISSING, *, metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        ``obj`` may be a :class:`Lazy` reference, imported on first :meth:`get`.
        """
        if obj is _MISSING:

            def decorator(target: T) -> T:
                self._add(name, target, metadata, overwrite)
                return target

            return decorator
        self._add(name, obj, metadata, overwrite)
        return obj

    def _add(self, name: str, obj: Any, metadata: Mapping[str, Any] | None, overwrite: bool) -> None:
        if not isinstance(name, str) or not normalise_name(name):
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        key = normalise_name(name)
        _check_option_metadata(self, key, metadata or {})
        old = self._entries.get(key)
        if old is not None and not overwrite and old.obj is not obj:
            raise DuplicateNameError(f"{self.kind} {key!r} is already registered ({_describe(old.obj)}); pass overwrite=True to replace it")
        self._entries[key] = _Entry(obj, dict(metadata or {}))

    def register_family(
        self,
        prefix: str,
        *,
        resolve: Callable[[str], tuple[Any, Mapping[str, Any]]],
        names: Callable[[], list[str]],
        description: str,
        listing: str = "",
        overwrite: bool = False,
    ) -> Family:
        """Answer every name ``<prefix>/<name>`` with ``resolve(name)`` (see :class:`Family`)."""
        key = normalise_name(prefix) if isinstance(prefix, str) else ""
        if not key or "/" in key:
            raise TypeError(f"a {self.kind} family prefix must be a non-empty string without '/', got {prefix!r}")
        if key in self._families and not overwrite:
            raise DuplicateNameError(f"{self.kind} family {key!r} is already registered; pass overwrite=True to replace it")
        family = Family(key, resolve, names, description, listing)
        self._families[key] = family
        for name in [n for n in self._resolved if n.startswith(f"{key}/")]:
            del self._resolved[name]
        return family

    def families(self) -> list[Family]:
        """The registered families, by prefix."""
        return [self._families[k] for k in sorted(self._families)]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (UnknownNameError if it is not registered; a family name forgets its
        resolved entry, which the family answers again on the next look-up)."""
        key = self.canonical(name)
        if key in self._entries:
            del self._entries[key]
        else:
            self._resolved.pop(key, None)

    @contextmanager
    def snapshot(self) -> Iterator[Registry[T]]:
        """``with registry.snapshot():`` registrations made inside are undone on exit (tests, notebooks)."""
        entries, families, resolved = dict(self._entries), dict(self._families), dict(self._resolved)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(entries)
            self._families.clear()
            self._families.update(families)
            self._resolved.clear()
            self._resolved.update(resolved)

    # ------------------------------------------------------------------ looking up

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name``; UnknownNameError (with a hint) if there is none."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} name must be a string, got {name!r}; {self._known()}")
        key = normalise_name(name)
        if key in self._entries:
            return key
        if "/" in key:
            return self._resolve_family_name(name, key)
        hint = did_you_mean(key, self._entries) or self._family_hint(key)
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} {self._known()}")

    def _family_hint(self, key: str) -> str:
        """``" Did you mean '<prefix>/<key>'?"`` when a family knows ``key`` exactly (first by prefix)."""
        for family in self.families():
            try:
                if key in family.names():
                    return f" Did you mean '{family.prefix}/{key}'?"
            except (UserError, ImportError):
                continue
        return ""

    def _resolve_family_name(self, name: str, key: str) -> str:
        if key in self._resolved:
            return key
        prefix, _, rest = key.partition("/")
        family = self._families.get(prefix)
        if family is None:
            close = difflib.get_close_matches(prefix, list(self._families), n=1)
            hint = f" Did you mean '{close[0]}/{rest}'?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}: no {self.kind} family {prefix!r}.{hint} {self._known()}")
        try:
            obj, metadata = family.resolve(rest)
        except LookupError:
            hint = did_you_mean(rest, family.names(), prefix=f"{prefix}/") if rest else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r} ({rest!r} is not among {prefix}'s {self.plural}).{hint} {family.listing}".rstrip()
            ) from None
        self._resolved[key] = _Entry(obj, dict(metadata or {}))
        return key

    def _entry(self, key: str) -> _Entry:
        return self._entries[key] if key in self._entries else self._resolved[key]

    def get(self, name: str) -> T:
        """The object registered under ``name`` (a :class:`Lazy` one is imported now, once)."""
        entry = self._entry(self.canonical(name))
        if isinstance(entry.obj, Lazy):
            try:
                entry.obj = entry.obj.resolve()
            except (ImportError, AttributeError) as err:
                raise ImportError(f"{self.kind} {normalise_name(name)!r}: cannot import {entry.obj.path}: {err}") from err
        return entry.obj

    def metadata(self, name: str) -> Mapping[str, Any]:
        """The metadata ``name`` was registered with (read-only; empty if none)."""
        return MappingProxyType(dict(self._entry(self.canonical(name)).metadata))

    def reads(self, name: str) -> frozenset[str]:
        """The options of :attr:`owns` that the choice ``name`` reads: its metadata ``reads``, else
        what the registry infers for an entry that declares nothing (a plugin's choice)."""
        metadata = self.metadata(name)
        if "reads" in metadata:
            declared = metadata["reads"]
        elif self._undeclared is not None:
            declared = self._undeclared(metadata)
        else:
            declared = self.owns  # it may read any: its runs keep them all in the id
        return frozenset(declared) & frozenset(self.owns)

    def options_model(self, name: str) -> Any:
        """The pydantic model of the choice's own options (metadata ``options``), or None."""
        return self.metadata(name).get("options")

    def flat_options(self, name: str) -> Mapping[str, str]:
        """A built-in choice's options as the flat config keys they are read from (metadata ``flat``:
        option -> ``"section.key"``, e.g. finetune's ``lr`` -> ``prune.finetune_lr``); empty for a
        choice whose options come from its registry's ``options_key`` mapping (a plugin's)."""
        return MappingProxyType(dict(self.metadata(name).get("flat", {})))

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        """Registered, or answered by a family (which may import its package to say so)."""
        if not isinstance(name, str):
            return False
        key = normalise_name(name)
        if key in self._entries:
            return True
        if "/" not in key or key.partition("/")[0] not in self._families:
            return False
        try:
            self.canonical(name)
        except UserError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def _known(self) -> str:
        names = ", ".join(self.names())
        text = f"Registered {self.plural}: {names}." if names else f"No {self.plural} are registered."
        if self._families:
            text += " Also " + "; ".join(f"{f.prefix}/<name>: {f.description}" for f in self.families()) + "."
        return text

    def describe(self) -> str:
        """``"name: description; ..."`` in registration order, from each entry's ``description``
        metadata (for help texts)."""
        return "; ".join(f"{n}: {e.metadata['description']}" if "description" in e.metadata else n for n, e in self._entries.items())


def _check_option_metadata(registry: Registry[Any], key: str, metadata: Mapping[str, Any]) -> None:
    """A wrong ``reads`` or ``options`` fails at registration, not in a run's id or data set-up."""
    reads = metadata.get("reads", ())
    if isinstance(reads, str) or not all(isinstance(k, str) for k in reads):
        raise TypeError(f"{registry.kind} {key!r}: metadata 'reads' must be a tuple of 'section.key' names, got {reads!r}")
    if unknown := [k for k in reads if k not in registry.owns]:
        owned = ", ".join(registry.owns) or "none"
        raise TypeError(f"{registry.kind} {key!r}: metadata 'reads' names {unknown}, not options of {registry.plural} (they are: {owned})")
    model = metadata.get("options")
    if model is not None and registry.options_key is None:
        raise TypeError(f"{registry.kind} {key!r}: {registry.plural} cannot take their own options (no config key passes them)")
    if model is not None:
        from pydantic import BaseModel  # pydantic, not torch: fine before a config is loaded

        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{registry.kind} {key!r}: metadata 'options' must be a pydantic model class, got {model!r}")
    _check_flat(registry, key, metadata)


def _check_flat(registry: Registry[Any], key: str, metadata: Mapping[str, Any]) -> None:
    """``flat``: a built-in choice's options come from the flat config keys it reads (option -> key)."""
    flat = metadata.get("flat")
    if flat is None:
        return
    model = metadata.get("options")
    if model is None or not isinstance(flat, Mapping) or set(flat) != set(model.model_fields):
        raise TypeError(f"{registry.kind} {key!r}: metadata 'flat' must map each field of its options model to a config key")
    if stray := sorted(set(flat.values()) - set(metadata.get("reads", registry.owns))):
        raise TypeError(f"{registry.kind} {key!r}: metadata 'flat' names {stray}, options the choice does not read")


def _describe(obj: Any) -> str:
    if isinstance(obj, Lazy):
        return obj.path
    return getattr(obj, "__qualname__", None) or type(obj).__name__
