"""The built-in ViT (dsd2.models.vit): shapes, option checks, the pruning set, entropy of its
GELU blocks, FLOPs, the lr warm-up, an IMP run end to end and the CIFAR presets' cost estimate."""

from __future__ import annotations

import pytest
import torch
import yaml

from dsd2 import store
from dsd2.config import load_config
from dsd2.entropy import activation_entropy
from dsd2.errors import UserError
from dsd2.flops import step_flops
from dsd2.models import build_model, macs_per_example, prunable_weights
from dsd2.train import Schedule

SMALL = dict(patch_size=4, dim=16, depth=2, heads=2, mlp_ratio=2.0)


def _block_linears(depth: int) -> list[str]:
    return [f"blocks.{i}.{layer}.weight" for i in range(depth) for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_shapes_for_fmnist_and_cifar_inputs(shape, pool):
    model = build_model("vit", num_classes=7, in_channels=shape[0], input_size=shape[1], pool=pool, **SMALL)
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    tokens = (shape[1] // 4) ** 2 + (pool == "cls")
    assert model.pos_embed.shape == (1, tokens, 16)


def test_options_from_strings_and_clear_errors():
    model = build_model("vit", num_classes=10, input_size=32, patch_size="8", dim="32", depth="1", heads="4", pool="cls")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match=r"input_size=28 is not a multiple of patch_size=5; use one of 1, 2, 4, 7, 14, 28"):
        build_model("vit", num_classes=10, input_size=28, patch_size=5)
    with pytest.raises(UserError, match="dim=30 must be a multiple of heads=4"):
        build_model("vit", num_classes=10, dim=30, heads=4)
    with pytest.raises(UserError, match="pool=.*one of 'mean', 'cls'"):
        build_model("vit", num_classes=10, pool="max")
    with pytest.raises(UserError, match="depth must be a positive integer"):
        build_model("vit", num_classes=10, depth=0)


def test_prunable_set_is_the_attention_and_mlp_linears_plus_configurable_stem_and_head():
    model = build_model("vit", num_classes=10, input_size=32, **SMALL)
    everything = list(prunable_weights(model))
    assert everything == ["patch_embed.weight", *_block_linears(2), "head.weight"]
    blocks_only = prunable_weights(model, include_classifier=False, exclude_first_conv=True)
    assert list(blocks_only) == _block_linears(2)
    # embeddings, biases and LayerNorms are never pruned
    assert not any(k.startswith(("pos_embed", "norm")) or k.endswith("bias") for k in everything)


def test_entropy_has_one_gelu_layer_per_block_measured_on_a_batch():
    torch.manual_seed(0)
    model = build_model("vit", num_classes=10, in_channels=1, input_size=28, **SMALL)
    result = activation_entropy(model, torch.randn(64, 1, 28, 28), batch_size=32)
    assert list(result.per_layer) == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert all(n == 49 * 32 for n in result.neurons.values())  # tokens x hidden units
    # at initialisation GELU units are on for about half the inputs: entropy well above 0
    assert all(0.5 < h <= 1.0 for h in result.per_layer.values())


def test_flops_count_every_linear_and_attention_and_grow_with_depth():
    macs = [macs_per_example(build_model("vit", num_classes=10, input_size=32, **{**SMALL, "depth": d}), (3, 32, 32)) for d in (1, 2, 4)]
    assert 0 < macs[0] < macs[1] < macs[2]
    assert macs[2] - macs[1] == 2 * (macs[1] - macs[0])  # each block costs the same
    model = build_model("vit", num_classes=10, input_size=32, **SMALL)
    step = step_flops(model, torch.randn(2, 3, 32, 32))
    assert set(step.layers) == {k.removesuffix(".weight") for k in prunable_weights(model)}
    n, d = 64, 16  # tokens, width: qkv is a Linear over every token
    assert step.layers["blocks.0.attn.qkv"].fwd == 2 * 2 * n * d * 3 * d
    # the attention products (QK^T, AV) are counted as non-prunable FLOPs
    assert step.dense_fwd - sum(layer.fwd for layer in step.layers.values()) >= 2 * 2 * 2 * (2 * n * n * d)


def test_linear_warmup_then_the_schedule():
    s = Schedule(epochs=10, lr=1.0, kind="cosine", warmup_epochs=4)
    lrs = [s.lr_at(e) for e in range(10)]
    assert lrs[:4] == pytest.approx([0.25 * (e + 1) * Schedule(epochs=10, lr=1.0, kind="cosine").lr_at(e) for e in range(4)])
    assert lrs[4:] == [Schedule(epochs=10, lr=1.0, kind="cosine").lr_at(e) for e in range(4, 10)]
    assert Schedule(epochs=10, lr=1.0, kind="constant", warmup_epochs=2).lr_at(0) == 0.5


def test_warmup_default_keeps_run_ids_and_too_long_a_warmup_is_refused():
    assert load_config("demo_fmnist", ["train.warmup_epochs=0"]).run_id() == load_config("demo_fmnist").run_id()
    assert load_config("demo_fmnist", ["train.warmup_epochs=3"]).run_id() != load_config("demo_fmnist").run_id()
    with pytest.raises(UserError, match="warmup_epochs=60 must be smaller than epochs=60"):
        load_config("demo_fmnist", ["train.warmup_epochs=60"])


def test_vit_presets_validate():
    for name in ("cifar10_vit_tiny_noise20", "cifar100_vit_small_noise20", "fmnist_vit_tiny"):
        cfg = load_config(name)
        assert cfg.model.name == "vit" and cfg.train.optimizer == "adamw" and cfg.train.warmup_epochs > 0
        assert not cfg.prune.include_classifier and cfg.prune.exclude_first_conv


# --------------------------------------------------------------------------- end to end


def test_an_imp_run_with_phase_labels_and_stop_rules(tmp_path):
    from dsd2 import imp, rundir
    from dsd2.compare import decide, load_rows
    from dsd2.data.testing import write_cifar

    write_cifar(tmp_path / "cifar", n_per_train_file=24, n_test=20)  # 120 train images, 3×32×32
    cfg = load_config(
        "cifar10_vit_tiny_noise20",
        [
            f"dataset.root={tmp_path / 'cifar'}",
            "dataset.val_size=20",
            "model.dim=16",
            "model.depth=1",
            "model.heads=2",
            "model.patch_size=8",
            "train.epochs=2",
            "train.warmup_epochs=1",
            "train.batch_size=50",
            "train.device=cpu",
            "prune.rounds=2",
            "prune.rate=0.5",
            "entropy.batch_size=100",
        ],
    )
    run_dir = imp.run(cfg, tmp_path / "runs")
    rows = store.read_csv(run_dir / "rounds.csv")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[2]["sparsity"] == pytest.approx(0.75, abs=2e-3)  # of the pruned set: the blocks' Linears
    model, masks, _ = rundir.load_round_model(run_dir, 2)
    assert sorted(masks) == sorted(_block_linears(1))
    assert bool((model.patch_embed.weight != 0).all()) and bool((model.head.weight != 0).all())
    assert float((model.blocks[0].attn.qkv.weight == 0).float().mean()) > 0.5
    assert all(r["train_pflops_dense"] > 0 and r["phase"] for r in rows)
    layers = {r["layer"] for r in store.read_csv(run_dir / "entropy.csv")}
    assert layers == {"blocks.0.mlp.act"}
    decision = decide(load_rows(run_dir), "entropy")
    assert decision is not None and 0 <= decision.selected_round <= 2


def test_sweep_dry_run_estimates_the_cifar_presets(tmp_path, capsys):
    from dsd2.cli import main

    # 35 rounds x 200 epochs x 45,000 examples at 25 TFLOP/s (docs/results.md, "Vision Transformers")
    expected = {"cifar10_vit_tiny_noise20": ("2.154", "679", "7.54"), "cifar100_vit_small_noise20": ("8.385", "2,641", "29.3")}
    for preset, (gflop, pflops, hours) in expected.items():
        path = tmp_path / f"{preset}.yaml"
        path.write_text(yaml.safe_dump({"name": preset, "base": preset, "grid": {"seed": [0]}}))
        assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith("seed-0"))  # names folded: <preset>_<cell>
        assert row.split()[-5:] == ["7000", "45000", gflop, pflops, hours]  # epochs, examples, GFLOP/ex-step, PFLOPs, GPU-h
