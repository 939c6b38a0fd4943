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


def test_own_model_own_images_example(tmp_path, capsys, monkeypatch):
    """The worked example end to end at a tiny size: PNG folder → teacher and DSD² student of a
    plugin model → export → load_exported and onnxruntime predict the PNGs as the run measured."""
    import pytest

    from dsd2.data import load_dataset
    from dsd2.errors import UserError
    from dsd2.models import MODELS

    try:
        load_dataset("fashion_mnist", "./data", val_size=0)
    except UserError as err:
        pytest.skip(f"Fashion-MNIST not installed (make data): {err}")
    out = tmp_path / "ex"
    argv = ["own_model_own_images.py", "--out", str(out), "--train", "700", "--test", "150", "--rounds", "1", "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with MODELS.snapshot():  # the example's plugin registers my_cnn: keep it out of the other tests
        try:
            runpy.run_path(str(EXAMPLES / "own_model_own_images.py"), run_name="__main__")
        finally:
            sys.modules.pop("my_dsd2_plugin", None)
    text = capsys.readouterr().out
    assert "1. wrote 700 training and 150 test PNGs" in text
    from dsd2 import store

    exported = store.read_json(out / "export" / "model.json")
    assert exported["plugins"] == ["my_dsd2_plugin"]
    # predicting the PNG files reproduces the test accuracy the run recorded for that round
    assert f"load_exported: test accuracy {exported['accuracy']['test_acc']:.1%} on 150 PNG files" in text
    if "onnxruntime:" in text:
        assert "agrees with PyTorch on 100.0%" in text
