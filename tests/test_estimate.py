"""`dsd2 estimate`, `dsd2 sweep --dry-run --measure`, the dry run's per-cell reservation and the
resident-data memory check. Times are only checked to be positive, finite and consistent (no
timing assertions); FLOPs are checked against a real run's tables."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dsd2 import store, train
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.sweep import estimate_cost, format_cost, load_sweep
from dsd2.sweep.measure import measure, measured_throughput, predict

TINY = ["train.epochs=2", "prune.rounds=2", "train.threads=1"]


def test_the_prediction_adds_up_and_its_flops_are_the_run_tables(tmp_path):
    from dsd2 import imp

    cfg = load_config("tiny_mnist1d", TINY)
    m = measure(cfg, steps=2)
    assert m.train_examples_per_s > 0 and m.eval_examples_per_s > 0 and m.threads == 1
    p = predict(cfg, m)
    assert len(p["round_s"]) == cfg.prune.rounds + 1 and p["epochs_per_round"] == [2, 2, 2]
    assert all(math.isfinite(s) and s > 0 for s in p["round_s"]) and p["total_s"] == pytest.approx(sum(p["round_s"]))
    run_dir = imp.run(cfg, tmp_path)
    last = store.read_csv(run_dir / "rounds.csv")[-1]
    assert p["train_pflops"] == pytest.approx(float(last["train_pflops_dense"]), rel=1e-9)
    assert m.train_flops_per_s == pytest.approx(m.step_flops_per_example * m.train_examples_per_s)


def test_estimate_command_text_and_json(capsys):
    from dsd2.cli import main

    assert main(["estimate", "tiny_mnist1d", *TINY, "--steps", "2", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert set(p) >= {"measured", "round_s", "total_s", "train_pflops", "epochs_per_round"}
    assert p["measured"]["device"] == "cpu" and p["measured"]["steps"] == 2
    assert main(["estimate", "tiny_mnist1d", *TINY, "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "whole run" in text and "Left out" in text and max(len(line) for line in text.splitlines()) <= 100
    assert main(["estimate", "tiny_mnist1d", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_dry_run_measure_uses_the_measured_rate(capsys):
    from dsd2.cli import main

    assert main(["sweep", "tiny_demo", "--dry-run", "--measure", "--out", "unused"]) == 0
    out = capsys.readouterr().out
    assert "device-h" in out and "measured here on cpu" in out and "25 TFLOP/s" not in out
    spec = load_sweep("tiny_demo")
    calls = []
    rate = measured_throughput(steps=1)

    def counting(cfg, teacher):
        calls.append(cfg.name)
        return rate(cfg, teacher)

    est = estimate_cost(spec, throughput=counting)
    assert est["measured"] and len(calls) == len(est["cells"])
    # one model in the grid: the rate is the same for every run, hours follow the FLOPs
    rates = {round(r["flops_per_s"], 3) for c in est["cells"] for r in c["runs"]}
    assert len(rates) == 1


def test_the_dry_run_shows_what_a_cell_reserves_and_its_wall_time():
    spec = load_sweep("tiny_demo", ["sweep.resources.processes=2", "sweep.resources.num_cpus=2"])
    est = estimate_cost(spec)
    for c in est["cells"]:
        assert (c["processes"], c["cpus"], c["gpus"]) == (2, 4, 0)
        assert c["wall_hours"] == pytest.approx(c["gpu_hours"] / 2)
    text = format_cost(est)
    assert "each cell reserves 2 process(es), 0 GPU(s), 4 CPU(s) (a data-parallel job" in text


def test_resident_data_that_would_not_fit_are_refused_before_the_copy(monkeypatch):
    assert train.free_device_bytes(torch.device("cpu")) is None  # the CPU: already decoded there
    x = torch.zeros((100, 3, 8, 8), dtype=torch.uint8)
    y = torch.zeros(100, dtype=torch.int64)
    monkeypatch.setattr(train.sources, "free_device_bytes", lambda device: 20_000)
    with pytest.raises(UserError, match=r"do not fit on meta.*50% of the 0.00 GB free.*dataset.train_subset"):
        train.make_source(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("meta"))
    monkeypatch.setattr(train.sources, "free_device_bytes", lambda device: 10**9)
    src = train.make_source(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("meta"))
    assert src.device.type == "meta"


def test_a_students_prediction_adds_its_teachers_forward(tmp_path):
    from dsd2 import imp

    teacher_dir = imp.run(load_config("tiny_mnist1d", TINY), tmp_path)
    plain = measure(load_config("tiny_mnist1d", TINY), steps=2)
    student = measure(load_config("tiny_mnist1d", [*TINY, f"distill.teacher={teacher_dir}"]), steps=2)
    from dsd2.sweep.cost import per_example_flops

    assert plain.teacher_flops_per_example == 0
    # the teacher is the same MLP: its forward is the student's own forward, counted apart
    forward = per_example_flops(load_config("tiny_mnist1d", TINY), None)[0]
    assert student.teacher_flops_per_example == forward > 0
    ratio = 1 + forward / student.step_flops_per_example
    assert student.step_s_per_example == pytest.approx(ratio / student.train_examples_per_s)


def test_the_demo_estimate_times_a_run_with_the_threads_it_gets_beside_the_others(monkeypatch):
    """The demo trains 2 pipelines side by side, each run with one of 2 cores: timed with all the
    cores, its estimate read 4 min for an 8-minute demo. The measurement takes the share."""
    import os

    from dsd2.cli.runs import _expected_demo_time
    from dsd2.sweep import measure as measure_module
    from dsd2.threads import Share

    cfg = load_config("demo_fmnist")
    assert measure(cfg, steps=2, share=Share(os.cpu_count() or 1)).threads == 1  # every core already has a run
    shares: list[Share] = []
    real = measure_module.measure

    def spy(cfg, **kw):
        shares.append(kw["share"])
        return real(cfg, **{**kw, "steps": 2})

    monkeypatch.setattr(measure_module, "measure", spy)
    assert "expected: about" in _expected_demo_time(cfg, pipelines=2, jobs=2)
    assert "expected: about" in _expected_demo_time(cfg, pipelines=1, jobs=2)
    assert shares == [Share(2), Share(1)]
