"""The run configuration's schema: one pydantic model per section and :class:`RunConfig`.

Defaults reproduce the paper's CIFAR protocol (docs/protocol.md). Every field is documented once, here;
``dsd2 config`` prints them (:func:`describe_schema`). Must not import torch: configs are validated
before anything heavy is loaded.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from dsd2.config.choices import check_choice_options, options_of
from dsd2.config.data_sections import DatasetConfig, NoiseConfig
from dsd2.config.section import MAX_BATCH, MAX_MODEL_NUMBER, MAX_THREADS, plugin_options_text
from dsd2.config.section import Section as _Section
from dsd2.layer_defaults import with_model_prune_defaults
from dsd2.plugins import check_module_name, load_plugins
from dsd2.registry import (
    OPTIMIZERS,
    PRUNING_ALLOCATIONS,
    PRUNING_CRITERIA,
    PRUNING_METHODS,
    PRUNING_SCHEDULES,
    RETRAIN_MODES,
    SCHEDULES,
    STOP_RULES,
)
from dsd2.units import check_fraction

SELF_TEACHER = "self"  # distill.teacher=self: self-distillation (a run directory named self is ./self)


# Name fields checked against their registry (normalised to the registered spelling). The
# registries hold names without importing torch, so this runs before anything heavy loads.
PruningMethodName = Annotated[str, AfterValidator(PRUNING_METHODS.canonical)]
PruningCriterionName = Annotated[str, AfterValidator(PRUNING_CRITERIA.canonical)]
AllocationName = Annotated[str, AfterValidator(PRUNING_ALLOCATIONS.canonical)]
RetrainModeName = Annotated[str, AfterValidator(RETRAIN_MODES.canonical)]
PruningScheduleName = Annotated[str, AfterValidator(PRUNING_SCHEDULES.canonical)]
OptimizerName = Annotated[str, AfterValidator(OPTIMIZERS.canonical)]
ScheduleName = Annotated[str, AfterValidator(SCHEDULES.canonical)]
StopRuleName = Annotated[str, AfterValidator(STOP_RULES.canonical)]


def _numbers(value: Any) -> list[Any]:
    """The numbers in a model option (a scalar or a nested list of them)."""
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(v)
    return out


class ModelConfig(BaseModel):
    """``name`` plus the builder's own options (e.g. ``depth``, ``gamma`` for vgg_like).

    Extra keys are the model's options; the model registry checks them against the builder's
    signature, so a typo still gives a clear error.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field(
        "vgg_like",
        description="Registered model: resnet18_cifar, resnet18, resnet50, vgg_like, lenet_300_100, lenet5, mlp; or any "
        "torchvision classifier as torchvision/<name> (e.g. torchvision/resnet50), any timm model as timm/<name> (docs/models.md).",
    )

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _bounded_options(self) -> ModelConfig:
        for key, value in (self.model_extra or {}).items():
            big = [v for v in _numbers(value) if abs(v) > MAX_MODEL_NUMBER]
            if big:
                raise ValueError(f"model.{key}: {big[0]!r} is larger than any model dsd2 can build (at most {MAX_MODEL_NUMBER:,})")
        return self


