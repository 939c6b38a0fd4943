"""train.threads=auto: the thread rule (dsd2.threads) on synthetic machines, the config, a tiny run."""

from __future__ import annotations

import pytest
import torch

from dsd2 import imp, rundir, store, threads
from dsd2.config import load_config, validate_config
from dsd2.errors import UserError
from dsd2.threads import THRESHOLD_FLOPS_PER_STEP, decide_threads

BIG = 1e3 * THRESHOLD_FLOPS_PER_STEP


def test_small_step_gets_one_thread():
    assert decide_threads(THRESHOLD_FLOPS_PER_STEP / 2, cores=16).threads == 1
    assert decide_threads(THRESHOLD_FLOPS_PER_STEP / 2, cores=16, load=0.0).busy is False


def test_big_step_on_an_idle_machine_gets_the_cores():
    assert decide_threads(BIG, cores=16, processes=1, load=0.0).threads == 16


def test_processes_side_by_side_share_the_cores():
    assert decide_threads(BIG, cores=16, processes=2, load=0.0).threads == 8
    assert decide_threads(BIG, cores=2, processes=2, load=0.0).threads == 1
    assert decide_threads(BIG, cores=2, processes=5, load=0.0).threads == 1  # never below 1


def test_loader_workers_and_cap_count():
    assert decide_threads(BIG, cores=16, loader_workers=4).threads == 12
    assert decide_threads(BIG, cores=16, cap=1).threads == 1


def test_load_above_the_cores_gives_back_the_excess():
    idle = decide_threads(BIG, cores=16, load=3.0)
    busy = decide_threads(BIG, cores=16, load=20.0)
    assert not idle.busy and idle.threads == 16
    assert busy.busy and busy.threads == 12
    assert decide_threads(BIG, cores=2, load=2.6).threads == 1
    assert decide_threads(BIG, cores=2, load=40.0).threads == 1
    assert "machine busy: load 20.0 on 16 core(s); using 12 thread(s)" in busy.busy_message()


def test_busy_machine_is_said_once_per_process(monkeypatch, capsys):
    monkeypatch.setattr(threads, "_warned", False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setattr(threads, "load_average", lambda: 20.0)
    assert threads.resolve_threads(BIG).threads == 12
    assert threads.resolve_threads(BIG).threads == 12
    err = capsys.readouterr().err
    assert err.count("machine busy") == 1


def test_share_of_the_process(monkeypatch, capsys):
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    assert threads.resolve_threads(BIG, share=threads.Share(processes=4)).threads == 4
    assert threads.resolve_threads(BIG, share=threads.Share(cap=1)).threads == 1
    assert threads.resolve_threads(BIG).threads == 16
    assert capsys.readouterr().err == ""


def test_usable_cores_is_positive():
    assert threads.usable_cores() >= 1


def test_config_threads_auto_int_and_null():
    assert load_config(None).train.threads == "auto"
    assert load_config(None, ["train.threads=auto"]).train.threads == "auto"
    assert load_config(None, ["train.threads=3"]).train.threads == 3
    data = load_config(None).resolved()
    data["train"]["threads"] = None  # what configs of older versions say
    cfg = validate_config(data)
    assert cfg.train.threads == "auto"
    assert cfg.run_id() == load_config(None).run_id() == load_config(None, ["train.threads=3"]).run_id()
    for bad in ("0", "many", "-1"):
        with pytest.raises(UserError):
            load_config(None, [f"train.threads={bad}"])


def test_tiny_run_with_the_default_uses_one_thread(tiny, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = tiny("prune.rounds=0")
        assert cfg.train.threads == "auto"
        run_dir = imp.run(cfg, tmp_path)
        assert torch.get_num_threads() == 1
        assert [r["threads"] for r in store.read_csv(run_dir / rundir.TIMINGS_CSV)] == [1]
    finally:
        torch.set_num_threads(before)


def test_the_share_a_caller_passes_reaches_the_thread_rule(tiny, tmp_path, monkeypatch):
    # the demo's worker processes and a sweep's cells pass their share to imp.run; no module state
    from dsd2.imp import execution

    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    monkeypatch.setattr(execution, "step_flops", lambda *a, **k: type("Step", (), {"dense_per_example": BIG})())
    before = torch.get_num_threads()
    try:
        run_dir = imp.run(tiny("prune.rounds=0"), tmp_path / "a", share=threads.Share(processes=4))
        assert [r["threads"] for r in store.read_csv(run_dir / rundir.TIMINGS_CSV)] == [4]
        run_dir = imp.run(tiny("prune.rounds=0"), tmp_path / "b", share=threads.Share(cap=3))
        assert [r["threads"] for r in store.read_csv(run_dir / rundir.TIMINGS_CSV)] == [3]
        run_dir = imp.run(tiny("prune.rounds=0"), tmp_path / "c")
        assert [r["threads"] for r in store.read_csv(run_dir / rundir.TIMINGS_CSV)] == [16]
    finally:
        torch.set_num_threads(before)
