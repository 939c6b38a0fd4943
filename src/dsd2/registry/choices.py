"""The registries a config chooses from, and their built-in entries.

Built-in entries are declared here, by name, with a description and a :class:`~dsd2.registry.core.Lazy`
reference to their implementation (torch-backed modules, imported on first use); the config
validates its values against these names without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dsd2.registry import options as O
from dsd2.registry.core import Lazy, Registry
from dsd2.registry.options import BuiltinOptions

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
    "retraining mode",
    owns=("prune.finetune_lr", "prune.finetune_epochs", "prune.rewind_epoch"),
    undeclared=lambda m: (),
    options_key="prune.retrain_options",
)
PRUNING_SCHEDULES: Registry[Callable[..., Any]] = Registry(
    "pruning schedule", owns=("prune.gradual_start", "prune.gradual_end"), undeclared=lambda m: (), options_key="prune.schedule_options"
)
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer", owns=("train.momentum",), options_key="train.optimizer_options")
SCHEDULES: Registry[Callable[..., float]] = Registry(
    "schedule", owns=("train.milestones", "train.lr_decay"), options_key="train.schedule_options"
)
STOP_RULES: Registry[Callable[..., Any]] = Registry(
    "stop rule", owns=("early_stop.tolerance", "early_stop.patience", "early_stop.select"), options_key="early_stop.rule_options"
)
NOISE_MODELS: Registry[Callable[..., Any]] = Registry(
    "noise kind", owns=("noise.rate", "noise.class_map", "noise.instance_std"), options_key="noise.options"
)


def _builtin(
    registry: Registry[Any],
    module: str,
    entries: list[tuple[str, str, str]],
    reads: Mapping[str, tuple[str, ...]] | None = None,
    options: Mapping[str, tuple[type[BuiltinOptions], Mapping[str, str]]] | None = None,
) -> None:
    """Register built-in entries; ``reads``: name -> the options of ``registry.owns`` it reads (none if not
    named); ``options``: name -> its typed options model and the flat keys they come from (:mod:`dsd2.registry.options`)."""
    for name, attr, description in entries:
        metadata: dict[str, Any] = {"description": description, "reads": (reads or {}).get(name, ())}
        if name in (options or {}):
            metadata["options"], metadata["flat"] = (options or {})[name]
        registry.register(name, Lazy(f"{module}:{attr}"), metadata=metadata)


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
        _name,
        Lazy(f"dsd2.prune:{_attr}"),
        metadata={
            "description": _description,
            "gradients": True,
            "reads": _SCORE_OPTIONS,
            "options": O.GradientScoreOptions,
            "flat": O.GRADIENT_SCORE_FLAT,
        },
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
        metadata={
            "description": _description,
            "structured": True,
            "min_channels": True,
            "reads": ("prune.min_channels",),
            "options": O.ChannelOptions,
            "flat": O.CHANNEL_FLAT,
        },
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
    options={"finetune": (O.FinetuneOptions, O.FINETUNE_FLAT), "late_rewind": (O.LateRewindOptions, O.LATE_REWIND_FLAT)},
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
    options={"gradual": (O.GradualOptions, O.GRADUAL_FLAT)},
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
    options={"sgd": (O.SgdOptions, O.SGD_FLAT)},
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
    options={"multistep": (O.MultistepOptions, O.MULTISTEP_FLAT)},
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
    options={"plain": (O.StopOptions, O.STOP_FLAT), "entropy": (O.StopOptions, O.STOP_FLAT)},
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
    options={"asymmetric": (O.AsymmetricOptions, O.ASYMMETRIC_FLAT), "instance": (O.InstanceOptions, O.INSTANCE_FLAT)},
)