class TrainConfig(_Section):
    epochs: int = Field(160, ge=1, description="Epochs per IMP round (the schedule scales with it).")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    optimizer: OptimizerName = Field("sgd", description=f"Optimizer: {OPTIMIZERS.describe()}.")
    optimizer_options: dict[str, Any] = Field({}, description=plugin_options_text("optimizer", "optimizers"))
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: ScheduleName = Field("multistep", description=f"Learning-rate schedule of a round: {SCHEDULES.describe()}.")
    schedule_options: dict[str, Any] = Field({}, description=plugin_options_text("learning-rate schedule", "schedules"))
    milestones: list[float] = Field(
        [0.5, 0.75], description="MultiStep milestones as fractions of `epochs` (0.5, 0.75 = epochs 80, 120 of 160)."
    )
    lr_decay: float = Field(0.1, gt=0.0, le=1.0, description="MultiStep factor.")
    warmup_epochs: int = Field(
        0, ge=0, description="Linear lr warm-up over the first epochs of every (re)started schedule, as ViTs need (0: none)."
    )
    eval_batch_size: int = Field(1000, ge=1, le=MAX_BATCH)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU).")
    compile: bool = Field(
        False,
        description="Train through torch.compile: 1.19x on VGG-like(5,3), 1.04x on ResNet-18 on 2 CPU cores (benchmarks/bench.py), "
        "after a one-time compile; not bitwise equal to eager mode, so left out of the run id like the device.",
    )
    channels_last: bool = Field(True, description="channels_last memory format for 4-D inputs (CUDA and CPU).")
    # at most MAX_THREADS: 100000 crashed the process inside OpenMP (a segfault, no message), 20000 aborted it
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | Literal["auto"] = Field(
        "auto",
        description="torch CPU threads of a CPU run. auto: 1 for models whose training step is too small to gain from more, "
        f"else the usable cores shared among the runs side by side, fewer when the machine is busy (null reads as auto); at most {MAX_THREADS}.",
    )
    tensorboard: bool = Field(
        False, description="Also log per-epoch and per-round scalars to <run dir>/tensorboard (pip install tensorboard)."
    )
    select_epoch: Literal["last", "best_val"] = Field(
        "last",
        description="Model kept per round: last (the reference) or also best_val, the epoch with the best validation accuracy "
        "(round_XXX/best_state.safetensors and the best_* columns of rounds.csv; IMP continues from the last epoch).",
    )
    checkpoint_interval_s: float = Field(
        60.0,
        ge=0.0,
        description="Save a mid-round checkpoint at the end of an epoch when this many seconds passed since the last (0: every epoch).",
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _threads_none_is_auto(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not 1 <= v <= MAX_THREADS:  # one line, not one per union member
            raise ValueError(f"train.threads={v} is not between 1 and {MAX_THREADS}: give at most the cores you have, or auto")
        return "auto" if v is None else v

    @field_validator("milestones", mode="before")
    @classmethod
    def _milestones_not_percent(cls, v: Any) -> Any:
        return [check_fraction("train.milestones", m) for m in v] if isinstance(v, list) else v

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in v) or sorted(v) != v:
            raise ValueError("milestones must be increasing fractions of the epochs in (0, 1), e.g. [0.5, 0.75]")
        return v

    @model_validator(mode="after")
    def _options_of_the_choices(self) -> TrainConfig:
        # stored without the choice's defaults: giving a default or leaving it out is the same run id
        self.__dict__["optimizer_options"] = check_choice_options(OPTIMIZERS, self.optimizer, self.optimizer_options)
        self.__dict__["schedule_options"] = check_choice_options(SCHEDULES, self.schedule, self.schedule_options)
        return self

    @model_validator(mode="after")
    def _warmup_shorter_than_a_round(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}")
        return self


class PruneConfig(_Section):
    rounds: int = Field(34, ge=0, description="IMP rounds after the dense training (round 0).")
    rate: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction of the *remaining* weights removed per round.")
    method: PruningMethodName = Field("global_magnitude", description=f"Pruning method: {PRUNING_METHODS.describe()}.")
    include_classifier: bool = Field(
        True, description="Prune the classifier too (the reference does): the last Linear layer, or timm's get_classifier()."
    )
    exclude_first_conv: bool = Field(False, description="Keep the first convolution (the stem) dense.")
    criterion: PruningCriterionName | None = Field(
        None, description=f"Score that orders the weights (None: the method's own): {PRUNING_CRITERIA.describe()}."
    )
    allocation: AllocationName | None = Field(
        None, description=f"How many weights each layer loses (None: the method's own): {PRUNING_ALLOCATIONS.describe()}."
    )
    score_batches: int = Field(8, ge=1, description="Training batches (noisy labels) the gradient criteria average over.")
    score_batchnorm: Literal["running", "batch"] = Field(
        "running", description="BatchNorm in the gradient criteria: running statistics (eval mode) or each batch's (train mode)."
    )
    min_channels: int = Field(
        1, ge=1, description="Structured (channel*) allocations: every pruned layer keeps at least this many output channels."
    )
    criterion_options: dict[str, Any] = Field(
        {},
        description="A plugin criterion's own options, validated against the options model it was registered with "
        "(docs/plugins.md); built-in criteria take none. Values equal to its defaults are dropped (they are the same run).",
    )
    allocation_options: dict[str, Any] = Field(
        {},
        description="A plugin allocation's own options, as prune.criterion_options (built-in allocations take none).",
    )
    slimming_lambda: float = Field(
        0.0, ge=0.0, description="Network slimming's L1 penalty on every BatchNorm scale γ during training (e.g. 1e-4; 0: none)."
    )
    include: list[str] = Field(
        [], description="Prune only the layers these fnmatch patterns match (weight or module name, e.g. 'layer4.*'); empty: all."
    )
    exclude: list[str] = Field([], description="Keep the layers these fnmatch patterns match dense (e.g. '*.downsample.*').")
    retrain: RetrainModeName = Field("lr_rewind", description=f"{RETRAIN_MODES.describe()}.")
    retrain_options: dict[str, Any] = Field({}, description=plugin_options_text("retraining mode", "modes"))
    finetune_lr: float = Field(1e-3, gt=0.0, description="Constant lr of the finetune mode.")
    finetune_epochs: int | None = Field(None, ge=1, description="Epochs per finetune round (None: train.epochs).")
    rewind_epoch: int = Field(1, ge=0, description="Epoch of round 0 that late_rewind rewinds to.")
    schedule: PruningScheduleName = Field("iterative", description=f"Pruning schedule: {PRUNING_SCHEDULES.describe()}.")
    schedule_options: dict[str, Any] = Field({}, description=plugin_options_text("pruning schedule", "schedules"))
    gradual_start: int = Field(0, ge=0, description="gradual: the first epoch (0-based) after which it prunes (Zhu & Gupta's t0).")
    gradual_end: int | None = Field(None, ge=0, description="gradual: last epoch that prunes (None: leave the last quarter to train).")
    targets: list[float] = Field(
        [], description="one_shot / gradual: round i's target sparsity is targets[i-1] (empty: IMP's 1-(1-rate)^i)."
    )

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_not_percent(cls, v: Any) -> Any:
        return check_fraction("prune.rate", v)

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_not_percent(cls, v: Any) -> Any:
        return [check_fraction("prune.targets", t) for t in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _composable(self) -> PruneConfig:
        # a method replaced in part must say what it is made of (the built-in ones do)
        if self.criterion is not None or self.allocation is not None:
            implied = PRUNING_METHODS.metadata(self.method)
            if "criterion" not in implied or "allocation" not in implied:
                if self.criterion is None or self.allocation is None:
                    raise ValueError(
                        f"pruning method {self.method!r} names no criterion and allocation of its own: give both "
                        "prune.criterion and prune.allocation"
                    )
        # stored without the choice's defaults: giving a default or leaving it out is the same run id
        self.__dict__["criterion_options"] = check_choice_options(PRUNING_CRITERIA, self.scoring_part("criterion"), self.criterion_options)
        self.__dict__["allocation_options"] = check_choice_options(
            PRUNING_ALLOCATIONS, self.scoring_part("allocation"), self.allocation_options
        )
        self.__dict__["retrain_options"] = check_choice_options(RETRAIN_MODES, self.retrain, self.retrain_options)
        self.__dict__["schedule_options"] = check_choice_options(PRUNING_SCHEDULES, self.schedule, self.schedule_options)
        return self

    def scoring_part(self, part: Literal["criterion", "allocation"]) -> str | None:
        """The run's criterion or allocation: the given one, or the method's own when only the other is
        given; None for a method called as registered (neither given) or one that does not name it."""
        if self.criterion is None and self.allocation is None:
            return None
        given: str | None = getattr(self, part)
        return given if given is not None else PRUNING_METHODS.metadata(self.method).get(part)

    @model_validator(mode="after")
    def _targets(self) -> PruneConfig:
        if self.targets and self.schedule == "iterative":
            raise ValueError("prune.targets is for prune.schedule=one_shot or gradual")
        if self.schedule == "gradual" and self.retrain != "lr_rewind":
            raise ValueError("prune.schedule=gradual trains every round from init with round 0's schedule: leave prune.retrain=lr_rewind")
        if any(not 0.0 < t < 1.0 for t in self.targets):
            raise ValueError(f"prune.targets must lie in (0, 1), got {self.targets}")
        return self


class TeacherSpec(_Section):
    run: str = Field(description="Run directory of the teacher (a finished IMP run).")
    round: int | Literal["best", "dense"] = Field("best", description="Teacher round: best, dense or an index (as distill.round).")
    weight: float = Field(1.0, gt=0.0, description="Weight of this teacher in the mixture (the weights are normalised to sum 1).")


class FeatureHintConfig(_Section):
    student_layer: str = Field(description="Student module whose output is the hint (a name of model.named_modules()).")
    teacher_layer: str = Field(description="Teacher module whose output the adapted student hint regresses.")
    weight: float = Field(1.0, ge=0.0, description="beta: loss = KD loss + beta * MSE(adapter(student hint), teacher hint).")


class DistillConfig(_Section):
    teacher: str | None = Field(
        None,
        description="Run directory of the teacher (a finished IMP run); self: self-distillation (round i distils from the "
        "student's own round i-1, round 0 trains with plain CE). None: no distillation (or distill.teachers).",
    )
    round: int | Literal["best", "dense"] = Field("best", description="Teacher round: best (highest val acc), dense (round 0) or an index.")
    teachers: list[TeacherSpec] = Field(
        [],
        description="Several teachers, e.g. [{run: DIR, round: dense}, {run: DIR, round: best, weight: 2}]: the target is the "
        "weighted average of their probabilities at the temperature (docs/distillation.md). Exclusive with distill.teacher.",
    )
    feature: FeatureHintConfig | None = Field(
        None,
        description="FitNets hint: {student_layer: NAME, teacher_layer: NAME, weight: beta}; a learned 1x1 conv / Linear adapter "
        "maps the student's features to the teacher's (needs distill.teacher, a run or self).",
    )
    alpha: float = Field(0.8, ge=0.0, le=1.0, description="Weight of the distillation term (1-alpha weights CE on noisy labels).")
    temperature: float = Field(10.0, gt=0.0)
    student_init: Literal["shared", "independent"] = Field(
        "shared",
        description="shared: the student is initialised from the run seed like its teacher (bit-identical to the teacher's "
        "initialisation when both share architecture and seed, as in the reference); independent: from its own seed stream.",
    )

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_not_percent(cls, v: Any) -> Any:
        return check_fraction("distill.alpha", v)

    @model_validator(mode="after")
    def _one_form(self) -> DistillConfig:
        if self.teacher is not None and self.teachers:
            raise ValueError("distill.teacher and distill.teachers are exclusive: give one teacher, or the list")
        if self.teacher == SELF_TEACHER and self.round != "best":
            raise ValueError("distill.teacher=self always distils from the previous round: leave distill.round unset")
        if any(t.run == SELF_TEACHER for t in self.teachers):
            raise ValueError("self-distillation is distill.teacher=self, not an entry of distill.teachers")
        # without any teacher it may still be a pipeline's student config (the pipeline sets distill.teacher)
        if self.feature is not None and self.teachers:
            raise ValueError("distill.feature needs one teacher: distill.teacher=<run> or self (not distill.teachers)")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the student distils (from a run, several runs, or itself)."""
        return self.teacher is not None or bool(self.teachers)

    @property
    def self_distill(self) -> bool:
        return self.teacher == SELF_TEACHER


class EntropyConfig(_Section):
    enabled: bool = Field(True, description="Measure activation entropy on the clean, unaugmented training inputs each round.")
    batch_size: int = Field(1000, ge=1, le=MAX_BATCH)


class EarlyStopConfig(_Section):
    rule: StopRuleName = Field("none", description=f"Stop pruning online when the rule fires: {STOP_RULES.describe()}.")
    rule_options: dict[str, Any] = Field({}, description=plugin_options_text("stop rule", "rules"))
    tolerance: float = Field(
        0.0, ge=0.0, description="Accuracy drop tolerated before counting a drop, a fraction (0.03: 3 points; above 1 is refused)."
    )
    patience: int = Field(1, ge=1, description="Consecutive dropped rounds needed to stop.")
    select: Literal["best", "last_good"] = Field(
        "best", description="Round kept: best (most accurate trained) or last_good (sparsest before the drop that stopped pruning)."
    )

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance_not_percent(cls, v: Any) -> Any:
        return check_fraction("early_stop.tolerance", v, unit="points")

    @model_validator(mode="after")
    def _options_of_the_rule(self) -> EarlyStopConfig:
        self.__dict__["rule_options"] = check_choice_options(STOP_RULES, self.rule, self.rule_options)
        return self


class RunConfig(_Section):
    plugins: list[str] = Field(
        [],
        description="Modules imported before the config is validated, e.g. [my_pkg.dsd2_ext]: they register models, datasets, "
        "... (docs/plugins.md). Recorded in config.yaml, so resume, sweeps, report and export load them; not in the run id.",
    )
    # at most 200 characters: <name>-<hash> must fit a file system's 255-byte file names
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", max_length=200, description="Run name: the run directory is <name>-<hash>.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Run seed (0 … 2^32 - 1).")
    dataset: DatasetConfig = DatasetConfig()
    noise: NoiseConfig = NoiseConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    distill: DistillConfig = DistillConfig()
    entropy: EntropyConfig = EntropyConfig()
    early_stop: EarlyStopConfig = EarlyStopConfig()

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        # before any field: the names a plugin registers (model, dataset, pruning method) must exist
        # when the fields naming them are checked. A malformed list is left to the field's checks.
        names = data.get("plugins") if isinstance(data, dict) else None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            load_plugins(names)
        elif names is None:
            load_plugins()  # the entry points still load: they register names a config may use
        # after the plugins: a plugin's structured allocation leaves the classifier out too (the
        # ViT keeps its patch embedding and head dense unless told)
        return with_model_prune_defaults(data)

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(check_module_name(n) for n in v))

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.dataset.label_file and self.noise.kind != "none":
            raise ValueError("dataset.label_file gives real noisy labels: set noise.kind=none (synthetic noise would be added on top)")
        if self.dataset.soft_labels and not self.dataset.label_file:
            raise ValueError("dataset.soft_labels needs dataset.label_file: the file that holds the class probabilities")
        if self.dataset.soft_labels and self.distill.enabled:
            raise ValueError("dataset.soft_labels is not combined with distillation yet: the KD loss takes integer labels")
        if self.dataset.label_file and self.dataset.train_subset:
            raise ValueError("dataset.label_file applies to the full training set: it cannot be combined with dataset.train_subset")
        if self.prune.retrain == "late_rewind" and (rewind := options_of(self, RETRAIN_MODES).epoch) >= self.train.epochs:
            raise ValueError(f"prune.rewind_epoch={rewind} must be smaller than train.epochs={self.train.epochs}")
        if self.train.select_epoch == "best_val" and self.dataset.val_size == 0:
            raise ValueError("train.select_epoch=best_val picks epochs on the validation split: dataset.val_size=0 has none")
        return self

    def resolved(self) -> dict[str, Any]:
        """Plain dict of every field, defaults included (what config.yaml stores)."""
        return self.model_dump(mode="json")

    # The hashing lives in dsd2.config.identity, which imports this module: imported when called.
    def run_id(self) -> str:
        from dsd2.config.identity import config_hash

        return f"{self.name}-{config_hash(self)}"

    def legacy_run_ids(self) -> list[str]:
        """The run ids earlier schemes gave this config, newest first: the third scheme also hashed
        the options of unselected choices (:func:`~dsd2.config.identity.unused_options`); the second
        hashed prune.rounds; the first also hashed dataset.root and dataset.download."""
        from dsd2.config.identity import legacy_run_ids

        return legacy_run_ids(self)

    def digest(self) -> str:
        """Hash of every setting that changes the numbers, prune.rounds included (meta.json records
        it: resume refuses a config.yaml edited since, except an extension by more rounds)."""
        from dsd2.config.identity import config_hash

        return config_hash(self, version=2)


def describe_schema(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) rows for every field, for `dsd2 config`."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_schema(ann, f"{prefix}{name}."))
            if ann is ModelConfig:
                rows.append((f"{prefix}{name}.<option>", "", "Model builder options (see `dsd2 models`)."))
        else:
            rows.append((f"{prefix}{name}", json.dumps(field.default), field.description or ""))
    return rows
