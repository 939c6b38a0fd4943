"""Structured export: removed channels leave the model physically (dsd2.shrink), with the same
function as the masked model, checked on random inputs; parameter counts against a count made
here; an end-to-end channel-pruned run exported with --structured and loaded back."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dsd2 import exporting, imp
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.models import build_model, prunable_weights
from dsd2.prune import batchnorm_after
from dsd2.shrink import find_links, inference_macs, module_shapes, rebuild, shrink


def _channel_pruned(name: str, shape: tuple[int, ...], seed: int = 0, **kw) -> nn.Module:
    """``name`` with about half the output channels of every prunable layer but the classifier
    zeroed, BatchNorm scale and shift of those channels zeroed too (as the channel masks do), and
    random BatchNorm statistics so that nothing is trivially zero."""
    torch.manual_seed(seed)
    in_ch = shape[0] if len(shape) == 3 else 1
    m = build_model(name, num_classes=10, in_channels=in_ch, input_size=shape[-1], **kw).eval()
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    weights = prunable_weights(m, include_classifier=False)
    links, mods = batchnorm_after(m, weights), dict(m.named_modules())
    with torch.no_grad():
        for key, w in weights.items():
            dead = torch.rand(w.shape[0]) < 0.5
            w[dead] = 0
            if key in links:
                mods[links[key]].weight[dead] = 0
                mods[links[key]].bias[dead] = 0
    return m


@pytest.mark.parametrize(
    "name, shape, kw",
    [
        ("lenet5", (1, 28, 28), {}),
        ("vgg_like", (3, 32, 32), {"depth": 2, "gamma": 3}),
        ("lenet_300_100", (1, 28, 28), {}),
        ("mlp", (40,), {"hidden": [32, 32]}),
        ("resnet18", (3, 32, 32), {}),
    ],
)
def test_the_shrunk_model_computes_what_the_masked_one_does(name, shape, kw):
    model = _channel_pruned(name, shape, **kw)
    small, report = shrink(model, torch.randn(8, *shape))
    x = torch.randn(16, *shape)  # other inputs than the probe's
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert report.params_after < report.params_before and report.layers
    assert report.params_after == sum(p.numel() for p in small.parameters())
    if name == "resnet18":  # the block outputs meet the shortcut in an addition: those layers stay whole
        assert report.kept_whole["layer1.0.conv2"] == "a residual addition or concatenation follows"
        assert "layer1.0.conv1" in report.layers


def test_an_mlps_parameters_are_those_of_its_kept_neurons():
    """Biases make a removed neuron a constant, folded into the next layer's bias: every removed
    neuron goes, and the count is (inputs kept x outputs kept + outputs kept) per layer."""
    model = _channel_pruned("mlp", (40,), hidden=[32, 24])
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    alive = [int((m.weight != 0).any(1).sum()) for m in lin[:-1]]
    widths = [40, *alive, 10]
    expected = sum(a * b + b for a, b in zip(widths, widths[1:]))
    small, report = shrink(model, torch.randn(4, 40))
    assert report.params_after == expected
    assert [m.out_features for m in small.modules() if isinstance(m, nn.Linear)] == [*alive, 10]


def test_a_constant_before_a_padded_convolution_keeps_its_channel():
    """Without BatchNorm masks a removed conv channel outputs relu(bias) everywhere; zero padding
    makes that non-uniform at the next convolution's borders, so the channel stays (and says so)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.5
        model[0].weight[2] = 0
        model[0].bias[2] = -0.5  # relu(-0.5) = 0: this one goes
    small, report = shrink(model, torch.randn(4, 1, 8, 8))
    assert small[0].out_channels == 3 and report.layers["0"]["kept_dead_constant"] == 1
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(small(x), model(x))


def test_an_untraceable_model_is_refused_in_one_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(UserError, match="torch.fx, which failed for Branchy.*export without --structured"):
        find_links(Branchy())


def test_rebuild_gives_the_shrunk_shapes_to_a_fresh_model():
    model = _channel_pruned("lenet5", (1, 28, 28))
    small, _ = shrink(model, torch.randn(4, 1, 28, 28))
    fresh = rebuild(build_model("lenet5", num_classes=10, in_channels=1, input_size=28), module_shapes(small))
    fresh.load_state_dict(small.state_dict(), strict=True)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), small(x))


def test_inference_macs_count_dense_and_nonzero_products():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[:, :3] = 0
    macs = inference_macs(model, torch.randn(2, 6))
    assert macs == {"0": {"dense": 24, "nonzero": 12}, "2": {"dense": 12, "nonzero": 12}}


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    cfg = load_config(
        "tiny_mnist1d",
        ["prune.criterion=magnitude", "prune.allocation=channel", "model.hidden=[32,32]", "prune.rounds=2", "prune.rate=0.3"]
        + ["prune.include_classifier=false", "train.epochs=2", "train.threads=1"],
    )
    return imp.run(cfg, tmp_path_factory.mktemp("channel"))


def test_a_channel_pruned_run_exports_smaller_and_loads_back(channel_run, tmp_path):
    dense = exporting.export_run(channel_run, tmp_path / "dense", round=2)
    small = exporting.export_run(channel_run, tmp_path / "small", round=2, structured=True)
    info = json.loads((tmp_path / "small" / "model.json").read_text())
    s = info["structured"]
    assert s["params_after"] < s["params_before"] and set(s["layers"]) == {"layers.1", "layers.3"}
    assert small.weights_bytes < dense.weights_bytes == small.dense_bytes
    assert (
        info["inference_macs"]["nonzero"] < info["inference_macs"]["dense"]
        and "does not make them faster" in info["inference_macs"]["note"]
    )
    a, b = exporting.load_exported(tmp_path / "dense"), exporting.load_exported(tmp_path / "small")
    assert sum(p.numel() for p in b.parameters()) == s["params_after"]
    x = torch.randn(32, *info["input_shape"])
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="choose one"):
        exporting.export_run(channel_run, tmp_path / "both", round=2, structured=True, compressed=True)


def test_the_export_command_reports_the_smaller_model(channel_run, tmp_path, capsys):
    from dsd2.cli import main

    assert main(["export", str(channel_run), "-o", str(tmp_path / "e"), "--round", "2", "--structured"]) == 0
    out = capsys.readouterr().out
    assert "channels removed in 2 layer(s)" in out and "unpruned shapes" in out
