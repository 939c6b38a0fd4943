"""The run-directory contract in code: RoundRow is the rounds.csv row, old files still load."""

import dataclasses

import pytest

from dsd2 import rundir, store
from dsd2.errors import UserError
from dsd2.rundir import ROUND_COLUMNS, RoundRow

ROW = {
    "round": 1,
    "sparsity": 0.5,
    "alive_weights": 120,
    "epochs": 2,
    "train_loss": 0.6931471805599453,
    "train_acc_noisy": 0.75,
    "train_acc_clean": 0.7,
    "train_acc_flipped": 0.1,
    "flipped_acc_clean": 0.05,
    "unflipped_acc": 0.8,
    "val_acc": None,
    "test_acc": 1 / 3,
    "entropy": 0.78,
    "phase": "light",
    "round_pflops_dense": 1e-06,
    "round_pflops_sparse": 5e-07,
    "train_pflops_dense": 2e-06,
    "train_pflops_sparse": 1.5e-06,
    "round_pflops_paper": 7e-07,
    "train_pflops_paper": 1.4e-06,
}


def test_the_columns_are_the_fields_in_file_order():
    assert ROUND_COLUMNS == [f.name for f in dataclasses.fields(RoundRow)]
    # the best-epoch columns last, and only in runs that keep the best epoch (train.select_epoch=best_val)
    assert rundir.round_columns(False) == list(ROW)
    assert ROUND_COLUMNS == [*ROW, *rundir.BEST_COLUMNS, *rundir.CHANNEL_COLUMNS, *rundir.PROBE_COLUMNS]
    assert rundir.round_columns(False, True) == [*ROW, "channel_sparsity"]
    assert rundir.round_columns(False, False, True) == [*ROW, "train_acc_probe", "probe_acc_clean"]  # noise.probe only
    assert {"train_acc_probe", "probe_acc_clean"} <= rundir.FRACTION_COLUMNS
    assert {"sparsity", "val_acc", "test_acc", "train_acc_flipped"} <= rundir.FRACTION_COLUMNS
    assert "train_loss" not in rundir.FRACTION_COLUMNS and "round_pflops_dense" not in rundir.FRACTION_COLUMNS


def test_row_roundtrips_and_reads_like_a_mapping():
    row = RoundRow.from_dict({**ROW, "a_later_column": 3})  # unknown keys are ignored
    assert row.as_dict() == ROW and list(row.as_dict()) == rundir.round_columns(False)
    assert row["test_acc"] == row.test_acc and row.get("val_acc", 0) is None and row.get("nope") is None
    assert dict(row) == ROW and "phase" in row and "nope" not in row
    with pytest.raises(KeyError):
        row["nope"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.phase = "sweet"
    assert dataclasses.replace(row, phase="sweet").phase == "sweet"


def test_csv_stays_byte_identical(tmp_path):
    store.write_csv(tmp_path / "rounds.csv", [{**ROW, "round": 0}, {**ROW, "round": 1, "phase": None}], ROUND_COLUMNS)
    rundir.record_tables(tmp_path)
    before = (tmp_path / "rounds.csv").read_bytes()
    rows = rundir.read_rounds(tmp_path)
    assert [r.round for r in rows] == [0, 1] and rows[1].phase is None
    store.write_csv(tmp_path / "rounds.csv", [r.as_dict() for r in rows], ROUND_COLUMNS)
    assert (tmp_path / "rounds.csv").read_bytes() == before


def test_rows_written_before_a_column_existed_load_with_none(tmp_path):
    old = [c for c in ROUND_COLUMNS if c not in ("round_pflops_paper", "train_pflops_paper", "unflipped_acc")]
    store.write_csv(tmp_path / "rounds.csv", [{**ROW, "round": 0}], old)
    rundir.record_tables(tmp_path)
    (row,) = rundir.read_rounds(tmp_path)
    assert row.round_pflops_paper is None and row.train_pflops_paper is None and row.unflipped_acc is None
    assert row.test_acc == ROW["test_acc"]


def test_a_row_without_a_required_column_names_the_file(tmp_path):
    store.write_csv(tmp_path / "rounds.csv", [ROW], [c for c in ROUND_COLUMNS if c != "sparsity"])
    rundir.record_tables(tmp_path)
    with pytest.raises(UserError, match=r"rounds\.csv lacks the column\(s\) sparsity"):
        rundir.read_rounds(tmp_path)


def test_read_config_and_round_model_errors(tmp_path):
    with pytest.raises(UserError, match=r"not a dsd2 run directory \(no config.yaml\); give the folder"):
        rundir.read_config(tmp_path)
    with pytest.raises(UserError, match="distill.teacher must be"):
        rundir.read_config(tmp_path, hint="distill.teacher must be the run directory of a finished IMP run")
    with pytest.raises(UserError, match="not a dsd2 run directory"):
        rundir.load_round_model(tmp_path, 0)
    assert rundir.read_finished(tmp_path) == rundir.Finished()
