"""dsd2 export: folded weights, model.json, compressed and ONNX round trips, and refusals."""

import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dsd2 import compare, rundir, store
from dsd2.cli import main
from dsd2.exporting import compress, decompress, fold_masks, load_exported, read_info
from dsd2.imp import run
from dsd2.models import build_model

from conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run: rounds 0..2, 75% sparse at round 2."""
    return run(tiny_config(), tmp_path_factory.mktemp("export"))


def _export(run_dir, out, *args):
    return main(["export", str(run_dir), "-o", str(out), *args])


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) <= 3  # one message (the console wraps long lines)


def test_export_loads_back_with_the_rounds_logits_and_folded_zeros(tiny_run, tmp_path, capsys):
    out = tmp_path / "model"
    assert _export(tiny_run, out, "--round", "2") == 0
    text = capsys.readouterr().out
    assert "export: " in text and text.startswith("round 2 (given with --round), sparsity ")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    ref, masks, cfg = rundir.load_round_model(tiny_run, 2)
    model = load_exported(out)
    assert not model.training
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))
    state = load_file(out / "model.safetensors")
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0)
    info = read_info(out)
    row = rundir.read_finished(tiny_run).rows[2]
    assert info["round"] == 2 and info["selected_by"] == "round"
    assert info["model"] == {"name": "mlp", "options": {"hidden": [16, 16]}}
    assert (info["num_classes"], info["input_shape"], info["mean"], info["std"]) == (10, [40], [0.0], [1.0])
    assert info["sparsity"] == pytest.approx(row.sparsity) and info["accuracy"]["test_acc"] == row.test_acc
    assert set(info["layer_sparsity"]) == set(masks)
    manifest = rundir.round_dir(tiny_run, 2) / rundir.MANIFEST
    assert info["source"]["round"]["manifest_sha256"] == store.sha256_file(manifest)
    # the plain architecture takes the file as it is
    plain = build_model("mlp", num_classes=10, in_channels=1, input_size=40, hidden=(16, 16))
    plain.load_state_dict(state, strict=True)


def test_best_and_last_good_use_the_projects_selection(tiny_run, tmp_path, capsys):
    rows = rundir.read_finished(tiny_run).rows
    assert _export(tiny_run, tmp_path / "best") == 0
    assert read_info(tmp_path / "best")["round"] == compare.best_round(rows)
    assert read_info(tmp_path / "best")["selected_on"] == "val_acc"
    assert _export(tiny_run, tmp_path / "lg", "--round", "last_good") == 0
    decision = compare.decide(rows, "plain", select="last_good")
    info = read_info(tmp_path / "lg")
    assert info["round"] == decision.selected_round and info["stop_rule"]["rule"] == "plain"


def test_compressed_is_smaller_and_round_trips_exactly(tiny_run, tmp_path, capsys):
    assert _export(tiny_run, tmp_path / "dense", "--round", "2") == 0
    assert _export(tiny_run, tmp_path / "small", "--round", "2", "--compressed") == 0
    out = capsys.readouterr().out
    assert "compressed vs" in out and "dense" in out
    dense_file = (tmp_path / "dense" / "model.safetensors").stat().st_size
    small_file = (tmp_path / "small" / "model.safetensors").stat().st_size
    assert small_file < dense_file / 1.5
    info = read_info(tmp_path / "small")
    assert info["weights_format"] == "sparse-values" and info["dense_bytes"] == dense_file
    dense, small = load_exported(tmp_path / "dense"), load_exported(tmp_path / "small")
    for (k, a), (k2, b) in zip(dense.state_dict().items(), small.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_compress_keeps_kept_zeros_and_odd_sizes():
    w = torch.tensor([[0.0, 2.0, -3.0], [4.0, 0.5, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[True, True, False], [False, True, False], [False, False, True]])  # 9 bits: not a byte multiple
    very = torch.zeros(1000, dtype=torch.bool)
    very[[3, 500, 999]] = True  # 0.3% dense: 3 int32 indices (12 bytes) beat a 125-byte bitmask
    state = fold_masks({"w": w, "b": torch.ones(3), "v": torch.randn(1000)}, {"w": mask, "v": very})
    tensors, shapes = compress(state, {"w": mask, "v": very})
    assert tensors["w#values"].tolist() == [0.0, 2.0, 0.5, 9.0] and tensors["w#bitmask"].numel() == 2
    assert tensors["v#indices"].tolist() == [3, 500, 999] and "v#bitmask" not in tensors
    back = decompress(tensors, shapes)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")), reason="needs the export extra"
)
def test_onnx_matches_pytorch(tiny_run, tmp_path, capsys):
    import onnxruntime

    out = tmp_path / "onnx"
    assert _export(tiny_run, out, "--round", "1", "--onnx") == 0
    assert "max abs difference" in capsys.readouterr().out
    info = read_info(out)
    assert info["onnx"]["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 40)  # another batch size than the exporter's example: the batch axis is dynamic
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = load_exported(out)(x).numpy()
    assert abs(got - want).max() <= 1e-4


def test_torchvision_state_dict_loads_into_the_plain_constructor():
    torchvision = pytest.importorskip("torchvision")
    model = build_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    masks = {n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters() if p.dim() > 1}
    state = fold_masks(model.state_dict(), masks)
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--round", "7"], "round 7"),
        (["--round", "soon"], "best, last_good"),
    ],
)
def test_bad_round_exits_2(tiny_run, tmp_path, capsys, args, needle):
    assert _export(tiny_run, tmp_path / "x", *args) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "x").exists()


def test_unfinished_and_tampered_runs_are_refused(tiny_run, tmp_path, capsys):
    part = tmp_path / "partial"
    shutil.copytree(tiny_run, part)
    (rundir.round_dir(part, 2) / rundir.MANIFEST).unlink()  # round 2 never finished
    assert _export(part, tmp_path / "a", "--round", "2") == 2
    _one_line_error(capsys, "round 2")
    assert _export(part, tmp_path / "a") == 2  # best needs the whole curve
    _one_line_error(capsys, "whole curve")
    assert _export(part, tmp_path / "a", "--round", "1") == 0  # a finished round of it is fine
    capsys.readouterr()

    bad = tmp_path / "tampered"
    shutil.copytree(tiny_run, bad)
    state = rundir.round_dir(bad, 1) / "state.safetensors"
    raw = bytearray(state.read_bytes())
    raw[-1] ^= 1
    state.write_bytes(bytes(raw))
    assert _export(bad, tmp_path / "b", "--round", "0") == 2
    _one_line_error(capsys, "checksum")
    assert not (tmp_path / "b").exists()

    edited = tmp_path / "edited"
    shutil.copytree(tiny_run, edited)
    cfg = edited / "config.yaml"
    cfg.write_text(cfg.read_text().replace("- 16\n", "- 17\n", 1))
    assert _export(edited, tmp_path / "c", "--round", "0") == 2
    _one_line_error(capsys, "edited after the run started")


def test_output_folder_rules(tiny_run, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()  # an empty folder is fine
    assert _export(tiny_run, out, "--round", "0") == 0
    before = (out / "model.json").read_bytes()
    assert _export(tiny_run, out, "--round", "1") == 2
    _one_line_error(capsys, "--force")
    assert (out / "model.json").read_bytes() == before
    assert _export(tiny_run, out, "--round", "1", "--force") == 0
    assert read_info(out)["round"] == 1
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert _export(tiny_run, other, "--force") == 2  # --force replaces only an earlier export
    _one_line_error(capsys, "not a dsd2 export")
    assert (other / "todo.txt").read_text() == "mine"
    assert _export(tiny_run, tiny_run / "model") == 2
    _one_line_error(capsys, "overlaps the run directory")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_edited_export_is_refused(tiny_run, tmp_path):
    out = tmp_path / "model"
    assert _export(tiny_run, out, "--round", "0") == 0
    info = json.loads((out / "model.json").read_text())
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (out / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(Exception, match="checksum"):
        load_exported(out)
    assert info["files"]["model.safetensors"]["sha256"] != store.sha256_file(out / "model.safetensors")


def test_load_exported_imports_the_plugins(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "model"
    assert _export(tiny_run, out, "--round", "0") == 0
    info = json.loads((out / "model.json").read_text())
    (tmp_path / "dsd2_test_plugin_export.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (out / "model.json").write_text(json.dumps({**info, "plugins": ["dsd2_test_plugin_export"]}))
    load_exported(out)  # mlp is registered already: nothing needs importing, so nothing is
    import sys

    assert "dsd2_test_plugin_export" not in sys.modules
    load_exported(out, allow_plugins=True)
    assert sys.modules["dsd2_test_plugin_export"].LOADED
    (out / "model.json").write_text(json.dumps({**info, "plugins": ["dsd2_no_such_plugin"]}))
    with pytest.raises(Exception, match="dsd2_no_such_plugin"):
        load_exported(out, allow_plugins=True)


@pytest.mark.slow
def test_a_torchvision_run_exports_into_the_plain_constructor(tmp_path, capsys):
    """End to end: ResNet-18 (torchvision's, ImageNet stem) on a tiny CIFAR-10, pruned once."""
    torchvision = pytest.importorskip("torchvision")
    from dsd2.config import validate_config
    from dsd2.data.testing import write_cifar

    write_cifar(tmp_path / "data", "cifar10", n_per_train_file=8, n_test=8)
    cfg = validate_config(
        {
            "name": "tv",
            "dataset": {"name": "cifar10", "root": str(tmp_path / "data"), "val_size": 8, "augment": False},
            "noise": {"kind": "none"},
            "model": {"name": "resnet18"},
            "train": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 0.001, "device": "cpu"},
            "prune": {"rounds": 1, "rate": 0.5},
            "entropy": {"enabled": False},
        }
    )
    run_dir = run(cfg, tmp_path / "runs")
    assert _export(run_dir, tmp_path / "model", "--round", "1") == 0
    plain = torchvision.models.resnet18(num_classes=10).eval()
    plain.load_state_dict(load_file(tmp_path / "model" / "model.safetensors"), strict=True)
    info = read_info(tmp_path / "model")
    assert info["input_shape"] == [3, 32, 32] and len(info["mean"]) == 3 and info["sparsity"] == pytest.approx(0.5, abs=1e-3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), load_exported(tmp_path / "model")(x))
