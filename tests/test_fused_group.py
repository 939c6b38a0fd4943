"""Fused IMP groups (dsd2.fused.group): K tiny runs, each writing its own standard run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dsd2 import imp, store
from dsd2.fused.group import CPU_NOTE, run_group
from dsd2.models import register_model
from dsd2.models import registry as registry_module

from conftest import Interrupted, tiny_config

IMP = ["train.epochs=2", "prune.rounds=3", "model.hidden=[32, 32]", "entropy.batch_size=700"]
SEEDS = (0, 1, 2)
# measured (docs/fused.md): fused and separate rounds.csv agreed in every accuracy column and in
# the masks (overlap 1.0) on these runs; train_loss differed by < 3e-7. The bounds: one sample of
# the 300-sample validation split, and 99% mask overlap.
ACC_TOL = 1 / 300 + 1e-9
ACC_COLUMNS = ("train_acc_noisy", "train_acc_clean", "train_acc_flipped", "val_acc", "test_acc", "unflipped_acc")


def _cfgs(*extra: str, seeds=SEEDS):
    return [tiny_config(*IMP, f"seed={s}", *extra) for s in seeds]


def _masks(run_dir: Path, r: int) -> dict[str, torch.Tensor]:
    return store.load_tensors(store.round_dir(run_dir, r) / "masks.safetensors")


def _overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union


def _states(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    return [store.load_tensors(store.round_dir(run_dir, r) / "state.safetensors") for r in store.finished_rounds(run_dir)]


def _same_states(a: Path, b: Path) -> bool:
    sa, sb = _states(a), _states(b)
    return len(sa) == len(sb) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(sa, sb))


@pytest.fixture(scope="module")
def fused_group(tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    return run_group(_cfgs(), out, say=lambda line: None)


def test_fused_group_matches_separate_runs(fused_group, tmp_path):
    cfgs = _cfgs()
    for cfg, fdir in zip(cfgs, fused_group):
        assert fdir.name == cfg.run_id()  # fusing is outside the run id
        sdir = imp.run(cfg, tmp_path)
        assert sorted(p.name for p in fdir.iterdir()) == sorted(p.name for p in sdir.iterdir())
        frows, srows = store.read_csv(fdir / "rounds.csv"), store.read_csv(sdir / "rounds.csv")
        assert [list(r) for r in frows] == [list(r) for r in srows]  # same columns, same rounds
        for fr, sr in zip(frows, srows):
            for col in ACC_COLUMNS:
                assert abs(fr[col] - sr[col]) <= ACC_TOL, (fr["round"], col)
            assert fr["sparsity"] == sr["sparsity"] and fr["alive_weights"] == sr["alive_weights"]
            assert abs(fr["train_loss"] - sr["train_loss"]) < 1e-4
            assert _overlap(_masks(fdir, fr["round"]), _masks(sdir, sr["round"])) >= 0.99
        timing = store.read_json(store.round_dir(fdir, 1) / "metrics.json")["timing"]
        assert timing["fused"] == len(cfgs)


def test_fused_group_rerun_and_resume_after_a_kill_are_bit_identical(fused_group, tmp_path):
    again = run_group(_cfgs(), tmp_path / "again", say=lambda line: None)
    for a, b in zip(fused_group, again):
        assert _same_states(a, b)
        assert store.read_csv(a / "rounds.csv") == store.read_csv(b / "rounds.csv")

    def kill(k, row):  # runs 0 and 1 have saved round 1, run 2 has not
        if k == 1 and row["round"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_group(_cfgs(), tmp_path / "killed", say=lambda line: None, on_round=kill)
    killed = [tmp_path / "killed" / c.run_id() for c in _cfgs()]
    assert [len(store.finished_rounds(d)) for d in killed] == [2, 2, 1]
    resumed = run_group(_cfgs(), tmp_path / "killed", say=lambda line: None)
    for a, b in zip(fused_group, resumed):
        assert _same_states(a, b)
        assert store.read_csv(a / "rounds.csv") == store.read_csv(b / "rounds.csv")
    # a run of the group resumes and extends alone, unfused
    extended = imp.run(tiny_config(*IMP, "seed=2", "prune.rounds=4"), tmp_path / "killed")
    assert extended == resumed[2] and store.finished_rounds(extended) == [0, 1, 2, 3, 4]


def test_an_early_stopped_run_leaves_the_group(tmp_path):
    # lr 5 drives every run to chance; only run 0 has the rule, which fires at round 1
    cfgs = [tiny_config(*IMP, "seed=0", "train.lr=5", "early_stop.rule=plain")] + _cfgs("train.lr=5", seeds=(1, 2))
    seen: list[tuple[int, int, int | None]] = []
    dirs = run_group(cfgs, tmp_path, say=lambda line: None, on_round=lambda k, row: seen.append((k, row["round"], None)))
    assert store.read_json(dirs[0] / "early_stop.json")["stop_round"] == 1
    assert store.finished_rounds(dirs[0]) == [0, 1]
    for d in dirs[1:]:
        assert store.finished_rounds(d) == [0, 1, 2, 3]
        assert store.read_json(store.round_dir(d, 3) / "metrics.json")["timing"]["fused"] == 2
    assert (0, 2, None) not in seen


def test_unfusable_configs_fall_back_with_one_line(tmp_path):
    lines: list[str] = []
    cfgs = _cfgs("train.select_epoch=best_val", "prune.rounds=1", seeds=(0, 1))
    dirs = run_group(cfgs, tmp_path, say=lines.append)
    assert len(lines) == 1 and "best_val" in lines[0]
    assert [store.finished_rounds(d) for d in dirs] == [[0, 1], [0, 1]]


def test_channel_allocations_train_unfused_so_the_floor_stop_is_recorded():
    from dsd2.fused.group import config_reason

    cfgs = _cfgs("prune.criterion=magnitude", "prune.allocation=channel_uniform", seeds=(0, 1))
    assert "channel floor" in (config_reason(cfgs) or "")
    assert config_reason(_cfgs(seeds=(0, 1))) is None


def test_an_unfusable_model_trains_unfused_with_one_line(tmp_path):
    @register_model("tmp_fused_layernorm")
    def _builder(num_classes: int, in_channels: int, input_size: int, hidden: tuple[int, ...] = (16,)) -> nn.Module:
        w = hidden[0]
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size, w), nn.LayerNorm(w), nn.ReLU(), nn.Linear(w, num_classes))

    try:
        lines: list[str] = []
        cfgs = [tiny_config("model.name=tmp_fused_layernorm", f"seed={s}") for s in (0, 1)]
        dirs = run_group(cfgs, tmp_path / "f", say=lines.append)
        assert len(lines) == 1 and "LayerNorm" in lines[0]
        for cfg, d in zip(cfgs, dirs):  # the fallback is the unfused code: the same numbers
            s = imp.run(cfg, tmp_path / "s")
            assert _same_states(d, s)
    finally:
        registry_module.MODELS.unregister("tmp_fused_layernorm")


def test_cli_run_with_seeds_writes_one_run_directory_per_seed(tmp_path, capsys):
    from dsd2.cli import main

    from conftest import TINY

    assert main(["run", "tiny_mnist1d", *TINY, "--seeds", "0,1", "--fuse", "--out", str(tmp_path)]) == 0
    dirs = [tmp_path / tiny_config(f"seed={s}").run_id() for s in (0, 1)]
    assert [store.finished_rounds(d) for d in dirs] == [[0, 1, 2], [0, 1, 2]]
    assert store.read_json(store.round_dir(dirs[0], 1) / "metrics.json")["timing"]["fused"] == 2
    out = capsys.readouterr().out
    assert "seed 0" in out and "seed 1" in out  # one rounds table per run
    for bad in ("0,x", "0,0", "", "1,,2"):
        assert main(["run", "tiny_mnist1d", *TINY, "--seeds", bad, "--out", str(tmp_path)]) == 2
    assert main(["run", "tiny_mnist1d", *TINY, "seed=3", "--seeds", "0,1", "--out", str(tmp_path)]) == 2
    assert main(["run", str(dirs[0]), "--seeds", "0,1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err


def test_cli_seeds_on_a_cpu_train_one_after_another_unless_told_to_fuse(tmp_path, capsys):
    """Fused training measured no faster on CPUs (slower for conv nets): without --fuse/--no-fuse,
    --seeds on a CPU trains the runs one after another, says so once, and gives dsd2 run's numbers."""
    from dsd2.cli import main
    from dsd2.cli.fused import SEQUENTIAL_ON_CPU, fuse_by_default

    from conftest import TINY

    assert not fuse_by_default(tiny_config())
    assert main(["run", "tiny_mnist1d", *TINY, "--seeds", "0,1", "--out", str(tmp_path / "auto")]) == 0
    err = capsys.readouterr().err
    assert err.count("--seeds on a CPU: the runs train one after another") == 1 and "--fuse" in SEQUENTIAL_ON_CPU
    assert main(["run", "tiny_mnist1d", *TINY, "seed=1", "--out", str(tmp_path / "alone")]) == 0
    auto = tmp_path / "auto" / tiny_config("seed=1").run_id()
    assert "fused" not in store.read_json(store.round_dir(auto, 1) / "metrics.json")["timing"]
    alone = tmp_path / "alone" / tiny_config("seed=1").run_id()
    assert store.read_csv(auto / "rounds.csv") == store.read_csv(alone / "rounds.csv")


