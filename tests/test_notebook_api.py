"""The notebook API: dir(dsd2) lists it; an exported model predicts without rebuilding its input
preparation by hand; compare and report are functions too."""

from __future__ import annotations

import pytest
import torch

import dsd2
from dsd2.errors import UserError
from dsd2.inference import to_model_layout

from conftest import TINY

NAMES = ["run", "resume", "pipeline", "export", "load_exported", "exported_transform", "predict", "compare_runs", "write_report"]


def test_dir_shows_the_api():
    listed = dir(dsd2)
    assert all(n in listed for n in NAMES) and "__version__" in listed
    assert all(callable(getattr(dsd2, n)) for n in NAMES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    res = dsd2.run("tiny_mnist1d", TINY, out=tmp / "runs")
    exp = dsd2.export(res.run_dir, tmp / "model", round=2)
    return res, exp.dir


def test_predict_matches_the_model_on_prepared_inputs(exported):
    from dsd2.data import load_dataset

    res, model_dir = exported
    d = load_dataset("mnist1d", None, val_size=300, seed=res.config.seed)
    x = d.test_x[:50]
    model = dsd2.load_exported(model_dir)
    with torch.no_grad():
        expected = model(x).argmax(1)
    p = dsd2.predict(model_dir, x.numpy(), batch_size=16)  # numpy in, several batches
    assert torch.equal(p.labels, expected) and p.logits.shape == (50, 10)
    assert torch.allclose(p.probabilities.sum(1), torch.ones(50))
    assert torch.equal(dsd2.predict(model_dir, x[0], model=model).labels, expected[:1])  # one sample, a loaded model
    assert torch.equal(dsd2.exported_transform(model_dir)(x), x)  # MNIST-1D: mean 0, std 1


def test_the_transform_normalises_as_training_did(exported):
    _, model_dir = exported
    t = dsd2.exported_transform(model_dir, mean=[0.5], std=[0.25])
    x = torch.linspace(0, 1, 40)
    assert torch.allclose(t(x), ((x - 0.5) / 0.25).unsqueeze(0))
    with pytest.raises(UserError, match="do not fit the model's input 40"):
        t(torch.zeros(3, 41))


def test_layouts_images_come_in():
    shape = [3, 8, 8]
    assert to_model_layout(torch.zeros(3, 8, 8), shape).shape == (1, 3, 8, 8)
    assert to_model_layout(torch.zeros(5, 3, 8, 8), shape).shape == (5, 3, 8, 8)
    hwc = torch.arange(8 * 8 * 3).reshape(8, 8, 3)  # PIL / numpy order
    chw = to_model_layout(hwc, shape)
    assert chw.shape == (1, 3, 8, 8) and torch.equal(chw[0, 2], hwc[..., 2])
    assert to_model_layout(torch.zeros(4, 28, 28), [1, 28, 28]).shape == (4, 1, 28, 28)  # grey, no channel axis
    with pytest.raises(UserError, match="resized and cropped"):
        to_model_layout(torch.zeros(3, 16, 16), shape)


def test_a_list_of_images_of_different_sizes_says_so():
    """PIL images straight from a folder (numpy's "inhomogeneous shape" error before)."""
    import numpy as np

    from dsd2.inference import _as_tensor

    with pytest.raises(UserError, match=r"images of different sizes \(2 given\): resize and crop each"):
        _as_tensor([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)])


def test_compare_and_report_functions(exported, tmp_path):
    from dsd2 import compare

    res, _ = exported
    assert dsd2.compare_runs(res.run_dir) == compare.strategy_table(res.run_dir)
    with pytest.raises(UserError, match="0.03 for 3 points"):
        dsd2.compare_runs(res.run_dir, tolerance=3)
    page = dsd2.write_report(res.run_dir, tmp_path / "report")
    assert page.name == "index.html" and page.is_file()
