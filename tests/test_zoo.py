"""torchvision/<name> and timm/<name> models (dsd2.models.zoo): building, options, names, input
handling, the pruning set, entropy on shared in-place ReLUs and GELU/SiLU, and a run end to end."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dsd2 import store
from dsd2.config import load_config
from dsd2.entropy import activation_entropy
from dsd2.errors import UserError
from dsd2.models import MODELS, build_model, classifier_layers, first_conv, list_models, model_options, prunable_weights
from dsd2.prune import apply_masks, full_masks, global_magnitude_masks, sparsity

# --------------------------------------------------------------------------- building


def test_torchvision_model_with_num_classes_from_the_data_and_options_from_strings():
    model = build_model("torchvision/resnet18", num_classes=7, input_size=32, zero_init_residual="true")
    assert type(model) is torchvision.models.ResNet  # the library's module, unwrapped
    assert model.fc.out_features == 7
    assert all(float(block.bn2.weight.detach().abs().sum()) == 0 for layer in (model.layer1, model.layer4) for block in layer)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # spelling as for every registered name; the options come from ResNet's constructor
    assert MODELS.canonical("TorchVision/ResNet18") == "torchvision/resnet18"
    options = model_options("torchvision/resnet18")
    assert options["zero_init_residual"] is False and options["weights"] is None and "num_classes" not in options
    with pytest.raises(UserError, match=r"zero_init_residual='maybe' is invalid, expected true or false"):
        build_model("torchvision/resnet18", num_classes=7, zero_init_residual="maybe")


def test_a_built_model_state_dict_loads_into_the_plain_torchvision_constructor():
    torch.manual_seed(0)
    model = build_model("torchvision/resnet18", num_classes=5, input_size=32)
    plain = torchvision.models.resnet18(num_classes=5)
    plain.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))
    # the same seed draws the same initial weights as torchvision's own constructor
    torch.manual_seed(0)
    again = torchvision.models.resnet18(num_classes=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_family_names_are_not_listed_but_resolve_with_hints():
    assert not any("/" in n for n in list_models())
    assert {f.prefix for f in MODELS.families()} == {"torchvision", "timm"}
    assert "torchvision/resnet18" in MODELS and "torchvision/resnet5" not in MODELS and "nope/resnet18" not in MODELS
    with pytest.raises(UserError, match=r"Did you mean 'torchvision/resnet50'\?.*dsd2 models torchvision"):
        build_model("torchvision/resnet5", num_classes=10)
    with pytest.raises(UserError, match=r"no model family 'torchvison'. Did you mean 'torchvision/resnet18'\?"):
        build_model("torchvison/resnet18", num_classes=10)
    with pytest.raises(UserError, match=r"Did you mean 'torchvision/vit_b_16'\?"):
        build_model("vit_b_16", num_classes=10)
    with pytest.raises(UserError, match=r"Did you mean 'resnet50'\?.*torchvision/<name>"):  # the registered name first
        build_model("resnet5", num_classes=10)
    with pytest.raises(UserError, match=r"no option 'zero_init_residul'. Did you mean 'model.zero_init_residual'\?"):
        build_model("torchvision/resnet18", num_classes=10, zero_init_residul=True)


def test_pretrained_weights_and_auxiliary_heads_are_refused():
    with pytest.raises(UserError, match="random initialisation only; pretrained weights are not loaded"):
        build_model("torchvision/resnet18", num_classes=10, weights="DEFAULT")
    with pytest.raises(UserError, match="aux_logits=true is not supported"):
        build_model("torchvision/googlenet", num_classes=10, aux_logits=True)
    model = build_model("torchvision/googlenet", num_classes=10)  # aux_logits defaults to false: one logits tensor
    assert model_options("torchvision/googlenet")["aux_logits"] is False
    assert isinstance(model.train()(torch.randn(2, 3, 32, 32)), torch.Tensor)


def test_one_channel_data_adapts_the_stem_conv():
    torch.manual_seed(1)
    gray = build_model("torchvision/resnet18", num_classes=10, in_channels=1, input_size=28)
    torch.manual_seed(1)
    rgb = build_model("torchvision/resnet18", num_classes=10, in_channels=3, input_size=28)
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7) and gray.conv1.stride == (2, 2)
    assert torch.equal(gray.conv1.weight, rgb.conv1.weight[:, :1])  # the constructor's weights of channel 0
    assert torch.equal(gray.fc.weight, rgb.fc.weight)
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    five = build_model("torchvision/resnet18", num_classes=10, in_channels=5, input_size=32)
    assert five.conv1.weight.shape[1] == 5 and five(torch.randn(2, 5, 32, 32)).shape == (2, 10)
    # transformers built for one image size get the data's
    vit = build_model("torchvision/vit_b_32", num_classes=3, input_size=32)
    assert vit.image_size == 32


def test_too_small_inputs_fail_at_build_time_with_a_clear_error():
    with pytest.raises(UserError, match=r"'torchvision/inception_v3': does not run on the data's 3×32×32 inputs.*larger images"):
        build_model("torchvision/inception_v3", num_classes=10, input_size=32)
    with pytest.raises(UserError, match=r"'torchvision/vit_b_16': cannot be built for the data's 3×28×28 inputs.*patch size"):
        build_model("torchvision/vit_b_16", num_classes=10, input_size=28)


def test_the_meta_device_build_of_the_sweep_works_for_every_kind_of_constructor():
    with torch.device("meta"):
        regnet = build_model("torchvision/regnet_x_400mf", num_classes=10, input_size=32)  # computes widths with tensors
        resnet = build_model("torchvision/resnet18", num_classes=10, input_size=32)
    assert next(regnet.parameters()).is_meta and next(resnet.parameters()).is_meta


# --------------------------------------------------------------------------- pruning set


def test_exclude_first_conv_and_classifier_change_the_prunable_set():
    model = build_model("torchvision/resnet18", num_classes=10, input_size=32)
    every = prunable_weights(model)
    assert list(every)[0] == "conv1.weight" and list(every)[-1] == "fc.weight" and len(every) == 21
    assert "downsample.0.weight" in "".join(every)  # 1x1 shortcut convs are pruned, as in the reference
    assert first_conv(model) == "conv1" and classifier_layers(model) == ["fc"]
    assert set(every) - set(prunable_weights(model, exclude_first_conv=True)) == {"conv1.weight"}
    assert set(every) - set(prunable_weights(model, include_classifier=False)) == {"fc.weight"}
    assert set(every) - set(prunable_weights(model, include_classifier=False, exclude_first_conv=True)) == {"conv1.weight", "fc.weight"}
    # a model without Linear layers: its last convolution is the classifier
    squeeze = build_model("torchvision/squeezenet1_1", num_classes=10, input_size=32)
    assert classifier_layers(squeeze) == ["classifier.1"]
    # ViT: the Linear layers, with the patch projection as first conv and heads.head as classifier
    vit = build_model("torchvision/vit_b_32", num_classes=10, input_size=32)
    assert first_conv(vit) == "conv_proj" and classifier_layers(vit) == ["heads.head"]


def test_masks_from_pruning_a_torchvision_model():
    torch.manual_seed(0)
    model = build_model("torchvision/resnet18", num_classes=10, input_size=32)
    weights = prunable_weights(model, exclude_first_conv=True)
    masks = global_magnitude_masks(weights, full_masks(weights), 0.5)
    assert sparsity(masks) == pytest.approx(0.5, abs=1e-6)
    stem = model.conv1.weight.detach().clone()
    apply_masks(weights, masks)
    for name, w in weights.items():
        assert not bool(w[~masks[name]].any()), name  # pruned entries are zero
    assert torch.equal(model.conv1.weight, stem)  # excluded: dense and untouched
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------- entropy


def test_entropy_on_torchvision_resnet_with_its_reused_inplace_relu():
    """torchvision's BasicBlock calls one nn.ReLU(inplace=True) twice: one layer per call, counted
    exactly as dsd2's own resnet18 (one ReLU module per call site, same state dict) counts them."""
    torch.manual_seed(0)
    tv = build_model("torchvision/resnet18", num_classes=10, input_size=32)
    own = build_model("resnet18", num_classes=10, input_size=32)
    own.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(40, 3, 32, 32)
    a = activation_entropy(tv, x, batch_size=16)
    b = activation_entropy(own, x, batch_size=40)
    assert len(a.per_layer) == 17 and list(a.per_layer)[:3] == ["relu", "layer1.0.relu", "layer1.0.relu#1"]

    def own_name(name: str) -> str:  # layer1.0.relu -> layer1.0.relu1, layer1.0.relu#1 -> layer1.0.relu2
        if not name.startswith("layer"):
            return name
        return name.removesuffix("#1")[:-4] + ("relu2" if name.endswith("#1") else "relu1")

    renamed = {own_name(k): v for k, v in a.per_layer.items()}
    assert renamed == pytest.approx(dict(b.per_layer), abs=1e-12)
    assert a.weighted_mean == pytest.approx(b.weighted_mean, abs=1e-12)


