"""The one Registry class (names, hints, overwrite policy, metadata) and the registries built on it:
config names validated without torch, user-registered choices, model option conversion, and the
sweep's cost estimate from the dataset registry."""

import subprocess
import sys
import textwrap

import pytest
import yaml

from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.registry import (
    OPTIMIZERS,
    PRUNING_METHODS,
    RETRAIN_MODES,
    SCHEDULES,
    STOP_RULES,
    DuplicateNameError,
    Lazy,
    Registry,
    UnknownNameError,
    normalise_name,
)

# ----------------------------------------------------------------------------- the class


def _reg() -> Registry:
    r = Registry("widget")
    r.register("Big-Widget", 1, metadata={"size": 3})
    r.register("small_widget", 2)
    return r


def test_names_are_normalised_in_one_way():
    assert normalise_name("  Fashion-MNIST ") == "fashion_mnist"
    r = _reg()
    assert r.names() == ["big_widget", "small_widget"]
    for spelling in ("big_widget", "BIG-WIDGET", " Big-widget  ", "big-widget"):
        assert spelling in r
        assert r.canonical(spelling) == "big_widget"
        assert r.get(spelling) == 1
    assert "bigwidget" not in r and 3 not in r
    assert len(r) == 2 and list(r) == ["big_widget", "small_widget"]


def test_unknown_names_give_a_hint_and_the_registered_names():
    r = _reg()
    with pytest.raises(UnknownNameError) as err:
        r.get("big_widgte")
    msg = str(err.value)
    assert msg.startswith("unknown widget 'big_widgte'.")
    assert "Did you mean 'big_widget'?" in msg and "Registered widgets: big_widget, small_widget." in msg
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownNameError, match="Registered widgets") as err:
        r.canonical("gizmo")
    assert "Did you mean" not in str(err.value)
    with pytest.raises(UnknownNameError, match="must be a string"):
        r.get(3)
    with pytest.raises(UnknownNameError, match="No gadgets are registered"):
        Registry("gadget").get("x")
    assert Registry("stop rule").plural == "stop rules" and Registry("mouse", plural="mice").plural == "mice"


def test_overwrite_policy():
    r = _reg()
    with pytest.raises(DuplicateNameError, match="'big_widget' is already registered.*overwrite=True"):
        r.register("BIG_widget", 5)
    assert r.get("big_widget") == 1
    r.register("big_widget", 5, overwrite=True)
    assert r.get("big_widget") == 5 and dict(r.metadata("big_widget")) == {}
    # the very same object again is no conflict (e.g. a module imported twice); its metadata is replaced
    obj = object()
    r.register("thing", obj, metadata={"a": 1})
    r.register("thing", obj, metadata={"a": 2})
    assert r.metadata("thing")["a"] == 2
    with pytest.raises(TypeError):
        r.register("  ", 1)


def test_decorator_form_metadata_unregister_and_snapshot():
    r = Registry("handler")

    @r.register("on-click", metadata={"button": "left"})
    def on_click():
        return "clicked"

    assert on_click() == "clicked" and r.get("on_click") is on_click
    meta = r.metadata("ON-CLICK")
    assert meta == {"button": "left"}
    with pytest.raises(TypeError):
        meta["button"] = "right"  # read-only
    with r.snapshot():
        r.register("temporary", 1)
        r.unregister("on_click")
        assert r.names() == ["temporary"]
    assert r.names() == ["on_click"]
    r.unregister("On-Click")
    with pytest.raises(UnknownNameError):
        r.unregister("on_click")


def test_lazy_entries_are_imported_on_first_use():
    r = Registry("function")
    r.register("dumps", Lazy("json:dumps"), metadata={"description": "JSON text"})
    r.register("broken", Lazy("json:no_such_function"))
    import json

    assert r.get("dumps") is json.dumps
    with pytest.raises(ImportError, match="function 'broken': cannot import json:no_such_function"):
        r.get("broken")
    assert r.describe() == "dumps: JSON text; broken"


