"""The Python API: dsd2.run / resume / pipeline / export / load_exported return typed results."""

import subprocess
import sys

import pytest
import torch

import dsd2
from dsd2.errors import UserError

from conftest import TINY, tiny_config


def test_import_dsd2_stays_cheap():
    code = "import sys, dsd2; assert dsd2.__version__; assert 'torch' not in sys.modules, 'import dsd2 imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_resume_export_load(tmp_path):
    res = dsd2.run("tiny_mnist1d", TINY, out=tmp_path / "runs")
    assert isinstance(res, dsd2.RunResult) and res.complete
    assert [r.round for r in res.rows] == [0, 1, 2] and res.run_dir.parent == tmp_path / "runs"
    assert res.config == tiny_config()
    again = dsd2.resume(res.run_dir)  # finished: nothing retrained, the same rows
    assert again.rows == res.rows
    assert dsd2.run(tiny_config(), out=tmp_path / "runs").run_dir == res.run_dir  # a RunConfig works too

    exp = dsd2.export(res.run_dir, tmp_path / "model", round=2, compressed=True)
    assert isinstance(exp, dsd2.ExportResult)
    assert exp.round == 2 and exp.selected_by == "round" and exp.sparsity == pytest.approx(0.75)
    assert exp.weights_bytes < exp.dense_bytes and set(exp.files) == {"model.json", "model.safetensors"}
    model = dsd2.load_exported(exp.dir)
    assert isinstance(model, torch.nn.Module) and not model.training

    with pytest.raises(UserError, match="round 9"):
        dsd2.export(res.run_dir, tmp_path / "other", round=9)


def test_pipeline_returns_the_three_runs(tmp_path):
    study = dsd2.pipeline("tiny_mnist1d", [*TINY, "prune.rounds=1"], out=tmp_path)
    assert isinstance(study, dsd2.PipelineResult)
    assert study.vanilla == study.teacher  # same architecture: the teacher run is the baseline
    assert (study.student.run_dir / "teacher.json").is_file() and len(study.student.rows) == 2
    from dsd2.study import run_study

    assert dsd2.pipeline is run_study  # a plain function (the module is dsd2.study)
