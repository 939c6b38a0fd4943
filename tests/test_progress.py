"""No silent minutes: the Python API prints progress unless told not to; estimate, export --onnx
and report say what they do before (or while) they do it."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

import dsd2
from dsd2.cli import main
from dsd2.errors import UserError
from dsd2.progress import TextProgress, callbacks

from conftest import TINY


def _ours(err: str, name: str = "tiny_mnist1d", seed: int = 0) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(f"[{name} seed {seed}]")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return dsd2.run("tiny_mnist1d", TINY, out=tmp_path_factory.mktemp("runs"), progress=False).run_dir


def test_run_prints_a_line_per_round_by_default_and_nothing_with_progress_false(tmp_path, capsys):
    seen = []
    res = dsd2.run("tiny_mnist1d", TINY, out=tmp_path, on_round=seen.append)
    lines = _ours(capsys.readouterr().err)
    assert lines[0] == f"[tiny_mnist1d seed 0] run directory: {res.run_dir}"
    # the demo's line (dsd2.study's pipeline workers print the same)
    assert [ln.split("  sparsity")[0] for ln in lines[1:]] == [f"[tiny_mnist1d seed 0] round  {r}" for r in range(3)]
    assert re.fullmatch(r"\[tiny_mnist1d seed 0\] round  2  sparsity  \d\d\.\d\d%  test \d+\.\d\d%", lines[3])
    assert len(seen) == 3  # the caller's on_round still runs
    dsd2.run("tiny_mnist1d", [*TINY, "seed=1"], out=tmp_path, progress=False)
    assert _ours(capsys.readouterr().err) == []


def test_progress_false_prints_nothing_even_on_a_busy_machine(tmp_path, monkeypatch, capsys):
    """The busy-machine line is output too: progress=False (a notebook, a script) gets none of it;
    a later run with progress still says it once."""
    from dsd2 import threads

    monkeypatch.setattr(threads, "_warned", False)
    monkeypatch.setattr(threads, "load_average", lambda: 99.0)
    dsd2.run("tiny_mnist1d", [*TINY, "seed=2"], out=tmp_path, progress=False)
    dsd2.pipeline("tiny_mnist1d", [*TINY, "seed=3", "prune.rounds=1"], out=tmp_path, progress=False)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
    dsd2.run("tiny_mnist1d", [*TINY, "seed=4"], out=tmp_path)
    assert capsys.readouterr().err.count("machine busy") == 1


def test_pipeline_prints_each_stage(tmp_path, capsys):
    dsd2.pipeline("tiny_mnist1d", [*TINY, "prune.rounds=1"], out=tmp_path)
    err = capsys.readouterr().err
    assert len(_ours(err)) == 3 and len(_ours(err, "tiny_mnist1d_dsd2")) == 3
    assert "What the study found" in err.split("[tiny_mnist1d_dsd2 seed 0]")[-1]  # the verdict comes last


def test_mid_round_lines_are_throttled():
    lines = []
    text = TextProgress("x", every_s=0.0, stream=SimpleNamespace(write=lines.append, flush=lambda: None))
    text.epoch(1, 10, SimpleNamespace(epoch=4, loss=0.5))
    assert "".join(lines).startswith("[x] round 1: epoch 4/10, loss 0.500")
    quiet = TextProgress("x", stream=SimpleNamespace(write=lines.append, flush=lambda: None))
    before = len(lines)
    quiet.epoch(1, 10, SimpleNamespace(epoch=5, loss=0.4))  # within 30 s of the start: silent
    assert len(lines) == before


def test_a_callable_progress_replaces_the_printer():
    def fn(*a):
        return None

    assert callbacks(fn, None)[1] is fn and callbacks(fn, None)[2] is None
    assert callbacks(False, None) == (None, None, None)


def test_report_prints_a_line_per_figure(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "report: reading 1 run folder(s)" in err
    figures = [ln for ln in err.splitlines() if ln.strip().startswith("figure ")]
    assert len(figures) >= 2 and any("figure accuracy:" in ln for ln in figures)
    dsd2.write_report(run_dir, tmp_path / "r2", progress=False)
    assert "figure" not in capsys.readouterr().err


def test_estimate_says_what_it_builds_and_times(capsys):
    assert main(["estimate", "tiny_mnist1d", *TINY, "--steps", "1"]) == 0
    assert "estimate: building mlp (mnist1d inputs), timing 1 training steps of batch 128" in capsys.readouterr().err


def test_export_onnx_says_it_converts_and_checks(run_dir, tmp_path, monkeypatch, capsys):
    def stop(*a, **k):
        raise UserError("stopped here")

    monkeypatch.setattr("dsd2.api.export", stop)
    assert main(["export", str(run_dir), "-o", str(tmp_path / "m"), "--onnx"]) == 2
    assert "model.onnx (converting with torch.onnx, checking it against PyTorch with onnxruntime" in capsys.readouterr().err


def test_the_api_and_the_demo_print_rounds_in_one_format():
    """The API's printer and the demo's pipeline workers (dsd2.study) show a round the same way."""
    import contextlib
    import io

    from dsd2 import study

    from conftest import tiny_config

    row = {"round": 3, "sparsity": 0.488, "val_acc": 0.7, "test_acc": 0.69}
    lines = []
    text = TextProgress("tiny_mnist1d seed 0", stream=SimpleNamespace(write=lines.append, flush=lambda: None))
    text.round_done(row)
    assert "".join(lines) == "[tiny_mnist1d seed 0] round  3  sparsity  48.80%  test 69.00%\n"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        study._round_line(tiny_config())(row)
    assert err.getvalue() == "".join(lines)