# ----------------------------------------------------------------------------- the registries


def test_config_validates_names_without_importing_torch():
    code = textwrap.dedent(
        """
        import sys
        from dsd2.config import load_config
        from dsd2.errors import UserError
        cfg = load_config("demo_fmnist", ["prune.method=Layerwise-Magnitude", "early_stop.rule=ENTROPY"])
        assert cfg.prune.method == "layerwise_magnitude" and cfg.early_stop.rule == "entropy"
        try:
            load_config(None, ["train.optimizer=adamm"])
        except UserError as err:
            assert "Did you mean 'adam'?" in str(err), err
        else:
            raise AssertionError("no error")
        assert "torch" not in sys.modules, "config validation imported torch"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "key, bad, hint",
    [
        ("prune.method", "global_magnitud", "global_magnitude"),
        ("prune.retrain", "lotery", "lottery"),
        ("train.optimizer", "sdg", "sgd"),
        ("train.schedule", "cosin", "cosine"),
        ("early_stop.rule", "entrpy", "entropy"),
    ],
)
def test_unknown_config_names_are_clear_errors(key, bad, hint):
    with pytest.raises(UserError) as err:
        load_config(None, [f"{key}={bad}"])
    msg = str(err.value)
    assert msg.startswith("invalid configuration") and f"{key}: unknown" in msg and f"Did you mean '{hint}'?" in msg
    assert "Value error" not in msg


def test_every_built_in_entry_resolves():
    from dsd2.imp import RetrainMode

    for registry in (PRUNING_METHODS, RETRAIN_MODES, OPTIMIZERS, SCHEDULES, STOP_RULES):
        for name in registry.names():
            obj = registry.get(name)
            assert callable(obj) or isinstance(obj, RetrainMode), (registry, name)
            assert registry.metadata(name)["description"]


def test_existing_config_values_keep_their_spelling_and_run_ids():
    cfg = load_config("demo_fmnist")
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.prune.method, cfg.prune.retrain) == (
        "adam",
        "cosine",
        "global_magnitude",
        "lr_rewind",
    )
    assert cfg.run_id() == load_config("demo_fmnist", ["train.optimizer=Adam", "prune.method=global-magnitude"]).run_id()


def test_user_registered_choices_work_from_the_config_on():
    import torch

    from dsd2.compare import decide
    from dsd2.imp import RetrainMode, schedule_for
    from dsd2.phases import StopDecision
    from dsd2.prune import full_masks, next_masks
    from dsd2.train import Schedule, make_optimizer

    def keep_first_layer(weights, masks, rate, generator=None):
        return {n: m.clone() for n, m in masks.items()}

    with PRUNING_METHODS.snapshot(), OPTIMIZERS.snapshot(), SCHEDULES.snapshot(), RETRAIN_MODES.snapshot(), STOP_RULES.snapshot():
        PRUNING_METHODS.register("keep_all", keep_first_layer)
        OPTIMIZERS.register("plain_sgd", lambda params, s: torch.optim.SGD(params, lr=s.lr))
        SCHEDULES.register("halving", lambda s, epoch: s.lr / 2**epoch)
        RETRAIN_MODES.register("double_epochs", RetrainMode(schedule=lambda cfg, base, scale: {**base, "epochs": 2 * base["epochs"]}))
        STOP_RULES.register("always_round_0", lambda acc, ent, **kw: StopDecision(0, 0, "first round"))
        cfg = load_config(
            None,
            [
                "prune.method=keep-all",
                "train.optimizer=Plain-SGD",
                "train.schedule=halving",
                "prune.retrain=double_epochs",
                "early_stop.rule=always_round_0",
                "train.epochs=4",
            ],
        )
        w = {"w": torch.ones(3)}
        assert torch.equal(next_masks(cfg.prune.method, w, full_masks(w), 0.5)["w"], torch.ones(3, dtype=torch.bool))
        s = schedule_for(cfg, 1)
        assert s.epochs == 8 and s.kind == "halving" and s.lr_at(3) == pytest.approx(cfg.train.lr / 8)
        opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], Schedule(epochs=1, lr=0.5, optimizer="plain_sgd"))
        assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0
        rows = [{"round": 0, "val_acc": 0.5, "test_acc": 0.5}]
        assert decide(rows, cfg.early_stop.rule).reason == "first round"
    with pytest.raises(UserError, match="unknown pruning method 'keep-all'"):
        load_config(None, ["prune.method=keep-all"])


# ----------------------------------------------------------------------------- model options (pydantic)


def test_model_options_are_converted_by_pydantic_from_the_signature():
    from typing import Literal

    from torch import nn

    from dsd2.models import MODELS, build_model, register_model

    seen = {}

    with MODELS.snapshot():

        @register_model("Option-Zoo", input_shape=(1, 4, 4))
        def zoo(
            num_classes: int,
            in_channels: int,
            input_size: int,
            rate: float = 0.5,
            sizes: tuple[int, ...] = (2,),
            mode: Literal["a", "b"] = "a",
            flag: bool = False,
            extra=None,
        ) -> nn.Module:
            seen.update(rate=rate, sizes=sizes, mode=mode, flag=flag, extra=extra)
            return nn.Linear(1, num_classes)

        assert MODELS.metadata("option_zoo")["input_shape"] == (1, 4, 4)
        build_model("option_zoo", num_classes=2, rate="0.25", sizes="[3, 4]", mode="b", flag=" Yes ", extra={"k": 1})
        assert seen == {"rate": 0.25, "sizes": (3, 4), "mode": "b", "flag": True, "extra": {"k": 1}}
        build_model("option_zoo", num_classes=2, sizes=7)
        assert seen["sizes"] == (7,)
        for kwargs, pattern in [
            ({"mode": "c"}, r"mode='c' is invalid, expected one of 'a', 'b'"),
            ({"rate": True}, r"rate=True is invalid, expected a number"),
            ({"sizes": "1,two"}, r"sizes='1,two' is invalid, expected a comma-separated list of integers"),
            ({"sizes": [True]}, r"expected a comma-separated list of integers"),
            ({"flag": "maybe"}, r"flag='maybe' is invalid, expected true or false.*Accepted options \(defaults\): rate=0.5"),
        ]:
            with pytest.raises(UserError, match=pattern):
                build_model("option_zoo", num_classes=2, **kwargs)
        register_model("option_zoo")(zoo)  # the same builder again is no conflict
        with pytest.raises(DuplicateNameError):
            register_model("option_zoo")(lambda num_classes, in_channels, input_size: nn.Identity())
    assert "option_zoo" not in MODELS


# ----------------------------------------------------------------------------- the sweep's cost estimate


def _write_sweep(tmp_path, dataset: str, model: dict) -> str:
    base = {
        "name": "custom",
        "seed": 0,
        "dataset": {"name": dataset, "root": None},
        "noise": {"kind": "symmetric", "rate": 0.2},
        "model": model,
        "train": {"epochs": 3, "device": "cpu"},
        "prune": {"rounds": 2, "rate": 0.2, "retrain": "finetune", "finetune_epochs": 1},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "custom_sweep", "base": "base.yaml", "grid": {"seed": [0, 1]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_cost_estimate_of_a_user_registered_dataset_and_model(tmp_path):
    from torch import nn

    from dsd2.data import DATASETS, register_dataset
    from dsd2.models import MODELS, register_model
    from dsd2.sweep import epochs_total, estimate_cost, format_cost, load_sweep, train_examples

    with DATASETS.snapshot(), MODELS.snapshot():

        @register_dataset("my-sensors", num_classes=3, input_shape=(1, 8, 8), train_size=1200, test_size=300, default_val_size=200)
        def _sensors(root, *, download=False, seed=0):
            raise AssertionError("the cost estimate must not load data")

        @register_model("my_net", input_shape=(1, 8, 8))
        def _my_net(num_classes: int, in_channels: int, input_size: int, width: int = 16) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, width), nn.ReLU(), nn.Linear(width, num_classes))

        spec = load_sweep(_write_sweep(tmp_path, "My-Sensors", {"name": "my_net", "width": 32}))
        est = estimate_cost(spec)
        (run,) = est["cells"][0]["runs"]
        cfg = load_config(tmp_path / "base.yaml")
        assert run["train_examples"] == 1200 - 200 == train_examples(cfg)
        assert run["epochs_total"] == 3 + 2 * 1 == epochs_total(cfg)
        # forward MACs of Linear(64, 32) + Linear(32, 3), 2 FLOPs each
        assert run["fwd_flops_per_example"] == pytest.approx(2 * (64 * 32 + 32 * 3), rel=0.05)
        assert run["pflops"] > 0 and est["runs"] == 2
        assert "my_net(width=32)" in format_cost(est)


def test_cost_estimate_says_what_a_registered_dataset_did_not_give(tmp_path):
    from dsd2.data import DATASETS, register_dataset
    from dsd2.sweep import estimate_cost, load_sweep

    with DATASETS.snapshot():

        @register_dataset("bare_data")
        def _bare(root, *, download=False, seed=0):
            raise AssertionError("not loaded")

        spec = load_sweep(_write_sweep(tmp_path, "bare_data", {"name": "mlp", "hidden": [8]}))  # validation still works
        with pytest.raises(UserError) as err:
            estimate_cost(spec)
    msg = str(err.value)
    assert "dataset 'bare_data' was registered without num_classes, input_shape, train_size" in msg
    assert "register_dataset('bare_data'" in msg and "cost estimate" in msg


def test_built_in_dataset_sizes_come_from_the_registry():
    from dsd2.data import DATASETS

    assert dict(DATASETS.metadata("cifar10")) == {
        "num_classes": 10,
        "input_shape": (3, 32, 32),
        "train_size": 50000,
        "test_size": 10000,
        "default_val_size": 5000,
    }
    assert DATASETS.metadata("mnist1d")["default_val_size"] == 500
    assert DATASETS.metadata("Fashion-MNIST")["input_shape"] == (1, 28, 28)


def test_a_family_answers_prefixed_names_on_demand():
    calls = []

    def resolve(name):
        calls.append(name)
        if name not in ("alpha", "beta_2"):
            raise LookupError(name)
        return name.upper(), {"size": len(name)}

    r = _reg()
    r.register_family("Kit", resolve=resolve, names=lambda: ["alpha", "beta_2"], description="kit widgets", listing="`list kit`.")
    assert r.canonical("KIT/Beta-2") == "kit/beta_2" and r.get("kit/beta_2") == "BETA_2" and r.metadata("kit/beta_2")["size"] == 6
    assert calls == ["beta_2"]  # resolved once, then kept
    assert r.names() == ["big_widget", "small_widget"]  # family names are not listed
    assert [f.prefix for f in r.families()] == ["kit"]
    assert "kit/alpha" in r and "kit/gamma" not in r and "kat/alpha" not in r
    with pytest.raises(
        UnknownNameError, match=r"unknown widget 'kit/alpah' \('alpah' is not among kit's widgets\). Did you mean 'kit/alpha'\? `list kit`."
    ):
        r.get("kit/alpah")
    with pytest.raises(UnknownNameError, match=r"no widget family 'kat'. Did you mean 'kit/alpha'\?.*Also kit/<name>: kit widgets."):
        r.get("kat/alpha")
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpha'. Did you mean 'kit/alpha'\?"):
        r.get("alpha")  # an exact family name without its prefix
    with r.snapshot():
        r.register_family("more", resolve=resolve, names=list, description="more")
        r.unregister("kit/beta_2")
    assert [f.prefix for f in r.families()] == ["kit"] and "kit/beta_2" in r._resolved
    with pytest.raises(DuplicateNameError):
        r.register_family("kit", resolve=resolve, names=list, description="again")
    with pytest.raises(TypeError):
        r.register_family("a/b", resolve=resolve, names=list, description="slash")
