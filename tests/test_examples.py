"""The examples in examples/ work as written."""

import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_custom_model_example(tmp_path, capsys, monkeypatch):
    from dsd2.models import MODELS

    monkeypatch.setattr(sys, "argv", ["custom_model.py", "--out", str(tmp_path), "--rounds", "1"])
    with MODELS.snapshot():  # the example registers a model: keep that registration out of the other tests
        runpy.run_path(str(EXAMPLES / "custom_model.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "round 0: sparsity 0.0%" in out and "round 1: sparsity 50.0%" in out
    from dsd2 import store

    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("custom_model-")]
    layers = {r["layer"] for r in store.read_csv(run_dir / "entropy.csv")}
    assert len(layers) == 3  # the stem ReLU and one per residual block
