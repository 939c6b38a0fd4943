"""train.select_epoch=best_val: the best-validation epoch of every round kept beside the last one
(issue: model selection per epoch). Checked against an independent evaluation of the saved
weights, against the training of a last-epoch run (unchanged), and across a mid-round kill."""

from __future__ import annotations

import pytest
import torch

from dsd2 import imp, rundir, store
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.train import accuracy, predict

from conftest import Interrupted

TINY = ["train.epochs=4", "prune.rounds=2", "train.threads=1", "train.checkpoint_interval_s=0"]


def _cfg(*extra: str):
    return load_config("tiny_mnist1d", [*TINY, *extra])


def _val_accuracy(run_dir, state_file: str, r: int) -> float:
    """Validation accuracy of a saved state, evaluated here (not by the run)."""
    cfg = rundir.read_config(run_dir)
    data = imp.build_data(cfg)
    model = imp.make_model(cfg, data, 0)
    model.load_state_dict(store.load_tensors(rundir.round_dir(run_dir, r) / state_file))
    ctx_source = imp.make_source(data.val_x, data.val_y, mean=data.mean, std=data.std, device=torch.device("cpu"))
    acc = accuracy(predict(model, ctx_source, batch_size=1000).cpu(), data.val_y)
    assert acc is not None
    return acc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("select")
    seen: dict[int, list[tuple[int, float]]] = {}
    original = imp.BestEpoch.epoch_end

    def recording(self, log, model):
        original(self, log, model)
        acc = accuracy(imp.predict_classes(self.ctx, self.val), self.ctx.data.val_y)
        seen.setdefault(self.round_idx, []).append((log.epoch, acc))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imp.BestEpoch, "epoch_end", recording)
        best = imp.run(_cfg("train.select_epoch=best_val"), out)
    last = imp.run(_cfg(), out)
    return best, last, seen


def test_the_best_epoch_is_the_first_argmax_of_the_epochs_validation_accuracy(runs):
    best, _, seen = runs
    rows = store.read_csv(best / "rounds.csv")
    assert [c for c in rundir.BEST_COLUMNS if c in rows[0]] == list(rundir.BEST_COLUMNS)
    for row in rows:
        r = int(row["round"])
        accs = [a for _, a in seen[r]]
        top = max(accs)
        assert int(row["best_epoch"]) == seen[r][accs.index(top)][0]
        assert float(row["best_val_acc"]) == top and float(row["best_val_acc"]) >= float(row["val_acc"])
        # the saved weights are the best epoch's and the last epoch's, by an evaluation made here
        assert _val_accuracy(best, rundir.BEST_STATE, r) == pytest.approx(top, abs=0)
        assert _val_accuracy(best, "state.safetensors", r) == pytest.approx(float(row["val_acc"]), abs=0)
        assert store.verify_manifest(rundir.round_dir(best, r), [*rundir.ROUND_FILES, rundir.BEST_STATE])
    assert any(int(row["best_epoch"]) < 4 for row in rows), "every round peaked at its last epoch: the test shows nothing"


def test_keeping_the_best_epoch_changes_no_number_of_the_run(runs):
    best, last, _ = runs
    assert best.name != last.name  # select_epoch is in the run id: a last-epoch run has no per-epoch record
    a, b = store.read_csv(best / "rounds.csv"), store.read_csv(last / "rounds.csv")
    assert [{k: v for k, v in r.items() if k not in rundir.BEST_COLUMNS} for r in a] == b
    assert not any(c in b[0] for c in rundir.BEST_COLUMNS)  # the default run's rounds.csv is as before
    assert not (rundir.round_dir(last, 1) / rundir.BEST_STATE).exists()
    for r in range(3):
        a = store.load_tensors(rundir.round_dir(best, r) / "state.safetensors")
        b = store.load_tensors(rundir.round_dir(last, r) / "state.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_round_killed_mid_way_keeps_its_best_epoch(runs, tmp_path):
    best, _, _ = runs
    cfg = _cfg("train.select_epoch=best_val")

    def stop(round_idx, epochs, log):
        if round_idx == 1 and log.epoch == 3:  # after epoch 2's checkpoint, before epoch 3's
            raise Interrupted

    with pytest.raises(Interrupted):
        imp.run(cfg, tmp_path, progress=stop)
    run_dir = tmp_path / cfg.run_id()
    assert checkpoint_exists(run_dir, 1)
    imp.run(cfg, tmp_path)
    assert store.read_csv(run_dir / "rounds.csv") == store.read_csv(best / "rounds.csv")
    for r in range(3):
        a = store.load_tensors(rundir.round_dir(run_dir, r) / rundir.BEST_STATE)
        b = store.load_tensors(rundir.round_dir(best, r) / rundir.BEST_STATE)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_exists(run_dir, r: int) -> bool:
    from dsd2 import checkpoint

    return checkpoint.partial_path(run_dir, r).exists()


def test_best_val_needs_a_validation_split():
    with pytest.raises(UserError, match="best_val picks epochs on the validation split"):
        load_config("tiny_mnist1d", ["train.select_epoch=best_val", "dataset.val_size=0"])


def test_the_best_epoch_exports_and_a_last_epoch_run_refuses(runs, tmp_path):
    from dsd2 import exporting

    best, last, _ = runs
    res = exporting.export_run(best, tmp_path / "e", round=1, epoch="best_val")
    row = store.read_csv(best / "rounds.csv")[1]
    assert res.info["epoch"] == {"best_val": int(row["best_epoch"])}
    model = exporting.load_exported(tmp_path / "e")
    exported = {k: v for k, v in model.state_dict().items()}
    saved = store.load_tensors(rundir.round_dir(best, 1) / rundir.BEST_STATE)
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    with pytest.raises(UserError, match="--epoch best_val needs a run with train.select_epoch=best_val"):
        exporting.export_run(last, tmp_path / "f", round=1, epoch="best_val")