def test_fuse_key_groups_what_can_train_together():
    from dsd2.sweep.fuse import fuse_key

    base = fuse_key(tiny_config())
    assert fuse_key(tiny_config("seed=4", "noise.rate=0.4", "prune.rounds=5", "early_stop.rule=plain")) == base
    assert fuse_key(tiny_config("model.hidden=[8, 8]")) != base
    assert fuse_key(tiny_config("train.lr=0.01")) != base


def test_sweep_fuse_dry_run_lists_groups_and_run_trains_them(tmp_path, capsys):
    from dsd2.cli import main

    assert main(["sweep", "tiny_demo", "--out", str(tmp_path), "--fuse", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fused groups: 1 (sizes 4)" in out
    assert not any(p.name.startswith("tiny_demo_") for p in tmp_path.iterdir())  # a dry run starts nothing
    assert main(["sweep", "tiny_demo", "--out", str(tmp_path), "--fuse", "--backend", "sequential"]) == 0
    runs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("tiny_demo_"))
    assert len(runs) == 4
    for d in runs:
        assert store.read_json(store.round_dir(d, 1) / "metrics.json")["timing"]["fused"] == 4
    assert (tmp_path / "tiny_demo" / "summary.csv").is_file()
    capsys.readouterr()
    assert main(["sweep", "tiny_demo", "--out", str(tmp_path), "--fuse", "--dry-run"]) == 0
    assert "fused groups: 0" in capsys.readouterr().out  # finished runs are not grouped again


def _close_to_separate(dirs: list[Path], cfgs, out: Path) -> None:
    for cfg, fdir in zip(cfgs, dirs):
        sdir = imp.run(cfg, out)
        frows, srows = store.read_csv(fdir / "rounds.csv"), store.read_csv(sdir / "rounds.csv")
        assert [list(r) for r in frows] == [list(r) for r in srows]
        for fr, sr in zip(frows, srows):
            for col in ACC_COLUMNS:
                assert abs(fr[col] - sr[col]) <= ACC_TOL, (fr["round"], col)
        for name in ("rewind.safetensors", "teacher.json"):
            assert (fdir / name).exists() == (sdir / name).exists()
        if (fdir / "rewind.safetensors").exists():
            a, b = store.load_tensors(fdir / "rewind.safetensors"), store.load_tensors(sdir / "rewind.safetensors")
            assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


@pytest.mark.parametrize("mode", ["kd_student", "late_rewind", "lottery"])
def test_fused_retraining_modes_and_kd_students_match_separate_runs(mode, fused_group, tmp_path):
    extra = {
        "late_rewind": ("prune.retrain=late_rewind", "prune.rewind_epoch=1", "prune.rounds=2"),
        "lottery": ("prune.retrain=lottery", "prune.rounds=2"),
    }
    if mode == "kd_student":  # each student distils from the fused teacher of its seed (same samples and labels)
        kd = ("name=student", "distill.round=best", "prune.rounds=2")
        cfgs = [tiny_config(*IMP, f"seed={s}", *kd, f"distill.teacher={fused_group[s]}") for s in (0, 1)]
    else:
        cfgs = _cfgs(*extra[mode], seeds=(0, 1))
    dirs = run_group(cfgs, tmp_path / "f", say=lambda line: None)
    assert store.read_json(store.round_dir(dirs[0], 1) / "metrics.json")["timing"]["fused"] == 2
    _close_to_separate(dirs, cfgs, tmp_path / "s")


def test_demo_fuse_trains_teachers_then_students_as_groups(tmp_path, capsys):
    from dsd2.cli import main

    small = ["train.epochs=1", "prune.rounds=1", "dataset.train_subset=400", "dataset.val_size=200", "entropy.enabled=false"]
    if main(["demo", "--fuse", "--seeds", "0,1", "--out", str(tmp_path), *small]) == 2:
        pytest.skip("Fashion-MNIST is not on this machine")
    runs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("demo_fmnist"))
    assert len(runs) == 4  # a vanilla run and a student per seed
    for d in runs:
        assert store.read_json(store.round_dir(d, 1) / "metrics.json")["timing"]["fused"] == 2
    assert sum((d / "teacher.json").is_file() for d in runs) == 2  # the students name their teachers