class _GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate, self.out = nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)

    def forward(self, x):
        h1 = self.fc1(x)
        h2 = self.fc2(self.act(h1))
        return self.out(F.silu(h2) * self.gate(h2))


def test_gelu_and_silu_neurons_are_on_when_their_pre_activation_is_positive():
    torch.manual_seed(0)
    net = _GeluNet()
    x = torch.randn(64, 6)
    res = activation_entropy(net, x, batch_size=20)
    assert list(res.per_layer) == ["act", ":silu"]  # the GELU module, the functional SiLU; the sigmoid gate is not a layer
    with torch.no_grad():
        h1 = net.fc1(x)
        h2 = net.fc2(F.gelu(h1))
    from dsd2.entropy import binary_entropy

    for name, pre in (("act", h1), (":silu", h2)):
        expected = binary_entropy((pre > 0).double().mean(0)).mean().item()
        assert res.per_layer[name] == pytest.approx(expected, abs=1e-12), name


def test_entropy_on_torchvision_silu_model():
    model = build_model("torchvision/efficientnet_b0", num_classes=10, input_size=32)
    silus = [n for n, m in model.named_modules() if isinstance(m, nn.SiLU)]
    res = activation_entropy(model, torch.randn(4, 3, 32, 32))
    assert list(res.per_layer) == silus  # each SiLU module once; the squeeze-excitation sigmoids are not layers
    assert all(0.0 <= h <= 1.0 for h in res.per_layer.values())


