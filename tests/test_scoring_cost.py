"""The gradient criteria's scoring passes are in a round's compute columns: prune.score_batches
batches forward and backward per pruning step (one per round; one per pruning epoch of gradual)."""

from __future__ import annotations

import pytest

from dsd2 import imp, store
from dsd2.config import load_config

BASE = ["train.threads=1", "train.epochs=2", "prune.rounds=2", "prune.allocation=global", "prune.score_batches=2"]


def _rows(tmp_path, *extra):
    cfg = load_config("tiny_mnist1d", [*BASE, *extra])
    n = imp.build_data(cfg).train_y.numel()
    return store.read_csv(imp.run(cfg, tmp_path) / "rounds.csv"), n, cfg


@pytest.mark.parametrize("criterion", ["magnitude_gradient", "snip"])
def test_scoring_adds_its_batches_as_training_steps(tmp_path, criterion):
    rows, n, cfg = _rows(tmp_path, f"prune.criterion={criterion}")
    per_example = rows[0]["round_pflops_dense"] / (cfg.train.epochs * n)  # round 0: training only, dense
    scored = cfg.prune.score_batches * cfg.train.batch_size
    for r in rows[1:]:
        assert r["round_pflops_dense"] == pytest.approx(per_example * (cfg.train.epochs * n + scored), rel=1e-9)
        assert r["round_pflops_paper"] == pytest.approx(rows[0]["round_pflops_paper"] * (1 + scored / (cfg.train.epochs * n)), rel=1e-9)


def test_magnitude_costs_nothing_extra(tmp_path):
    rows, _, _ = _rows(tmp_path, "prune.criterion=magnitude")
    assert {r["round_pflops_dense"] for r in rows} == {rows[0]["round_pflops_dense"]}


def test_gradual_with_a_gradient_criterion_scores_once_per_pruning_epoch(tmp_path):
    # a regression too: gradual pruning took the gradients under no_grad and failed
    rows, n, cfg = _rows(tmp_path, "prune.criterion=snip", "prune.schedule=gradual", "train.epochs=4")
    per_example = rows[0]["round_pflops_dense"] / (cfg.train.epochs * n)
    scored = 3 * cfg.prune.score_batches * cfg.train.batch_size  # the default window: epochs 0..2, each removes weights
    assert rows[1]["round_pflops_dense"] == pytest.approx(per_example * (cfg.train.epochs * n + scored), rel=1e-9)
    assert rows[-1]["sparsity"] == pytest.approx(0.75, abs=1e-3)
