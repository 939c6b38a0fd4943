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
