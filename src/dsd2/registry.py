"""One registry class for every kind of named, pluggable thing, and the registries a config picks from.

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

This module must not import torch: :mod:`dsd2.config` validates names against the registries
below before anything heavy is loaded. So the registries whose names a config chooses
(``prune.method``, ``prune.retrain``, ``train.optimizer``, ``train.schedule``,
``early_stop.rule``) live here, and their built-in entries are :class:`Lazy` references
(``"module:attribute"``) to the implementations, imported on first :meth:`Registry.get`. The
model and dataset registries are instances of the same class in :mod:`dsd2.models.registry` and
:mod:`dsd2.data.core`, filled by the ``register_model`` / ``register_dataset`` decorators.

What each registry here holds (register your own with ``REGISTRY.register(name, obj)``; a config
names it like a built-in one, in every process that registered it):

- :data:`PRUNING_METHODS`: ``method(weights, masks, rate, generator) -> masks`` (:mod:`dsd2.prune`);
- :data:`PRUNING_CRITERIA`: ``criterion(weights, inputs) -> scores`` (:mod:`dsd2.prune`; metadata
  ``gradients=True`` when it reads the training-loss gradients);
- :data:`PRUNING_ALLOCATIONS`: ``allocation(scores, masks, rate, density) -> masks`` (:mod:`dsd2.prune`);
- :data:`RETRAIN_MODES`: a :class:`dsd2.imp.RetrainMode` (starting weights, schedule, hooks);
- :data:`PRUNING_SCHEDULES`: ``schedule(ctx, masks, round_idx) -> masks``, round i's masks (:mod:`dsd2.imp`);
- :data:`OPTIMIZERS`: ``make(params, schedule) -> torch.optim.Optimizer`` (:mod:`dsd2.train`);
- :data:`SCHEDULES`: ``lr(schedule, epoch) -> float`` (:mod:`dsd2.train`);
- :data:`STOP_RULES`: ``rule(acc, entropy, *, tolerance, patience, select, **params) ->
  StopDecision | None`` (:mod:`dsd2.compare`);
- :data:`NOISE_MODELS`: ``kind(request: NoiseRequest) -> noisy labels`` (``noise.kind``,
  :mod:`dsd2.noise`).

Each choice owns its options. A registry names the config options its choices may read
(``owns``, e.g. ``prune.rewind_epoch`` for the retraining modes); an entry's metadata says which
of them it reads (``reads``: a tuple of ``"section.key"``; :meth:`Registry.reads`), and the run id
counts the others as their defaults (:func:`dsd2.config.identity.unused_options`). An entry may
also bring its own options model (metadata ``options``: a pydantic model class;
:meth:`Registry.options_model`): a plugin noise kind registered with one gets the validated
``noise.options`` mapping of the config as ``NoiseRequest.options`` (docs/plugins.md).
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
    "NOISE_MODELS",
    "OPTIMIZERS",
    "PRUNING_ALLOCATIONS",
    "PRUNING_CRITERIA",
    "PRUNING_METHODS",
    "PRUNING_SCHEDULES",
    "RETRAIN_MODES",
    "SCHEDULES",
    "STOP_RULES",
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


def _describe(obj: Any) -> str:
    if isinstance(obj, Lazy):
        return obj.path
    return getattr(obj, "__qualname__", None) or type(obj).__name__


# ------------------------------------------------------------------------------------------
# The registries a config chooses from. Built-in entries are declared here, by name, with a
# description and a Lazy reference to their implementation (torch-backed modules, imported on
# first use); the config validates its values against these names without importing torch.
# ------------------------------------------------------------------------------------------

PRUNING_METHODS: Registry[Callable[..., Any]] = Registry("pruning method")
# ``owns``: the options of each registry's choices; ``undeclared``: what a plugin's choice that
# declares no ``reads`` reads (as before these declarations: a criterion its gradient options when
# it says gradients=True, an allocation the channel floor when it says min_channels=True, a
# retraining mode or pruning schedule none, any other all).
_SCORE_OPTIONS = ("prune.score_batches", "prune.score_batchnorm")
PRUNING_CRITERIA: Registry[Callable[..., Any]] = Registry(
    "pruning criterion",
    "pruning criteria",
    owns=_SCORE_OPTIONS,
    undeclared=lambda m: _SCORE_OPTIONS if m.get("gradients") else (),
    options_key="prune.criterion_options",
)
PRUNING_ALLOCATIONS: Registry[Callable[..., Any]] = Registry(
    "sparsity allocation",
    owns=("prune.min_channels",),
    undeclared=lambda m: ("prune.min_channels",) if m.get("min_channels") else (),
    options_key="prune.allocation_options",
)
RETRAIN_MODES: Registry[Any] = Registry(
    "retraining mode", owns=("prune.finetune_lr", "prune.finetune_epochs", "prune.rewind_epoch"), undeclared=lambda m: ()
)
PRUNING_SCHEDULES: Registry[Callable[..., Any]] = Registry(
    "pruning schedule", owns=("prune.gradual_start", "prune.gradual_end"), undeclared=lambda m: ()
)
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer", owns=("train.momentum",))
SCHEDULES: Registry[Callable[..., float]] = Registry("schedule", owns=("train.milestones", "train.lr_decay"))
STOP_RULES: Registry[Callable[..., Any]] = Registry("stop rule", owns=("early_stop.tolerance", "early_stop.patience", "early_stop.select"))
NOISE_MODELS: Registry[Callable[..., Any]] = Registry(
    "noise kind", owns=("noise.rate", "noise.class_map", "noise.instance_std"), options_key="noise.options"
)


def _builtin(
    registry: Registry[Any], module: str, entries: list[tuple[str, str, str]], reads: Mapping[str, tuple[str, ...]] | None = None
) -> None:
    """Register built-in entries; ``reads``: name -> the options of ``registry.owns`` it reads (none if not named)."""
    for name, attr, description in entries:
        declared = (reads or {}).get(name, ())
        registry.register(name, Lazy(f"{module}:{attr}"), metadata={"description": description, "reads": declared})


# a built-in method names what it is made of: prune.criterion / prune.allocation replace one part of it
for _name, _attr, _description, _criterion, _allocation in [
    (
        "global_magnitude",
        "global_magnitude_masks",
        "smallest |w| over all prunable weights together (L1 unstructured, the reference)",
        "magnitude",
        "global",
    ),
    ("layerwise_magnitude", "layerwise_magnitude_masks", "smallest |w| in every layer separately", "magnitude", "uniform"),
    ("random", "random_masks", "alive weights chosen uniformly at random over all layers", "random", "global"),
]:
    PRUNING_METHODS.register(
        _name,
        Lazy(f"dsd2.prune:{_attr}"),
        metadata={"description": _description, "criterion": _criterion, "allocation": _allocation},
    )
_builtin(
    PRUNING_CRITERIA,
    "dsd2.prune",
    [
        ("magnitude", "magnitude_scores", "|w| (the reference)"),
        ("random", "random_scores", "uniform random scores from the round's seed"),
        (
            "slimming",
            "slimming_scores",
            "network slimming: |γ| of the BatchNorm after the layer, per output channel (use allocation=channel)",
        ),
    ],
)
for _name, _attr, _description in [
    ("magnitude_gradient", "magnitude_gradient_scores", "|w·dL/dw| at the trained weights, gradient over `score_batches` batches"),
    ("snip", "snip_scores", "SNIP: |w0·dL/dw| at the initial weights under the current mask, over `score_batches` batches"),
]:
    # gradients=True: the round loop computes the training-loss gradients for it
    PRUNING_CRITERIA.register(
        _name, Lazy(f"dsd2.prune:{_attr}"), metadata={"description": _description, "gradients": True, "reads": _SCORE_OPTIONS}
    )
_builtin(
    PRUNING_ALLOCATIONS,
    "dsd2.prune",
    [
        ("global", "global_allocation", "one score threshold over all layers"),
        ("uniform", "uniform_allocation", "every layer loses the same fraction"),
        ("erk", "erk_allocation", "Erdős–Rényi-Kernel layer densities for the round's target sparsity 1-(1-rate)^round"),
    ],
)
# structured=True: whole output channels go, and the BatchNorm γ/β of a removed channel are masked too;
# min_channels=True: the allocation takes prune.min_channels (the per-layer floor) as a keyword
for _name, _attr, _description in [
    ("channel", "channel_allocation", "structured: `rate` of the alive output channels, lowest mean score over all layers first"),
    (
        "channel_uniform",
        "channel_uniform_allocation",
        "structured, per layer: every layer loses `rate` of its channels, lowest mean score first (Li et al. 2017 with magnitude)",
    ),
    (
        "channel_normalised",
        "channel_normalised_allocation",
        "structured: `rate` of the alive channels over all layers, scores divided by their layer's mean first",
    ),
]:
    PRUNING_ALLOCATIONS.register(
        _name,
        Lazy(f"dsd2.prune:{_attr}"),
        metadata={"description": _description, "structured": True, "min_channels": True, "reads": ("prune.min_channels",)},
    )
_builtin(
    RETRAIN_MODES,
    "dsd2.imp",
    [
        ("lr_rewind", "LR_REWIND", "keep weights, restart the schedule (reference)"),
        ("finetune", "FINETUNE", "small constant lr"),
        ("lottery", "LOTTERY", "rewind to init"),
        ("late_rewind", "LATE_REWIND", "rewind to the weights of epoch `rewind_epoch`"),
        ("reinit", "REINIT", "fresh random init under the mask"),
    ],
    reads={"finetune": ("prune.finetune_lr", "prune.finetune_epochs"), "late_rewind": ("prune.rewind_epoch",)},
)
# how round i's masks are made: prune_step calls schedule(ctx, masks, round_idx) -> masks
_builtin(
    PRUNING_SCHEDULES,
    "dsd2.imp",
    [
        ("iterative", "iterative_schedule", "IMP: round i removes `rate` of the weights round i-1 left (the reference)"),
        ("gradual", "gradual_schedule", "Zhu & Gupta's cubic magnitude pruning while round i trains from init, to its target"),
        ("one_shot", "one_shot_schedule", "round i prunes round 0's dense model straight to its target sparsity (He et al.)"),
    ],
    reads={"gradual": ("prune.gradual_start", "prune.gradual_end")},
)
_builtin(
    OPTIMIZERS,
    "dsd2.train",
    [
        ("sgd", "sgd_optimizer", "SGD with `momentum` and `weight_decay` (the reference)"),
        ("adam", "adam_optimizer", "Adam with L2 `weight_decay`"),
        ("adamw", "adamw_optimizer", "AdamW (decoupled `weight_decay`)"),
    ],
    reads={"sgd": ("train.momentum",)},
)
_builtin(
    SCHEDULES,
    "dsd2.train",
    [
        ("multistep", "multistep_lr", "lr times `lr_decay` at each of the `milestones` (the reference)"),
        ("cosine", "cosine_lr", "cosine decay from lr to 0 over the epochs"),
        ("constant", "constant_lr", "lr throughout"),
    ],
    reads={"multistep": ("train.milestones", "train.lr_decay")},
)
_builtin(
    STOP_RULES,
    "dsd2.compare",
    [
        ("none", "no_stop", "never stop, train every round"),
        ("plain", "plain_stop", "stop at the first accuracy drop beyond `tolerance` for `patience` rounds"),
        ("entropy", "entropy_stop", "as plain, but drops are ignored while the activation entropy stays near its running maximum"),
    ],
    reads={"plain": STOP_RULES.owns, "entropy": STOP_RULES.owns},
)
_builtin(
    NOISE_MODELS,
    "dsd2.noise",
    [
        ("none", "no_noise", "clean labels"),
        ("symmetric", "symmetric_noise", "the first floor(rate*N) samples get one of the K-1 other classes (reference)"),
        ("uniform", "uniform_noise", "the first floor(rate*N) samples get a class drawn from all K"),
        ("bernoulli", "bernoulli_noise", "each sample flips with prob. rate to one of the K-1 other classes"),
        ("asymmetric", "asymmetric_noise", "floor(rate*n_c) samples of each class c of class_map get class_map[c]"),
        ("pairflip", "pairflip_noise", "a random floor(rate*N) samples get c -> c+1"),
        ("transition", "transition_noise", "each label drawn from row clean of the K x K matrix noise.matrix (rate unused)"),
        ("instance", "instance_noise", "instance-dependent (Xia et al. 2020): per-sample rate ~ truncated N(rate, instance_std)"),
    ],
    reads={
        **{k: ("noise.rate",) for k in ("symmetric", "uniform", "bernoulli", "pairflip")},
        "asymmetric": ("noise.rate", "noise.class_map"),
        "instance": ("noise.rate", "noise.instance_std"),
    },
)
