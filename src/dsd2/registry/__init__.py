"""Registries of named, pluggable things: the :class:`Registry` class (:mod:`dsd2.registry.core`)
and the registries a config chooses from with their built-in entries (:mod:`dsd2.registry.choices`).

This package must not import torch: :mod:`dsd2.config` validates names against the registries
before anything heavy is loaded. So the registries whose names a config chooses
(``prune.method``, ``prune.retrain``, ``train.optimizer``, ``train.schedule``,
``early_stop.rule``, ...) live here, and their built-in entries are :class:`Lazy` references
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
counts the others as their defaults (:func:`dsd2.config.identity.unused_options`). A plugin's
entry may also bring its own options model (metadata ``options``: a pydantic model class;
:meth:`Registry.options_model`): the config's per-choice mapping (the registry's ``options_key``,
e.g. ``prune.retrain_options``) is validated against it, and the choice gets the validated
options, defaults filled in, when it runs (docs/plugins.md, "What you can register").
"""

from dsd2.registry.choices import (
    NOISE_MODELS,
    OPTIMIZERS,
    PRUNING_ALLOCATIONS,
    PRUNING_CRITERIA,
    PRUNING_METHODS,
    PRUNING_SCHEDULES,
    RETRAIN_MODES,
    SCHEDULES,
    STOP_RULES,
)
from dsd2.registry.core import DuplicateNameError, Family, Lazy, Registry, UnknownNameError, did_you_mean, normalise_name

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
