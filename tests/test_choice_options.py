"""Each registered choice owns its options (dsd2.registry, "reads" and "options"): the run id counts
an option only when the run's choices read it, a plugin's choice declares what it reads, and a
plugin noise kind with an options model gets the validated ``noise.options`` of the config."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from pydantic import BaseModel, Field

from dsd2 import imp
from dsd2.cli import main
from dsd2.config import differing_settings, load_config, unused_options
from dsd2.errors import UserError
from dsd2.registry import (
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

from conftest import tiny_config


def _plugin(*args, **kwargs):
    raise AssertionError("not called: only the config is built")


class _Std(BaseModel):
    std: float


@pytest.mark.parametrize(
    "registry, name, reads",
    [
        (NOISE_MODELS, "asymmetric", {"noise.rate", "noise.class_map"}),
        (NOISE_MODELS, "transition", set()),
        (RETRAIN_MODES, "late_rewind", {"prune.rewind_epoch"}),
        (PRUNING_CRITERIA, "snip", {"prune.score_batches", "prune.score_batchnorm"}),
        (OPTIMIZERS, "adam", set()),
        (STOP_RULES, "plain", {"early_stop.tolerance", "early_stop.patience", "early_stop.select"}),
    ],
)
def test_built_in_choices_declare_the_options_they_read(registry, name, reads):
    assert registry.reads(name) == reads
    assert reads <= set(registry.owns)


def test_a_plugin_choice_that_declares_what_it_reads_keeps_only_that_in_the_run_id():
    with NOISE_MODELS.snapshot(), OPTIMIZERS.snapshot():
        NOISE_MODELS.register("plug_std_noise", _plugin, metadata={"reads": ("noise.instance_std",)})
        OPTIMIZERS.register("plug_opt", _plugin)  # declares nothing: it may read any option of its registry
        unused = unused_options(tiny_config("noise.kind=plug_std_noise", "train.optimizer=plug_opt"))
        assert {("noise", "rate"), ("noise", "class_map")} <= set(unused)
        assert ("noise", "instance_std") not in unused
        assert ("train", "momentum") not in unused
        base = tiny_config("noise.kind=plug_std_noise")
        assert tiny_config("noise.kind=plug_std_noise", "noise.rate=0.1").run_id() == base.run_id()
        assert tiny_config("noise.kind=plug_std_noise", "noise.instance_std=0.3").run_id() != base.run_id()


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"reads": ("prune.rewind_epoch",)}, "not options of noise kinds"),
        ({"reads": "noise.rate"}, "must be a tuple"),
        ({"options": dict}, "must be a pydantic model class"),
        ({"flat": {"std": "noise.instance_std"}}, "must map each field of its options model to a config key"),
        ({"options": _Std, "flat": {"std": "noise.instance_std"}, "reads": ("noise.rate",)}, "options the choice does not read"),
    ],
)
def test_a_wrong_declaration_fails_at_registration(metadata, message):
    with NOISE_MODELS.snapshot(), pytest.raises(TypeError, match=message):
        NOISE_MODELS.register("plug_bad", _plugin, metadata=metadata)


def test_an_options_model_where_no_config_key_passes_it_fails_at_registration():
    class Options(BaseModel):
        nesterov: bool = False

    with PRUNING_METHODS.snapshot(), pytest.raises(TypeError, match="pruning methods cannot take their own options"):
        PRUNING_METHODS.register("plug_method", _plugin, metadata={"options": Options})


# ----------------------------------------------------------------------------- a plugin noise kind's own options

NOISE_PLUGIN = '''
"""A noise kind with its own, validated option: flips the first `count` labels by `shift`."""
from pydantic import BaseModel, Field

from dsd2.registry import NOISE_MODELS

SEEN = []


class ShiftOptions(BaseModel):
    shift: int = Field(1, ge=1)
    count: int = 10


def shift_noise(req):
    SEEN.append(dict(req.options))
    noisy = req.clean.clone()
    n = req.options["count"]
    noisy[:n] = (noisy[:n] + req.options["shift"]) % req.num_classes
    return noisy


NOISE_MODELS.register("plug_shift", shift_noise, metadata={"options": ShiftOptions, "reads": ()})  # not noise.rate
'''


@pytest.fixture
def shift_plugin(tmp_path, monkeypatch):
    (tmp_path / "dsd2_shift_noise.py").write_text(NOISE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with NOISE_MODELS.snapshot():
        yield importlib.import_module("dsd2_shift_noise")
    sys.modules.pop("dsd2_shift_noise", None)


def test_a_plugin_noise_kind_gets_its_validated_options(shift_plugin):
    from dsd2.imp.setup import build_data, noisy_labels

    cfg = tiny_config("noise.kind=plug_shift", "noise.options.shift='2'")
    assert cfg.noise.options == {"shift": 2}  # converted to the model's type; the default count is left out
    labels = noisy_labels(cfg, build_data(cfg))
    assert shift_plugin.SEEN == [{"shift": 2, "count": 10}]  # the request gets the defaults too
    assert labels.flipped.tolist() == list(range(10))


def test_a_plugin_noise_kinds_options_are_recorded_in_noise_json(shift_plugin, tmp_path):
    cfg = tiny_config("noise.kind=plug_shift", "noise.options.count=4", "prune.rounds=0")
    run_dir = imp.run(cfg, tmp_path)
    assert json.loads((run_dir / "noise.json").read_text())["options"] == {"shift": 1, "count": 4}


def test_a_plugin_noise_kinds_options_are_in_the_run_id_and_its_defaults_are_not(shift_plugin):
    base = tiny_config("noise.kind=plug_shift")
    assert tiny_config("noise.kind=plug_shift", "noise.options={shift: 1, count: 10}").run_id() == base.run_id()
    other = tiny_config("noise.kind=plug_shift", "noise.options.count=5")
    assert other.run_id() != base.run_id()
    assert differing_settings(base, other) == ["noise.options.count"]
    assert tiny_config("noise.kind=plug_shift", "noise.rate=0.1").run_id() == base.run_id()  # it declares reads=()


@pytest.mark.parametrize(
    "override, message",
    [
        ("noise.options.shift=0", "noise.options.shift=0: Input should be greater than or equal to 1"),
        (
            "noise.options.shfit=2",
            "noise.options.shfit: noise kind 'plug_shift' has no option 'shfit'. Did you mean 'noise.options.shift'?",
        ),
        ("noise.options.count=many", "noise.options.count='many': Input should be a valid integer"),
    ],
)
def test_a_bad_plugin_noise_option_is_exit_2_naming_the_key(shift_plugin, override, message, capsys):
    assert main(["config", "tiny_mnist1d", "--plugin", "dsd2_shift_noise", "noise.kind=plug_shift", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_built_in_noise_kind_takes_no_options(capsys):
    assert main(["config", "tiny_mnist1d", "noise.options.shift=2"]) == 2
    assert "noise.options: noise kind 'symmetric' takes no options" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a plugin criterion's and allocation's own options


class _Power(BaseModel):
    power: float = Field(1.0, gt=0)


class _Keep(BaseModel):
    keep_last: bool = False


def test_a_plugin_criterion_and_allocation_get_their_validated_options_in_a_run(tmp_path):
    seen: dict[str, list[dict]] = {"criterion": [], "allocation": []}

    def power_scores(weights, inputs):
        seen["criterion"].append(dict(inputs.options))
        return {n: w.detach().abs().float().cpu() ** inputs.options["power"] for n, w in weights.items()}

    def kept_global(scores, masks, rate, density, *, options):
        seen["allocation"].append(dict(options))
        return PRUNING_ALLOCATIONS.get("global")(scores, masks, rate, density)

    with PRUNING_CRITERIA.snapshot(), PRUNING_ALLOCATIONS.snapshot():
        PRUNING_CRITERIA.register("plug_power", power_scores, metadata={"options": _Power})
        PRUNING_ALLOCATIONS.register("plug_alloc", kept_global, metadata={"options": _Keep})
        cfg = tiny_config(
            "prune.rounds=1",
            "prune.criterion=plug_power",
            "prune.allocation=plug_alloc",
            "prune.criterion_options.power='2'",
            "prune.allocation_options={keep_last: false}",
        )
        assert (cfg.prune.criterion_options, cfg.prune.allocation_options) == ({"power": 2.0}, {})
        run_dir = imp.run(cfg, tmp_path)
        assert seen == {"criterion": [{"power": 2.0}], "allocation": [{"keep_last": False}]}
        saved = load_config(run_dir / "config.yaml")  # the options are recorded and read back as they were
        assert (saved.prune.criterion_options, saved.run_id()) == ({"power": 2.0}, cfg.run_id())
        assert imp.run(saved, tmp_path) == run_dir  # the finished run is found, not trained again
        assert len(seen["criterion"]) == 1
        base = tiny_config("prune.rounds=1", "prune.criterion=plug_power", "prune.allocation=plug_alloc")
        assert base.run_id() != cfg.run_id()
        assert differing_settings(base, cfg) == ["prune.criterion_options.power"]
        with pytest.raises(UserError, match=r"prune.allocation_options.keep_lats: sparsity allocation 'plug_alloc' has no option"):
            tiny_config("prune.criterion=plug_power", "prune.allocation=plug_alloc", "prune.allocation_options.keep_lats=1")
        with pytest.raises(UserError, match=r"prune.criterion_options.power=0.0: Input should be greater than 0"):
            tiny_config("prune.criterion=plug_power", "prune.allocation=global", "prune.criterion_options.power=0.0")
    # a built-in criterion (here the method's own, magnitude) takes none
    with pytest.raises(UserError, match=r"prune.criterion_options: pruning criterion 'magnitude' takes no options"):
        tiny_config("prune.allocation=uniform", "prune.criterion_options.power=2")


# ----------------------------------------------------------------------------- every other kind of plugin choice with its own options


class _Factor(BaseModel):
    factor: float = Field(1.0, gt=0)


class _Steps(BaseModel):
    steps: int = Field(1, ge=1)
    label: str = "x"


@pytest.fixture
def option_plugins():
    """A plugin retraining mode, pruning schedule, optimizer, lr schedule and stop rule, each registered
    with an options model; ``seen[kind]`` lists the options each call got."""
    import torch

    from dsd2.compare import no_stop
    from dsd2.imp import RetrainMode, iterative_schedule

    seen: dict[str, list[dict]] = {k: [] for k in ("restart", "mode_schedule", "hooks", "schedule", "optimizer", "lr", "rule")}

    def restart(ctx, round_idx, *, options):
        seen["restart"].append(dict(options))

    def mode_schedule(cfg, base, lr_scale, *, options):
        seen["mode_schedule"].append(dict(options))
        return {**base, "lr": base["lr"] * options["factor"]}

    def hooks(ctx, *, options):
        seen["hooks"].append(dict(options))
        return []

    def schedule(ctx, masks, round_idx, *, options):
        seen["schedule"].append(dict(options))
        return iterative_schedule(ctx, masks, round_idx)

    def optimizer(params, s, *, options):
        seen["optimizer"].append(dict(options))
        return torch.optim.SGD(params, lr=s.lr * options["factor"])

    def lr(s, epoch, *, options):
        seen["lr"].append(dict(options))
        return s.lr / options["steps"]

    def rule(acc, entropy, *, options, **kwargs):
        seen["rule"].append(dict(options))
        return no_stop(acc, entropy)

    with RETRAIN_MODES.snapshot(), PRUNING_SCHEDULES.snapshot(), OPTIMIZERS.snapshot(), SCHEDULES.snapshot(), STOP_RULES.snapshot():
        RETRAIN_MODES.register(
            "plug_mode", RetrainMode(restart=restart, schedule=mode_schedule, hooks=hooks), metadata={"options": _Factor}
        )
        PRUNING_SCHEDULES.register("plug_sched", schedule, metadata={"options": _Steps})
        OPTIMIZERS.register("plug_opt", optimizer, metadata={"options": _Factor})
        SCHEDULES.register("plug_lr", lr, metadata={"options": _Steps})
        STOP_RULES.register("plug_rule", rule, metadata={"options": _Steps})
        yield seen


PLUGIN_CHOICES = [
    "prune.retrain=plug_mode",
    "prune.schedule=plug_sched",
    "train.optimizer=plug_opt",
    "train.schedule=plug_lr",
    "early_stop.rule=plug_rule",
]
# (options key, a non-default value, the same given as its default)
PLUGIN_OPTIONS = [
    ("prune.retrain_options", "{factor: 0.5}", "{factor: 1.0}"),
    ("prune.schedule_options", "{steps: 3}", "{steps: 1, label: x}"),
    ("train.optimizer_options", "{factor: 0.5}", "{factor: 1}"),
    ("train.schedule_options", "{steps: 2, label: y}", "{label: x}"),
    ("early_stop.rule_options", "{label: z}", "{steps: 1}"),
]


def test_every_plugin_choice_gets_its_validated_options_when_it_runs(option_plugins, tmp_path):
    options = [f"{key}={value}" for key, value, _ in PLUGIN_OPTIONS]
    cfg = tiny_config("prune.rounds=1", "train.epochs=2", *PLUGIN_CHOICES, *options)
    assert cfg.prune.schedule_options == {"steps": 3}  # stored without the defaults
    assert cfg.train.schedule_options == {"steps": 2, "label": "y"}
    run_dir = imp.run(cfg, tmp_path)
    seen = option_plugins
    # with the defaults filled in; the retraining mode's callables run for round 1 only
    assert seen["restart"] == seen["mode_schedule"][-1:] == [{"factor": 0.5}]
    assert seen["hooks"] and all(o == {"factor": 0.5} for o in seen["hooks"])
    assert seen["schedule"] == [{"steps": 3, "label": "x"}]
    assert seen["optimizer"] and all(o == {"factor": 0.5} for o in seen["optimizer"])
    assert seen["lr"] and all(o == {"steps": 2, "label": "y"} for o in seen["lr"])
    assert seen["rule"] and all(o == {"steps": 1, "label": "z"} for o in seen["rule"])
    saved = load_config(run_dir / "config.yaml")  # recorded and read back as they were
    assert saved.run_id() == cfg.run_id() and saved.early_stop.rule_options == {"label": "z"}


@pytest.mark.parametrize("key, value, default", PLUGIN_OPTIONS, ids=[k for k, _, _ in PLUGIN_OPTIONS])
def test_a_plugin_choices_options_are_in_the_run_id_and_its_defaults_are_not(option_plugins, key, value, default):
    base = tiny_config(*PLUGIN_CHOICES)
    assert tiny_config(*PLUGIN_CHOICES, f"{key}={default}").run_id() == base.run_id()
    other = tiny_config(*PLUGIN_CHOICES, f"{key}={value}")
    assert other.run_id() != base.run_id()
    assert {k.rpartition(".")[0] for k in differing_settings(base, other)} == {key}


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "prune.retrain_options.factr=2",
            "prune.retrain_options.factr: retraining mode 'plug_mode' has no option 'factr'. Did you mean "
            "'prune.retrain_options.factor'? Its options (defaults): factor=1.0",
        ),
        ("prune.schedule_options.steps=many", "prune.schedule_options.steps='many': Input should be a valid integer"),
        (
            "train.optimizer_options.factor=0",
            "train.optimizer_options.factor=0: Input should be greater than 0 (optimizer 'plug_opt' options",
        ),
        ("train.schedule_options.label=[1]", "train.schedule_options.label=[1]: Input should be a valid string"),
        ("early_stop.rule_options.step=2", "early_stop.rule_options.step: stop rule 'plug_rule' has no option 'step'"),
    ],
)
def test_a_bad_plugin_choice_option_is_one_clear_error(option_plugins, override, message):
    with pytest.raises(UserError) as err:
        tiny_config(*PLUGIN_CHOICES, override)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.retrain_options.factor=2", "prune.retrain_options: retraining mode 'lr_rewind' takes no options"),
        ("prune.schedule_options.steps=2", "prune.schedule_options: pruning schedule 'iterative' takes no options"),
        ("train.optimizer_options.factor=2", "train.optimizer_options: optimizer 'adam' takes no options"),
        ("train.schedule_options.steps=2", "train.schedule_options: schedule 'cosine' takes no options"),
        ("early_stop.rule_options.steps=2", "early_stop.rule_options: stop rule 'none' takes no options"),
    ],
)
def test_a_built_in_choice_takes_no_options_dict(override, message, capsys):
    assert main(["config", "tiny_mnist1d", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_plugin_choice_without_an_options_model_keeps_its_signature(tmp_path):
    import torch

    calls = []

    def make(params, s):  # no options keyword: none is passed
        calls.append(s.optimizer_options)
        return torch.optim.SGD(params, lr=s.lr)

    with OPTIMIZERS.snapshot():
        OPTIMIZERS.register("plug_plain", make)
        imp.run(tiny_config("prune.rounds=0", "train.optimizer=plug_plain"), tmp_path)
    assert calls and all(o == {} for o in calls)


def test_a_plugin_stop_rule_gets_its_defaults_outside_a_run(option_plugins):
    from dsd2.compare import decide

    rows = [{"round": r, "val_acc": 0.5, "test_acc": 0.5, "entropy": None} for r in range(3)]
    decide(rows, "plug_rule")
    decide(rows, "plug_rule", options={"steps": 4})
    assert option_plugins["rule"] == [{"steps": 1, "label": "x"}, {"steps": 4, "label": "x"}]


# ----------------------------------------------------------------------------- built-in choices' typed options, from their flat keys

BUILT_IN_OPTIONS = [
    (RETRAIN_MODES, "finetune", ["prune.finetune_lr=0.01", "prune.finetune_epochs=2"], {"lr": 0.01, "epochs": 2}),
    (RETRAIN_MODES, "late_rewind", ["prune.rewind_epoch=1"], {"epoch": 1}),
    (PRUNING_SCHEDULES, "gradual", ["prune.gradual_start=1"], {"start": 1, "end": None}),
    (OPTIMIZERS, "sgd", ["train.momentum=0.5"], {"momentum": 0.5}),
    (SCHEDULES, "multistep", ["train.milestones=[0.25, 0.5]", "train.lr_decay=0.2"], {"milestones": (0.25, 0.5), "lr_decay": 0.2}),
    (PRUNING_CRITERIA, "snip", ["prune.score_batches=2", "prune.score_batchnorm=batch"], {"batches": 2, "batchnorm": "batch"}),
    (PRUNING_ALLOCATIONS, "channel_uniform", ["prune.min_channels=3"], {"min_channels": 3}),
    (STOP_RULES, "entropy", ["early_stop.patience=2"], {"tolerance": 0.0, "patience": 2, "select": "best"}),
    (NOISE_MODELS, "asymmetric", ["noise.class_map={1: 2}"], {"class_map": {1: 2}}),
    (NOISE_MODELS, "instance", ["noise.instance_std=0.2"], {"std": 0.2}),
]


@pytest.mark.parametrize("registry, name, overrides, expected", BUILT_IN_OPTIONS, ids=[n for _, n, _, _ in BUILT_IN_OPTIONS])
def test_a_built_in_choice_reads_its_typed_options_from_its_flat_keys(registry, name, overrides, expected):
    from pydantic import ValidationError

    from dsd2.config import options_of

    cfg = tiny_config(*overrides)
    options = options_of(cfg, registry, name)
    assert options.model_dump() == expected
    with pytest.raises(ValidationError):  # a typed, frozen object: no one rewrites a run's options
        setattr(options, next(iter(expected)), 0)
    assert set(registry.flat_options(name).values()) <= registry.reads(name)
    # the flat keys stay the way to give them: the per-choice mapping points there
    key = registry.options_key
    with pytest.raises(UserError, match=rf"{key}: {registry.kind} '{name}' is a built-in choice whose options are the keys"):
        tiny_config(f"{registry.options_key}.{next(iter(expected))}=1", *_choosing(registry, name))


def _choosing(registry, name):
    if registry is PRUNING_CRITERIA:
        return [f"prune.criterion={name}", "prune.allocation=global"]
    if registry is PRUNING_ALLOCATIONS:
        return ["prune.criterion=magnitude", f"prune.allocation={name}"]
    field = {
        RETRAIN_MODES: "prune.retrain",
        PRUNING_SCHEDULES: "prune.schedule",
        OPTIMIZERS: "train.optimizer",
        SCHEDULES: "train.schedule",
        STOP_RULES: "early_stop.rule",
        NOISE_MODELS: "noise.kind",
    }[registry]
    return [f"{field}={name}"]


def test_a_plugin_choices_options_read_through_the_same_accessor(option_plugins):
    from dsd2.config import options_of

    cfg = tiny_config(*PLUGIN_CHOICES, "train.optimizer_options.factor=0.5")
    assert options_of(cfg, OPTIMIZERS) == _Factor(factor=0.5)
    assert options_of(cfg, RETRAIN_MODES) == _Factor()
    assert options_of(cfg, OPTIMIZERS, "adam") is None  # a built-in choice without options


@pytest.mark.parametrize("value", ["inf", "1e400"])
def test_an_infinite_plugin_option_is_refused_not_recorded_as_null(option_plugins, value):
    # pydantic's JSON dump writes inf as null: the run trained, then its config.yaml said
    # factor: null and no command could read the run again
    with pytest.raises(UserError, match=r"train\.optimizer_options\.factor=inf: not a finite number"):
        tiny_config(*PLUGIN_CHOICES, f"train.optimizer_options.factor={value}")


@pytest.mark.parametrize(
    "override",
    [
        "train.optimizer_options={" + ", ".join(f"k{i}: [1, 2, 3]" for i in range(2000)) + "}",
        "train.optimizer_options.factor={" + ", ".join(f"k{i}: [1, 2, 3]" for i in range(2000)) + "}",
        "train.optimizer_options.k0" + "k" * 5000 + "=1",
    ],
    ids=["many keys", "a huge value", "a huge key"],
)
def test_a_huge_plugin_option_is_one_short_error(option_plugins, override):
    with pytest.raises(UserError) as err:
        tiny_config(*PLUGIN_CHOICES, override)
    message = str(err.value)
    assert "train.optimizer_options.k0" in message or "train.optimizer_options.factor=" in message
    assert len(message) < 600, message[:700]