def test_a_group_killed_mid_round_resumes_from_its_epoch_checkpoints_bit_identically(tmp_path):
    from dsd2 import checkpoint

    extra = ("train.epochs=3", "train.checkpoint_interval_s=0", "prune.rounds=2")
    full = run_group(_cfgs(*extra), tmp_path / "full", say=lambda line: None)

    def kill(k, r, epochs, log):  # every run has saved epoch 1 of round 1; epoch 2 is trained, not saved
        if r == 1 and log.epoch == 2 and k == len(SEEDS) - 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_group(_cfgs(*extra), tmp_path / "killed", say=lambda line: None, progress=kill)
    killed = [tmp_path / "killed" / c.run_id() for c in _cfgs(*extra)]
    for d in killed:
        assert store.finished_rounds(d) == [0]
        assert checkpoint.load_epoch_state(checkpoint.partial_path(d, 1)).next_epoch == 1
    lines: list[str] = []
    epochs: list[tuple[int, int, int]] = []
    resumed = run_group(
        _cfgs(*extra), tmp_path / "killed", say=lines.append, progress=lambda k, r, e, log: epochs.append((k, r, log.epoch))
    )
    assert [line for line in lines if line != CPU_NOTE] == []  # nothing but what fusing costs on a CPU
    assert [e for k, r, e in epochs if k == 0 and r == 1] == [2, 3]  # round 1 went on from its checkpoint
    for a, b in zip(full, resumed):
        assert _same_states(a, b)
        assert store.read_csv(a / "rounds.csv") == store.read_csv(b / "rounds.csv")
        assert not checkpoint.partial_path(b, 1).exists()  # dropped once the round is saved