# --------------------------------------------------------------------------- timm


def test_timm_models_by_name():
    timm = pytest.importorskip("timm")
    model = build_model("timm/resnet18", num_classes=4, in_channels=1, input_size=28, drop_rate="0.1")
    assert model.fc.out_features == 4 and model.conv1.in_channels == 1 and model.drop_rate == 0.1
    timm.create_model("resnet18", num_classes=4, in_chans=1).load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(UserError, match="pretrained weights are not loaded"):
        build_model("timm/resnet18", num_classes=4, pretrained=True)
    with pytest.raises(UserError, match=r"Did you mean 'timm/resnet18'\?"):
        build_model("timm/resnt18", num_classes=4)
    # a transformer gets the data's image size; its GELU layers are entropy layers
    vit = build_model("timm/vit_tiny_patch16_224", num_classes=10, input_size=32, depth="2")
    assert len(vit.blocks) == 2 and classifier_layers(vit) == ["head"] and first_conv(vit) == "patch_embed.proj"
    res = activation_entropy(vit, torch.randn(3, 3, 32, 32))
    assert list(res.per_layer) == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    # a distilled ViT has two classifier heads (timm's get_classifier)
    deit = build_model("timm/deit_tiny_distilled_patch16_224", num_classes=10, input_size=32, depth=1)
    assert classifier_layers(deit) == ["head", "head_dist"]
    assert {"head.weight", "head_dist.weight"} <= set(prunable_weights(deit)) - set(prunable_weights(deit, include_classifier=False))


def test_without_timm_the_family_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with MODELS.snapshot():
        assert "timm/resnet34" not in MODELS
        with pytest.raises(UserError, match=r"timm/<name> models need timm.*pip install 'dsd2\[timm\]'"):
            build_model("timm/resnet34", num_classes=10)
    assert "torchvision/resnet34" in MODELS


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    from dsd2 import imp
    from dsd2.data.testing import write_cifar

    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, n_per_train_file=24, n_test=20)  # 120 train images, 3×32×32
    cfg = load_config(
        None,
        [
            "name=zoo",
            "dataset.name=cifar10",
            f"dataset.root={root}",
            "dataset.val_size=20",
            "noise.rate=0.2",
            "model.name=torchvision/resnet18",
            "model.zero_init_residual=true",
            "train.epochs=1",
            "train.batch_size=50",
            "train.optimizer=adam",
            "train.lr=0.001",
            "train.device=cpu",
            "prune.rounds=1",
            "prune.rate=0.5",
            "prune.exclude_first_conv=true",
            "entropy.batch_size=100",
        ],
    )
    return cfg, imp.run(cfg, tmp_path_factory.mktemp("runs"))


def test_a_torchvision_model_end_to_end(zoo_run):
    from dsd2 import rundir

    cfg, run_dir = zoo_run
    rows = store.read_csv(run_dir / "rounds.csv")
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(r["train_pflops_dense"] > 0 for r in rows)
    layers = {r["layer"] for r in store.read_csv(run_dir / "entropy.csv")}
    assert {"relu", "layer1.0.relu", "layer1.0.relu#1", "layer4.1.relu#1"} <= layers and len(layers) == 17
    model, masks, saved = rundir.load_round_model(run_dir, 1)
    assert saved.model.name == "torchvision/resnet18" and type(model) is torchvision.models.ResNet
    assert "conv1.weight" not in masks and "fc.weight" in masks
    assert bool((model.conv1.weight != 0).all())  # the excluded stem stays dense
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(model.state_dict(), strict=True)
    assert float((plain.layer1[0].conv1.weight == 0).float().mean()) > 0.2


def test_models_command_lists_the_families_and_one_models_options(capsys):
    from dsd2.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "torchvision/<name>: any torchvision classifier" in out and "dsd2 models torchvision" in out and "timm/<name>" in out
    assert main(["models", "torchvision"]) == 0
    out = capsys.readouterr().out
    assert "torchvision/resnet50" in out and "torchvision/vit_b_16" in out
    assert main(["models", "torchvision/resnet18"]) == 0
    out = capsys.readouterr().out
    assert "torchvision.models.resnet18" in out and "model.zero_init_residual" in out and "model.weights" in out
    assert main(["models", "torchvision/resnt18"]) == 2
    assert "Did you mean 'torchvision/resnet18'?" in capsys.readouterr().err
