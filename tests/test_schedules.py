"""Pruning schedules (prune.schedule): one_shot prunes round 0's dense model straight to each
round's target; the rounds contract (rounds.csv, resume, phases, compare) is unchanged."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dsd2 import imp, store
from dsd2.cli import app
from dsd2.compare import decide, load_rows
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.models import prunable_weights
from dsd2.prune import full_masks, next_masks
from dsd2.rundir import load_state, round_columns

from conftest import run_interrupted, tiny_config

ONE_SHOT = ("prune.schedule=one_shot", "prune.rounds=3")


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    cfg = tiny_config(*ONE_SHOT)
    return cfg, imp.run(cfg, tmp_path_factory.mktemp("one_shot"))


def test_default_schedule_keeps_run_ids():
    assert RunConfig().prune.schedule == "iterative"
    assert tiny_config().run_id() == tiny_config("prune.schedule=iterative").run_id()
    assert tiny_config().run_id() != tiny_config("prune.schedule=one_shot").run_id()


def test_targets_are_checked():
    with pytest.raises(UserError, match="one_shot"):
        tiny_config("prune.targets=[0.5]")
    with pytest.raises(UserError, match=r"\(0, 1\)"):
        tiny_config("prune.schedule=one_shot", "prune.targets=[1.0]")
    with pytest.raises(UserError, match="pruning schedule"):
        tiny_config("prune.schedule=oneshot_typo")


def test_one_shot_masks_hit_the_target_from_round_0s_weights(one_shot):
    cfg, run_dir = one_shot
    dense = store.load_tensors(store.round_dir(run_dir, 0) / "state.safetensors")
    model = imp.make_model(cfg, imp.build_data(cfg), 0)
    load_state(model, dense, "round 0")
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    for i in (1, 2, 3):
        masks = store.load_tensors(store.round_dir(run_dir, i) / "masks.safetensors")
        target = 1 - (1 - cfg.prune.rate) ** i
        alive = sum(int(m.sum()) for m in masks.values())
        assert abs((total - alive) - round(target * total)) <= len(masks)  # ±1 weight per layer
        expected = next_masks(cfg.prune.method, weights, full_masks(weights), target, None)
        assert all(torch.equal(masks[k], expected[k].to(masks[k].dtype)) for k in masks)


def test_one_shot_explicit_targets(tmp_path):
    cfg = tiny_config("prune.schedule=one_shot", "prune.targets=[0.3, 0.9]", "prune.rounds=2")
    rows = load_rows(imp.run(cfg, tmp_path))
    assert [round(r["sparsity"], 2) for r in rows] == [0.0, 0.3, 0.9]


def test_one_shot_rounds_csv_resume_show_and_decide(one_shot, tmp_path):
    cfg, ref_dir = one_shot
    header = (ref_dir / "rounds.csv").read_text().splitlines()[0].split(",")
    assert header == round_columns(False)

    run_dir = run_interrupted(cfg, tmp_path)
    imp.resume(run_dir)
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()

    rows = load_rows(run_dir)
    assert len(rows) == 4 and all(r["phase"] for r in rows)
    decide(rows, "plain", tolerance=0.0, patience=1)
    result = CliRunner().invoke(app, ["show", str(run_dir)])
    assert result.exit_code == 0, result.output


def test_gmp_sparsity_is_zhu_gupta_cubic():
    assert imp.gmp_sparsity(0.8, 0, 1, 4) == 0.0  # before t0
    assert imp.gmp_sparsity(0.8, 4, 1, 4) == pytest.approx(0.8)  # the target at the window's end
    assert imp.gmp_sparsity(0.8, 9, 1, 4) == pytest.approx(0.8)
    assert imp.gmp_sparsity(0.8, 2, 1, 4) == pytest.approx(0.8 * (1 - (1 - 2 / 4) ** 3))


def test_gradual_follows_the_cubic_schedule_and_ends_at_the_target(tmp_path):
    cfg = tiny_config("prune.schedule=gradual", "train.epochs=4", "prune.rounds=2")
    seen: list[tuple[int, float]] = []
    real = imp.modes.gradual_step

    def spy(ctx, masks, round_idx, epoch, epochs):
        real(ctx, masks, round_idx, epoch, epochs)
        total = sum(m.numel() for m in masks.values())
        seen.append((round_idx, 1 - sum(int(m.sum()) for m in masks.values()) / total))

    imp.modes.gradual_step = spy  # the loop calls it through its module
    try:
        run_dir = imp.run(cfg, tmp_path)
    finally:
        imp.modes.gradual_step = real
    total = sum(m.numel() for m in store.load_tensors(store.round_dir(run_dir, 1) / "masks.safetensors").values())
    for i in (1, 2):
        target = 1 - (1 - cfg.prune.rate) ** i
        got = [s for r, s in seen if r == i]
        # default window: epochs 0..2 prune, the last epoch trains at the target (Zhu & Gupta)
        want = [imp.gmp_sparsity(target, e, 0, 2) for e in range(4)]
        assert got == pytest.approx(want, abs=1.5 / total) and got[-1] == got[-2]
    rows = load_rows(run_dir)
    assert [r["sparsity"] for r in rows] == pytest.approx([0.0, 0.5, 0.75], abs=1.5 / total)
    decide(rows, "plain")
    assert CliRunner().invoke(app, ["show", str(run_dir)]).exit_code == 0


def test_gradual_window_leaves_training_after_the_last_pruning_step_by_default():
    from dsd2.imp.modes import gradual_window

    window = {e: gradual_window(tiny_config("prune.schedule=gradual"), e) for e in (1, 2, 4, 8, 60, 160)}
    assert window == {1: (0, 0), 2: (0, 0), 4: (0, 2), 8: (0, 5), 60: (0, 44), 160: (0, 119)}
    # an explicit end is kept (the old default, the last epoch, included) and a late start is clipped to it
    assert gradual_window(tiny_config("prune.schedule=gradual", "prune.gradual_end=59"), 60) == (0, 59)
    assert gradual_window(tiny_config("prune.schedule=gradual", "prune.gradual_start=50"), 60) == (44, 44)


def test_gradual_needs_lr_rewind():
    with pytest.raises(UserError, match="gradual"):
        tiny_config("prune.schedule=gradual", "prune.retrain=finetune")


def test_gradual_resume_after_interruption_gives_identical_rounds(tmp_path):
    cfg = tiny_config("prune.schedule=gradual", "train.epochs=2")
    ref = imp.run(cfg, tmp_path / "ref")

    run_dir = imp.resume(run_interrupted(cfg, tmp_path / "cut"))
    assert (run_dir / "rounds.csv").read_bytes() == (ref / "rounds.csv").read_bytes()


def test_gradual_with_a_channel_allocation_removes_whole_rows(tmp_path):
    cfg = tiny_config("prune.schedule=gradual", "train.epochs=4", "prune.rounds=2", "prune.criterion=magnitude", "prune.allocation=channel")
    cfg = cfg.model_copy(update={"prune": cfg.prune.model_copy(update={"include_classifier": False})})
    run_dir = imp.run(cfg, tmp_path)
    rows = store.read_csv(run_dir / "rounds.csv")
    for r in (1, 2):
        masks = store.load_tensors(store.round_dir(run_dir, r) / "masks.safetensors")
        for m in masks.values():  # every row all kept or all removed
            assert bool(((m.flatten(1).all(1)) | (~m.flatten(1).any(1))).all())
        removed = sum(int((~m.flatten(1).any(1)).sum()) for m in masks.values())
        assert rows[r]["channel_sparsity"] == pytest.approx(removed / sum(m.shape[0] for m in masks.values()), abs=1e-12)
        # channel granularity: the target 1-(1-rate)^r is met to within one row of the widest layer
        assert rows[r]["sparsity"] == pytest.approx(1 - (1 - cfg.prune.rate) ** r, abs=0.02)