def test_a_fused_group_on_cpu_says_what_fusing_costs_there(fused_group, tmp_path):
    """Measured on 2 idle cores, fusing is no faster than separate processes (MLPs) or slower (conv
    nets): a CPU group says so once, with the way to train one after another; a finished group,
    which trains nothing, says nothing."""
    said: list[str] = []
    run_group(_cfgs()[:2], tmp_path, say=said.append)
    assert said.count(CPU_NOTE) == 1 and "without --fuse" in CPU_NOTE
    said.clear()
    run_group(_cfgs()[:2], tmp_path, say=said.append)
    assert CPU_NOTE not in said


def test_runs_whose_inputs_differ_in_shape_train_unfused_with_one_line(tmp_path):
    """run_group from Python on two datasets whose images differ in size, with a model whose
    weights do not depend on it (global pooling): one batch cannot hold both runs' inputs, so they
    train one after another, said in one line, with dsd2 run's numbers."""
    from dsd2.data import DATASETS, RawDataset, register_dataset

    def images(size: int):
        def load(root, *, download=False, seed=0):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(200, 1, size, size, generator=g)
            y = torch.randint(0, 4, (200,), generator=g)
            return RawDataset(f"imgs{size}", 4, x[:160], y[:160], x[160:], y[160:], (0.0,), (1.0,), default_val_size=40)

        return load

    with DATASETS.snapshot():
        for size in (8, 12):
            register_dataset(f"imgs{size}", num_classes=4, input_shape=(1, size, size), train_size=160, test_size=40)(images(size))
        cfgs = [
            tiny_config(
                f"dataset={{name: imgs{size}, root: null, val_size: 40}}",
                "model={name: vgg_like, depth: 2, gamma: 2, head: compact}",
                "prune.rounds=1",
                "train.epochs=1",
            )
            for size in (8, 12)
        ]
        lines: list[str] = []
        dirs = run_group(cfgs, tmp_path / "f", say=lines.append)
        assert [line for line in lines if line != CPU_NOTE] == [
            "fused: training the runs one after another (the runs' inputs differ in shape (their datasets differ))"
        ]
        for cfg, d in zip(cfgs, dirs):
            assert _same_states(d, imp.run(cfg, tmp_path / "s"))
