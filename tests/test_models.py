"""Tests for dsd2.models: registry, exact sizes (the paper's parameter counts), ReLU layout, MACs, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from dsd2.errors import UserError
from dsd2.models import (
    build_model,
    count_parameters,
    list_models,
    macs_per_example,
    model_options,
    prunable_weights,
    register_model,
)
from dsd2.models import registry as registry_module

ALL_MODELS = ["lenet5", "lenet_300_100", "mlp", "resnet18", "resnet18_cifar", "resnet50", "vgg_like", "vit"]

# name -> (build kwargs, input shape without batch, number of ReLU modules)
CASES: dict[str, tuple[dict, tuple[int, ...], int]] = {
    "resnet18_cifar": ({}, (3, 32, 32), 1 + 8 * 2),
    "resnet18_cifar_nomaxpool": ({"maxpool": False}, (3, 32, 32), 1 + 8 * 2),
    "resnet18": ({"input_size": 64}, (3, 64, 64), 1 + 8 * 2),
    "resnet50": ({"input_size": 64}, (3, 64, 64), 1 + 16 * 3),
    "vgg_like": ({}, (3, 32, 32), 10),
    "vgg_like_compact": ({"depth": 3, "gamma": 3, "head": "compact"}, (3, 32, 32), 6),
    "lenet_300_100": ({"in_channels": 1, "input_size": 28}, (1, 28, 28), 2),
    "lenet5": ({"in_channels": 1, "input_size": 28}, (1, 28, 28), 4),
    "mlp": ({"input_size": 40}, (40,), 2),
}


def _build(case: str, num_classes: int = 10) -> nn.Module:
    kwargs = dict(CASES[case][0])
    name = case.replace("_nomaxpool", "").replace("_compact", "")
    return build_model(name, num_classes=num_classes, **kwargs)


def _n_prunable(model: nn.Module, **kw) -> int:
    return sum(w.numel() for w in prunable_weights(model, **kw).values())


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_models_and_options():
    assert list_models() == ALL_MODELS
    assert model_options("vgg_like") == {"depth": 5, "gamma": 5, "head": "reference"}
    assert model_options("resnet18_cifar")["maxpool"] is True
    assert model_options("mlp") == {"hidden": (512, 512)}
    assert model_options("lenet_300_100") == {}
    # Name normalisation: case and dashes.
    assert model_options("VGG-like") == model_options("vgg_like")


def test_register_custom_model_and_validate_its_options():
    @register_model("tmp_test_model")
    def _builder(num_classes: int, in_channels: int, input_size: int, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, width), nn.ReLU(), nn.Linear(width, num_classes))

    try:
        assert "tmp_test_model" in list_models()
        m = build_model("tmp_test_model", num_classes=3, in_channels=1, input_size=4, width="7")
        assert m[1].out_features == 7
        with pytest.raises(UserError, match="width=4"):
            build_model("tmp_test_model", num_classes=3, depth=2)
    finally:
        registry_module.MODELS.unregister("tmp_test_model")
    with pytest.raises(TypeError):
        register_model("tmp_bad")(lambda num_classes, in_channels, input_size, x: nn.Identity())
    assert "tmp_bad" not in list_models()


def test_options_coerced_from_command_line_strings():
    m = build_model("vgg_like", num_classes=10, depth="2", gamma="3", head="compact")
    same = build_model("vgg_like", num_classes=10, depth=2, gamma=3, head="compact")
    assert count_parameters(m) == count_parameters(same)
    m = build_model("resnet18_cifar", num_classes=10, maxpool="false")
    assert isinstance(m.maxpool, nn.Identity)
    m = build_model("mlp", num_classes=10, input_size=40, hidden="64,32")
    assert [lin.out_features for lin in m.modules() if isinstance(lin, nn.Linear)] == [64, 32, 10]
    m = build_model("mlp", num_classes=10, input_size=40, hidden=[16])
    assert [lin.out_features for lin in m.modules() if isinstance(lin, nn.Linear)] == [16, 10]


# --------------------------------------------------------------------------- errors


def test_unknown_model_name_lists_registered_names():
    with pytest.raises(UserError) as e:
        build_model("resnet19", num_classes=10)
    msg = str(e.value)
    assert "resnet19" in msg
    for name in ALL_MODELS:
        assert name in msg
    with pytest.raises(UserError, match="vgg_like"):
        model_options("nope")


def test_unknown_option_names_option_and_lists_accepted_with_defaults():
    with pytest.raises(UserError) as e:
        build_model("vgg_like", num_classes=10, width=64)
    msg = str(e.value)
    assert "'width'" in msg and "depth=5" in msg and "gamma=5" in msg and "head='reference'" in msg
    with pytest.raises(UserError, match="no option 'maxpol'.*maxpool"):
        build_model("resnet18_cifar", num_classes=10, maxpol=False)
    with pytest.raises(UserError, match="takes no options"):
        build_model("lenet_300_100", num_classes=10, hidden=(10,))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"depth": 0}, "depth must be >= 1"),
        ({"depth": -2}, "depth must be >= 1"),
        ({"depth": 6}, r"input_size=32 < 2\*\*6.*depth <= 5"),
        ({"depth": "three"}, "depth='three' is invalid, expected an integer"),
        ({"depth": 2.5}, "expected an integer"),
        ({"depth": True}, "expected an integer"),
        ({"gamma": -1}, "gamma must be in"),
        ({"head": "big"}, "head must be one of reference, compact"),
    ],
)
def test_bad_vgg_values(kwargs, pattern):
    with pytest.raises(UserError, match=pattern):
        build_model("vgg_like", num_classes=10, **kwargs)


def test_other_bad_values():
    with pytest.raises(UserError, match="num_classes must be a positive integer"):
        build_model("vgg_like", num_classes=0)
    with pytest.raises(UserError, match="in_channels"):
        build_model("lenet5", num_classes=10, in_channels=0)
    with pytest.raises(UserError, match="input_size >= 12"):
        build_model("lenet5", num_classes=10, input_size=8)
    with pytest.raises(UserError, match="maxpool='maybe' is invalid, expected true or false"):
        build_model("resnet18_cifar", num_classes=10, maxpool="maybe")
    with pytest.raises(UserError, match="hidden"):
        build_model("mlp", num_classes=10, input_size=40, hidden="512,x")
    with pytest.raises(UserError, match="hidden width must be a positive"):
        build_model("mlp", num_classes=10, input_size=40, hidden=(0,))
    # depth 5 is fine at 32x32, depth 2 at 4x4
    build_model("vgg_like", num_classes=10, depth=2, gamma=1, input_size=4)
    with pytest.raises(UserError, match="depth <= 1"):
        build_model("vgg_like", num_classes=10, depth=2, gamma=1, input_size=3)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("maxpool", [True, False])
def test_resnet18_cifar_param_count(maxpool):
    m = build_model("resnet18_cifar", num_classes=10, maxpool=maxpool)
    assert count_parameters(m) == 11_173_962
    assert isinstance(m, torchvision.models.ResNet)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.bias is None
    assert isinstance(m.maxpool, nn.MaxPool2d if maxpool else nn.Identity)


def test_imagenet_resnets_match_torchvision():
    for name, tv in [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)]:
        ours, ref = build_model(name, num_classes=10), tv(weights=None, num_classes=10)
        assert count_parameters(ours) == count_parameters(ref)
        assert list(ours.state_dict()) == list(ref.state_dict())
        shapes = {k: v.shape for k, v in ref.state_dict().items()}
        assert {k: v.shape for k, v in ours.state_dict().items()} == shapes
    m = build_model("resnet18", num_classes=5, in_channels=1)
    assert m.conv1.in_channels == 1 and m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    # CIFAR variant keeps torchvision's state-dict keys too.
    cifar = build_model("resnet18_cifar", num_classes=10)
    assert list(cifar.state_dict()) == list(torchvision.models.resnet18(num_classes=10).state_dict())


def test_vgg_like_5_5_total_params():
    m = build_model("vgg_like", num_classes=10)
    assert count_parameters(m) == 4_967_082
    assert _n_prunable(m) == 4_961_120
    assert m.classifier.in_features == 512 * 49 == 25_088


# The paper's prunable weights (conv + linear weights), 10 classes, reference head.
VGG_TABLE = {
    1: (4_712, 10_576, 25_760, 69_952),
    2: (12_088, 32_240, 96_736, 322_496),
    3: (33_752, 103_216, 349_280, 1_269_952),
    4: (104_728, 355_760, 1_296_736, 4_934_336),
    5: (357_272, 1_303_216, 4_961_120, 19_340_992),
}


@pytest.mark.parametrize(
    "depth, gamma, expected",
    [(d, g, VGG_TABLE[d][g - 3]) for d in range(1, 6) for g in range(3, 7)],
)
def test_vgg_like_prunable_weight_table(depth, gamma, expected):
    with torch.device("meta"):  # no memory or init cost for the 19 M-weight entry
        m = build_model("vgg_like", num_classes=10, depth=depth, gamma=gamma)
    assert _n_prunable(m) == expected
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 2 * depth
    assert [c.out_channels for c in convs[::2]] == [2**gamma * 2**b for b in range(depth)]
    assert all(c.bias is not None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_vgg_like_compact_head():
    m = build_model("vgg_like", num_classes=10, head="compact")
    assert m.classifier.in_features == 512
    assert count_parameters(m) == 4_967_082 - 512 * 48 * 10


def test_lenet_sizes():
    m = build_model("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    assert count_parameters(m) == 266_610
    assert _n_prunable(m) == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    m = build_model("lenet5", num_classes=10, in_channels=1, input_size=28)
    # conv 1*6*25+6, 6*16*25+16, 400*120+120, 120*84+84, 84*10+10
    assert count_parameters(m) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    m = build_model("mlp", num_classes=10, input_size=40)
    assert count_parameters(m) == 40 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("case", list(CASES))
def test_forward_shape_and_channels_last(case):
    torch.manual_seed(0)
    m = _build(case, num_classes=7).eval()
    shape = CASES[case][1]
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = m(x)
        assert y.shape == (2, 7)
        assert torch.isfinite(y).all()
        if len(shape) == 3:
            m_cl = m.to(memory_format=torch.channels_last)
            y_cl = m_cl(x.contiguous(memory_format=torch.channels_last))
            torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-4)


def test_other_input_sizes_and_channels():
    with torch.no_grad():
        m = build_model("lenet5", num_classes=10, in_channels=3, input_size=32)
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert build_model("resnet18_cifar", num_classes=4, in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 4)
        assert build_model("vgg_like", num_classes=3, in_channels=1, depth=2, gamma=3, input_size=8)(torch.randn(2, 1, 8, 8)).shape == (
            2,
            3,
        )
        m = build_model("mlp", num_classes=10, input_size=40)
        assert m(torch.randn(3, 1, 40)).shape == (3, 10)
        assert build_model("lenet_300_100", num_classes=10, in_channels=1, input_size=28)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("maxpool, side", [(True, 16), (False, 32)])
def test_resnet18_cifar_spatial_flow(maxpool, side):
    m = build_model("resnet18_cifar", num_classes=10, maxpool=maxpool).eval()
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(m, name).register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, tuple(inp[0].shape)))
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    assert seen == {
        "layer1": (1, 64, side, side),
        "layer2": (1, 64, side, side),
        "layer3": (1, 128, side // 2, side // 2),
        "layer4": (1, 256, side // 4, side // 4),
    }


def test_deterministic_init_given_seed():
    for name, kw in [("vgg_like", {"depth": 2, "gamma": 3}), ("resnet18_cifar", {}), ("mlp", {"input_size": 40})]:
        torch.manual_seed(123)
        a = build_model(name, num_classes=10, **kw).state_dict()
        torch.manual_seed(123)
        b = build_model(name, num_classes=10, **kw).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        torch.manual_seed(124)
        c = build_model(name, num_classes=10, **kw).state_dict()
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_zero_init_residual_option():
    m = build_model("resnet18_cifar", num_classes=10, zero_init_residual=True)
    blocks = [b for b in m.modules() if isinstance(b, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 8
    assert all(torch.count_nonzero(b.bn2.weight.detach()) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn1.weight.detach()) == 64 * 2 ** (i // 2) for i, b in enumerate(blocks))


# --------------------------------------------------------------------------- ReLUs


class _ReluCallCounter(TorchFunctionMode):
    """Counts every ReLU call, functional or module (nn.ReLU calls F.relu once)."""

    RELUS = (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.RELUS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", list(CASES))
def test_every_relu_is_a_distinct_module_called_once(case):
    m = _build(case)
    relus = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)]
    assert len(relus) == CASES[case][2]
    assert len({id(mod) for _, mod in relus}) == len(relus)
    assert all(mod.inplace is False for _, mod in relus)
    calls = {n: 0 for n, _ in relus}
    for n, mod in relus:
        mod.register_forward_hook(lambda mod, inp, out, n=n: calls.__setitem__(n, calls[n] + 1))
    x = torch.randn(2, *CASES[case][1])
    with torch.no_grad(), _ReluCallCounter() as counter:
        m.train()(x)
    assert calls == {n: 1 for n, _ in relus}
    # No activation outside an nn.ReLU module (e.g. a functional F.relu).
    assert counter.calls == len(relus)


def test_resnet_block_relu_names():
    m = build_model("resnet50", num_classes=10)
    names = {n for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)}
    assert {"relu", "layer1.0.relu1", "layer1.0.relu2", "layer1.0.relu3", "layer4.2.relu3"} <= names
    m = build_model("resnet18_cifar", num_classes=10)
    names = {n for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)}
    assert {"relu", "layer1.0.relu1", "layer1.0.relu2", "layer4.1.relu2"} <= names


# --------------------------------------------------------------------------- prunable weights


def test_prunable_weights_resnet18_cifar():
    m = build_model("resnet18_cifar", num_classes=10)
    pw = prunable_weights(m)
    sd = m.state_dict()
    params = dict(m.named_parameters())
    assert all(k in sd and params[k] is w and isinstance(w, nn.Parameter) for k, w in pw.items())
    assert all(k.endswith(".weight") for k in pw)
    assert not any("bn" in k or "downsample.1" in k or k.endswith("bias") for k in pw)
    # 1 stem + 16 block convs + 3 downsample 1x1 convs + fc
    assert len(pw) == 21
    assert list(pw)[0] == "conv1.weight" and list(pw)[-1] == "fc.weight"
    assert {"layer2.0.downsample.0.weight", "layer3.0.downsample.0.weight", "layer4.0.downsample.0.weight"} <= set(pw)
    assert pw["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    # module order
    expected_order = [f"{n}.weight" for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert list(pw) == expected_order
    no_fc = prunable_weights(m, include_classifier=False)
    assert list(no_fc) == list(pw)[:-1]
    assert _n_prunable(m) == 11_164_352
    assert _n_prunable(m) == count_parameters(m) - 9_600 - 10  # minus BN (2 per channel) and fc bias


def test_prunable_weights_vgg_and_lenet_drop_only_last_linear():
    m = build_model("vgg_like", num_classes=10, depth=2, gamma=3)
    pw = prunable_weights(m)
    assert list(pw) == [
        "features.0.weight",
        "features.3.weight",
        "features.7.weight",
        "features.10.weight",
        "classifier.weight",
    ]
    assert list(prunable_weights(m, include_classifier=False)) == list(pw)[:-1]
    m = build_model("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    pw = prunable_weights(m)
    assert list(pw) == ["layers.1.weight", "layers.3.weight", "layers.5.weight"]
    assert list(prunable_weights(m, include_classifier=False)) == ["layers.1.weight", "layers.3.weight"]


def test_prunable_weights_conv1d_and_wrappers():
    m = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 2))
    assert list(prunable_weights(m)) == ["0.weight", "3.weight"]
    lin = nn.Linear(3, 3)
    assert list(prunable_weights(lin)) == ["weight"]
    assert prunable_weights(lin, include_classifier=False) == {}
    torch.nn.utils.prune.l1_unstructured(lin, "weight", amount=0.5)
    with pytest.raises(TypeError, match="plain 'weight'"):
        prunable_weights(lin)


# --------------------------------------------------------------------------- MACs


def test_macs_per_example_match_spec():
    # The paper: VGG-like(5,5) ≈ 67.2 M MACs, ResNet-18 CIFAR with max-pool ≈ 140 M.
    vgg = build_model("vgg_like", num_classes=10)
    vgg_macs = macs_per_example(vgg, (3, 32, 32))
    assert vgg_macs == pytest.approx(67.2e6, rel=0.02)
    assert vgg_macs == 67_195_904  # measured: 66,945,024 conv + 250,880 classifier
    r18 = build_model("resnet18_cifar", num_classes=10).train()
    r18_macs = macs_per_example(r18, (3, 32, 32))
    assert r18_macs == pytest.approx(140e6, rel=0.02)
    assert r18_macs == 140_186_624  # measured
    assert r18.training  # mode restored
    no_pool = macs_per_example(build_model("resnet18_cifar", num_classes=10, maxpool=False), (3, 32, 32))
    assert no_pool == 555_422_720  # measured: ≈4x without the max-pool
    lenet = build_model("lenet_300_100", num_classes=10, in_channels=1, input_size=28)
    assert macs_per_example(lenet, (1, 28, 28)) == 266_200
