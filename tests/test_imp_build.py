"""A run's start as a pure build then record steps (dsd2.imp.build, dsd2.imp.record), and the
frozen RunContext: what each step writes, when it skips, and that building writes nothing."""

import dataclasses

import pytest
import torch

from dsd2 import rundir, store
from dsd2.errors import UserError
from dsd2.imp.build import build
from dsd2.imp.record import record_config, record_init, record_labels, record_noise
from dsd2.imp.setup import prepare, start

from conftest import tiny_config


def test_building_a_run_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    built = build(tiny_config(), run_dir)
    assert not run_dir.exists()
    state = built.model.state_dict()
    assert built.init_state.keys() == state.keys() and all(torch.equal(built.init_state[k], state[k].cpu()) for k in state)
    assert built.teaching is None and built.labels.noisy.shape == built.data.train_y.shape


def test_each_record_step_writes_when_missing_or_on_every_start_as_documented(tmp_path):
    cfg = tiny_config()
    run_dir = tmp_path / "run"
    start(cfg, run_dir)
    files = [rundir.config_path(run_dir), rundir.labels_path(run_dir), rundir.noise_path(run_dir), rundir.init_path(run_dir)]
    before = {p: p.read_bytes() for p in files}
    built = build(cfg, run_dir)
    # init.safetensors and config.yaml: written when missing, never rewritten
    record_init(run_dir, dataclasses.replace(built, init_state={k: v + 1 for k, v in built.init_state.items()}))
    record_config(run_dir, tiny_config("seed=1"))
    # noise.json: rewritten on every start (a function of the labels)
    store.write_json(rundir.noise_path(run_dir), {})
    record_noise(run_dir, cfg, built.data, built.labels)
    assert {p: p.read_bytes() for p in files} == before
    # labels.safetensors: checked when present, never rewritten
    other = dataclasses.replace(built.labels, noisy=built.labels.noisy.roll(1))
    with pytest.raises(UserError, match="does not match the labels"):
        record_labels(run_dir, built.data, other)
    assert rundir.labels_path(run_dir).read_bytes() == before[rundir.labels_path(run_dir)]


def test_the_run_context_is_frozen(tmp_path):
    ctx = prepare(tiny_config(), tmp_path / "run")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.objective = None  # type: ignore[misc]
    assert ctx.objective_with(None) is ctx.objective
