"""Defaults of the pruning set per model (dsd2.layer_defaults): the built-in ViT prunes only its
attention and MLP Linears unless the config says otherwise."""

import pytest

from dsd2.config import PRESET_DIR, load_config, read_yaml, validate_config
from dsd2.models import build_model, prunable_weights

from conftest import tiny_config

VIT = "model={name: vit, patch_size: 10, dim: 8, depth: 1, heads: 2}"


def _pruned(cfg) -> list[str]:
    model = build_model("vit", num_classes=10, in_channels=1, input_size=20, **cfg.model.options)
    p = cfg.prune
    return sorted(prunable_weights(model, include_classifier=p.include_classifier, exclude_first_conv=p.exclude_first_conv))


def test_vit_prunes_only_attention_and_mlp_linears_by_default():
    cfg = tiny_config(VIT)
    assert (cfg.prune.exclude_first_conv, cfg.prune.include_classifier) == (True, False)
    assert _pruned(cfg) == sorted(f"blocks.0.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    # config.yaml records the value used: a resumed run keeps its pruning set
    assert cfg.resolved()["prune"]["exclude_first_conv"] is True


def test_an_explicit_value_wins_and_gives_the_old_run_id():
    explicit = tiny_config(VIT, "prune.exclude_first_conv=false", "prune.include_classifier=true")
    assert "patch_embed.weight" in _pruned(explicit) and "head.weight" in _pruned(explicit)
    # equal to the global defaults, which are not hashed: the id (and masks) a vit config had before
    assert explicit.run_id() != tiny_config(VIT).run_id()
    assert tiny_config(VIT, "prune.exclude_first_conv=false").prune.include_classifier is False
    assert tiny_config().prune.exclude_first_conv is False  # other models: the global defaults


@pytest.mark.parametrize("preset", ["cifar10_vit_tiny_noise20", "cifar100_vit_small_noise20", "fmnist_vit_tiny"])
def test_vit_presets_keep_their_run_ids(preset):
    data = read_yaml(PRESET_DIR / f"{preset}.yaml")
    for key in ("exclude_first_conv", "include_classifier"):
        data["prune"].pop(key)
    assert validate_config(data, source=preset).run_id() == load_config(preset).run_id()


# ----------------------------------------------------------------------------- SNIP's BatchNorm: running or batch statistics


def _bn_net(bn: bool = True):
    import torch
    from torch import nn

    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(12)] if bn else []
    return nn.Sequential(nn.Linear(6, 12), *norm, nn.ReLU(), nn.Linear(12, 3))


def _batches():
    import torch

    g = torch.Generator().manual_seed(1)
    return [(3 * torch.randn(16, 6, generator=g) + 1, torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]


def _snip(net, batchnorm: str):
    from dsd2.prune import GradientSource, ScoreInputs, full_masks, snip_scores

    w = prunable_weights(net)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    src = GradientSource(net, w, _batches, init_state=lambda: init, batchnorm=batchnorm)
    return snip_scores(w, ScoreInputs(full_masks(w), gradients=src))


def test_snip_with_batch_statistics_is_the_training_mode_gradient_and_leaves_the_model_alone():
    import torch
    from torch import nn

    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    running, batch = _snip(net, "running"), _snip(net, "batch")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # running stats put back
    assert net.training  # the mode it had
    # batch: the gradient of a training-mode forward (BatchNorm on the batch's statistics)
    ref = _bn_net()
    ref.train()
    grads = [torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), [ref[0].weight])[0] for x, y in _batches()]
    assert torch.allclose(batch["0.weight"], (ref[0].weight * (grads[0] + grads[1]) / 2).abs().detach(), atol=1e-6)
    assert not torch.allclose(running["0.weight"], batch["0.weight"])  # the two variants differ here
    # without BatchNorm the option changes nothing
    plain = [_snip(_bn_net(bn=False), mode) for mode in ("running", "batch")]
    assert all(torch.equal(plain[0][k], plain[1][k]) for k in plain[0])


def test_score_batchnorm_in_the_config():
    assert tiny_config().prune.score_batchnorm == "running"
    cfg = tiny_config("prune.criterion=snip", "prune.score_batchnorm=batch")
    assert cfg.run_id() != tiny_config("prune.criterion=snip").run_id()
    with pytest.raises(Exception, match="score_batchnorm"):
        tiny_config("prune.score_batchnorm=train")
