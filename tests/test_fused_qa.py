"""Fused groups keep the contracts of unfused runs at their seams: identity and reuse, resume
after tampering, readers of a fused run, stop rules, per-run teachers and labels, error paths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from dsd2 import imp, store
from dsd2.fused.group import run_group

from conftest import TINY, tiny_config

IMP = ["train.epochs=1", "prune.rounds=2", "entropy.batch_size=700"]


def _cfg(seed: int, *extra: str):
    return tiny_config(*IMP, f"seed={seed}", *extra)


def _states(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    return [store.load_tensors(store.round_dir(run_dir, r) / "state.safetensors") for r in store.finished_rounds(run_dir)]


def _same_states(a: Path, b: Path) -> bool:
    sa, sb = _states(a), _states(b)
    return len(sa) == len(sb) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(sa, sb))


def _fused_sizes(run_dir: Path) -> list[int | None]:
    return [store.read_json(store.round_dir(run_dir, r) / "metrics.json")["timing"].get("fused") for r in store.finished_rounds(run_dir)]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (its holder's pid)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_run_finished_or_half_done_alone_is_not_retrained_by_a_group_it_joins(tmp_path):
    """A run that already exists (finished, or killed after a round, both unfused) joins a new
    group: its saved rounds are not trained again as a 'kill ghost', so the newcomer trains each
    round exactly as it would alone when it is the only run left at that round."""
    done = imp.run(_cfg(0), tmp_path)
    before = _snapshot(done)
    dirs = run_group([_cfg(0), _cfg(1)], tmp_path, say=lambda line: None)
    assert dirs[0] == done and _snapshot(done) == before
    assert _fused_sizes(dirs[1]) == [None, None, None]  # alone at every round: nothing to fuse with
    assert _same_states(dirs[1], imp.run(_cfg(1), tmp_path / "alone"))


def test_cli_seeds_says_which_runs_it_reuses(tmp_path, capsys):
    """`dsd2 run CONFIG --seeds 0,1` where seed 0's run is finished says so, as `dsd2 run CONFIG seed=0` does."""
    from dsd2.cli import main

    assert main(["run", "tiny_mnist1d", *TINY, "seed=0", "--out", str(tmp_path), "-q"]) == 0
    capsys.readouterr()
    assert main(["run", "tiny_mnist1d", *TINY, "--seeds", "0,1", "--fuse", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: finished on" in out and "seed 1: finished" not in out


class _Crash(Exception):
    """A failure of another run of the group (raised from its on_round callback)."""


def test_a_run_that_stopped_keeps_its_early_stop_file_when_the_group_fails_later(tmp_path):
    """Run 0's early-stop rule fires at round 1 and it leaves the group; run 1 fails at round 3.
    Run 0 is complete: its early_stop.json is written (as its unfused run writes it, from the
    same rounds.csv), not lost with run 1's failure."""
    from dsd2 import rundir
    from dsd2.imp.loop import label_rows, stop_decision

    # lr 5 drives every run to chance; the plain rule fires at round 1 (tests/test_fused_group.py)
    cfgs = [_cfg(0, "train.lr=5", "prune.rounds=3", "early_stop.rule=plain"), _cfg(1, "train.lr=5", "prune.rounds=3")]

    def crash(k: int, row) -> None:
        if k == 1 and row["round"] == 3:
            raise _Crash

    try:
        run_group(cfgs, tmp_path, say=lambda line: None, on_round=crash)
    except _Crash:
        pass
    else:
        raise AssertionError("run 1 did not fail")
    stopped = tmp_path / cfgs[0].run_id()
    rows = rundir.read_rounds(stopped)
    assert [r.round for r in rows] == [0, 1]
    decision = stop_decision(cfgs[0], rows)
    assert decision is not None and decision.stop_round == 1
    assert rundir.stopped_at(stopped) == 1
    expected = json.loads(json.dumps({"rule": "plain", **dataclasses.asdict(decision)}))  # what the unfused run writes
    assert store.read_json(stopped / "early_stop.json") == expected
    assert [r.phase for r in rows] == label_rows(rows, finished=False, n_eval=300)


def test_runs_with_different_round_counts_leave_the_group_finished(tmp_path):
    """prune.rounds differs: the shorter run leaves the group after its last round, labelled as a
    finished curve (as unfused); the longer one goes on alone, unfused."""
    from dsd2 import rundir
    from dsd2.imp.loop import label_rows

    cfgs = [_cfg(0, "prune.rounds=1"), _cfg(1, "prune.rounds=2")]
    short, long = run_group(cfgs, tmp_path, say=lambda line: None)
    assert _fused_sizes(short) == [2, 2] and _fused_sizes(long) == [2, 2, None]
    rows = rundir.read_rounds(short)
    assert [r.phase for r in rows] == label_rows(rows, finished=True, n_eval=300)
    assert not (short / "early_stop.json").exists()  # no rule: no stop file, as unfused


ACC_TOL = 1 / 300 + 1e-9  # one validation sample (tests/test_fused_group.py)
ACC_COLUMNS = ("train_acc_noisy", "train_acc_clean", "train_acc_flipped", "val_acc", "test_acc", "unflipped_acc")


def _like_separate(cfgs, dirs: list[Path], out: Path) -> None:
    """Each fused run trained fused at every round and matches its own unfused run (within the
    documented tolerance; train_loss, which is each run's own objective on its own labels, within
    1e-4): labels, teachers or losses swapped between runs would break it."""
    for cfg, fdir in zip(cfgs, dirs):
        assert all(k == len(cfgs) for k in _fused_sizes(fdir)[1:])
        sdir = imp.run(cfg, out)
        frows, srows = store.read_csv(fdir / "rounds.csv"), store.read_csv(sdir / "rounds.csv")
        assert len(frows) == len(srows)
        for fr, sr in zip(frows, srows):
            assert abs(fr["train_loss"] - sr["train_loss"]) < 1e-4, (cfg.run_id(), fr["round"])
            for col in ACC_COLUMNS:  # None where a run has no flipped label
                assert (fr[col] is None) == (sr[col] is None), (cfg.run_id(), fr["round"], col)
                assert fr[col] is None or abs(fr[col] - sr[col]) <= ACC_TOL, (cfg.run_id(), fr["round"], col)
        assert store.read_json(fdir / "noise.json") == store.read_json(sdir / "noise.json")


def test_runs_differing_in_noise_each_train_on_their_own_labels(tmp_path):
    """One seed (same init, same batch order) under noise of other kinds, rates and draws: only
    the labels differ, so a run given another's labels would show in its loss."""
    cfgs = [
        _cfg(0, "train.epochs=2", "noise.kind=none", "noise.rate=0"),
        _cfg(0, "train.epochs=2", "noise.kind=symmetric", "noise.rate=0.6"),
        _cfg(0, "train.epochs=2", "noise.kind=pairflip", "noise.rate=0.4"),
        _cfg(1, "train.epochs=2", "noise.kind=symmetric", "noise.rate=0.6"),  # another draw
    ]
    dirs = run_group(cfgs, tmp_path / "f", say=lambda line: None)
    _like_separate(cfgs, dirs, tmp_path / "s")


def test_kd_students_of_different_teachers_each_learn_from_their_own(tmp_path):
    """Two students of one seed, each distilling from another teacher (distill.teacher differs):
    a student given the other's teacher logits would show in its KD loss."""
    # a teacher must have the student's samples and labels: two of seed 0, trained differently
    teachers = [imp.run(_cfg(0, "prune.rounds=1", f"train.lr={lr}"), tmp_path / "t") for lr in (0.003, 0.03)]
    kd = ("name=student", "distill.round=best", "prune.rounds=1", "train.epochs=2")
    cfgs = [_cfg(0, *kd, f"distill.teacher={t}") for t in teachers]
    dirs = run_group(cfgs, tmp_path / "f", say=lambda line: None)
    for t, d in zip(teachers, dirs):
        assert store.read_json(d / "teacher.json")["run_dir"] == str(t)
    _like_separate(cfgs, dirs, tmp_path / "s")


def test_a_diverged_run_is_named_with_its_retry_command_and_the_others_keep_their_rounds(tmp_path, monkeypatch, capsys):
    """Run 1's loss becomes NaN in round 1 of a fused group: `dsd2 run --seeds` exits 2 with one
    line naming run 1's directory and the exact command that retries it; every run keeps its
    finished round 0; following the advice, then the same command, finishes all runs."""
    from dsd2.cli import main
    from dsd2.fused import group as group_module

    train_fused = group_module.train_fused
    calls = [0]

    def nan_in_run_1(models, sources, schedule, *, objectives, **kw):
        calls[0] += 1
        if calls[0] == 2:  # round 1
            first = objectives[1]
            objectives = [objectives[0], lambda *a: first(*a) * float("nan"), *objectives[2:]]
        return train_fused(models, sources, schedule, objectives=objectives, **kw)

    monkeypatch.setattr(group_module, "train_fused", nan_in_run_1)
    command = ["run", "tiny_mnist1d", *TINY, "--seeds", "0,1,2", "--fuse", "--out", str(tmp_path), "-q"]
    assert main(command) == 2
    err = capsys.readouterr().err
    dirs = [tmp_path / tiny_config(f"seed={s}").run_id() for s in (0, 1, 2)]
    assert f"{dirs[1]} diverged at epoch 1" in err and f"dsd2 resume {dirs[1]} --lr-scale 0.1" in err
    assert "run 1 of the fused group" not in err
    assert [store.finished_rounds(d) for d in dirs] == [[0], [0], [0]]
    monkeypatch.setattr(group_module, "train_fused", train_fused)
    assert main(["resume", str(dirs[1]), "--lr-scale", "0.1", "-q"]) == 0
    assert main(command) == 0
    assert [store.finished_rounds(d) for d in dirs] == [[0, 1, 2]] * 3


def test_a_run_that_cannot_start_stops_the_group_before_training_and_leaves_no_half_made_runs(tmp_path):
    """One config of the group is impossible (more samples than the dataset has): one error
    naming that run; the group trains nothing, the runs this call would have started leave no
    directory (as a failed unfused start), a finished run of the group is untouched."""
    import pytest

    from dsd2.errors import UserError

    done = imp.run(_cfg(0), tmp_path)
    before = _snapshot(done)
    cfgs = [_cfg(0), _cfg(2), _cfg(1, "dataset.train_subset=100000")]  # run 2 starts before the impossible one
    with pytest.raises(UserError) as err:
        run_group(cfgs, tmp_path, say=lambda line: None)
    assert str(tmp_path / cfgs[2].run_id()) in str(err.value) and "train_subset" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [done.name]
    assert _snapshot(done) == before


def test_a_full_disk_while_a_run_saves_stops_the_group_and_the_same_command_finishes_it(tmp_path, monkeypatch, capsys):
    """The disk fills while run 1 saves round 1 (run 0 has saved it): exit 2 with the writer's
    one line; every finished round is intact; the same command then finishes the group with
    the files of a group that never failed."""
    import errno
    import os

    from dsd2.cli import main

    command = ["run", "tiny_mnist1d", *TINY, "--seeds", "0,1,2", "--fuse", "-q", "--out"]
    assert main([*command, str(tmp_path / "whole")]) == 0
    dirs = [tmp_path / "full" / tiny_config(f"seed={s}").run_id() for s in (0, 1, 2)]
    replace = os.replace

    def full_disk(src, dst, *a, **kw):
        if str(dst).startswith(str(dirs[1] / "round_001")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full_disk)
    assert main([*command, str(tmp_path / "full")]) == 2
    assert "no space left on the device while writing" in capsys.readouterr().err
    assert [store.finished_rounds(d) for d in dirs] == [[0, 1], [0], [0]]
    monkeypatch.setattr(os, "replace", replace)
    assert main([*command, str(tmp_path / "full")]) == 0
    for d in dirs:
        whole = tmp_path / "whole" / d.name
        assert _same_states(d, whole) and store.read_csv(d / "rounds.csv") == store.read_csv(whole / "rounds.csv")


def test_an_image_folder_that_auto_streams_trains_unfused_with_one_line(tmp_path):
    """dataset.loader=auto chooses the stream path for a folder over its memory budget: the runs
    fall back to unfused training, as dataset.loader=stream does (docs/fused.md), saying why."""
    from dsd2.config import load_config
    from dsd2.data.testing import write_image_folder

    write_image_folder(tmp_path / "imgs", n_train=6, n_test=2)
    args = [
        "name=imf",
        "dataset.name=image_folder",
        f"dataset.root={tmp_path / 'imgs'}",
        "dataset.image_size=16",
        "dataset.loader=auto",
        "dataset.memory_budget_gb=0.000001",
        "dataset.workers=0",
        "dataset.val_size=3",
        "model={name: lenet5}",
        "noise.rate=0",
        "train.epochs=1",
        "train.batch_size=8",
        "prune.rounds=1",
        "entropy.enabled=false",
    ]
    lines: list[str] = []
    dirs = run_group([load_config("tiny_mnist1d", [*args, f"seed={s}"]) for s in (0, 1)], tmp_path / "runs", say=lines.append)
    assert store.read_json(dirs[0] / "meta.json")["data"]["loader"] == "stream"
    assert [_fused_sizes(d) for d in dirs] == [[None, None]] * 2
    assert len(lines) == 1 and "streamed image folder" in lines[0]


def test_a_fused_group_extended_by_more_rounds_equals_the_longer_group(tmp_path):
    """`dsd2 run CONFIG --seeds 0,1 prune.rounds=N` on a finished group extends its runs (their
    run ids do not count rounds), fused, with the files of a group run to N rounds at once."""
    short = run_group([_cfg(s, "prune.rounds=1") for s in (0, 1)], tmp_path / "ext", say=lambda line: None)
    extended = run_group([_cfg(s, "prune.rounds=2") for s in (0, 1)], tmp_path / "ext", say=lambda line: None)
    straight = run_group([_cfg(s, "prune.rounds=2") for s in (0, 1)], tmp_path / "straight", say=lambda line: None)
    assert extended == short
    for a, b in zip(extended, straight):
        assert _fused_sizes(a) == [2, 2, 2]
        assert _same_states(a, b) and store.read_csv(a / "rounds.csv") == store.read_csv(b / "rounds.csv")


def test_cli_seeds_says_a_channel_run_is_new_beside_its_earlier_one(tmp_path, monkeypatch, capsys):
    """As `dsd2 run` (tests/test_channel_floor.py): seed 0's channel config made an earlier run that
    pruned the classifier; `--seeds 0,1` names it for seed 0 instead of silently training beside it."""
    from dsd2.cli import main
    from dsd2.imp import checks

    overrides = [*TINY, "prune.allocation=channel_uniform", "prune.rounds=1"]
    old = tiny_config("prune.allocation=channel_uniform", "prune.include_classifier=true", "prune.rounds=1")
    monkeypatch.setattr(checks, "prunes_classes", lambda *a: None)  # as before the refusal
    earlier = imp.run(old, tmp_path)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["run", "tiny_mnist1d", *overrides, "--seeds", "0,1", "--fuse", "--out", str(tmp_path), "-q"]) == 0
    raw = capsys.readouterr().out
    out = " ".join(raw.split())
    assert "seed 0: a new run: structured allocations now leave the classifier out" in out and earlier.name in raw.replace("\n", "")
    assert "seed 1: a new run" not in out


def test_a_run_of_a_group_killed_mid_round_resumes_alone_from_its_fused_epoch_checkpoint(tmp_path):
    """The group is killed in round 1 after every run saved its epoch-1 checkpoint; `dsd2 resume`
    of one run goes on alone, unfused, from that checkpoint (epochs 2 and 3 only), and ends
    where the uninterrupted group's run ends (within the documented tolerance)."""
    import pytest

    from dsd2 import checkpoint

    from conftest import Interrupted

    extra = ("train.epochs=3", "train.checkpoint_interval_s=0")
    cfgs = [_cfg(s, *extra) for s in (0, 1)]

    def kill(k, r, epochs, log):
        if r == 1 and log.epoch == 2 and k == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_group(cfgs, tmp_path / "killed", say=lambda line: None, progress=kill)
    run_dir = tmp_path / "killed" / cfgs[0].run_id()
    assert checkpoint.load_epoch_state(checkpoint.partial_path(run_dir, 1)).next_epoch == 1
    epochs: list[tuple[int, int]] = []
    imp.run(cfgs[0], run_dir=run_dir, progress=lambda r, e, log: epochs.append((r, log.epoch)))
    assert [e for r, e in epochs if r == 1] == [2, 3]
    whole = run_group(cfgs, tmp_path / "whole", say=lambda line: None)[0]
    for fr, wr in zip(store.read_csv(run_dir / "rounds.csv"), store.read_csv(whole / "rounds.csv"), strict=True):
        assert abs(fr["train_loss"] - wr["train_loss"]) < 1e-4
        assert all(abs(fr[c] - wr[c]) <= ACC_TOL for c in ("val_acc", "test_acc", "train_acc_noisy"))


def test_a_group_extension_that_cannot_start_leaves_every_run_as_it_was(tmp_path):
    """Extending a finished group by a round where one run's saved round is corrupt: the error
    names that file; the other run, extended first, does not keep a config saying it has more
    rounds than it trained (as a failed unfused extension)."""
    import pytest

    from dsd2.errors import UserError

    dirs = run_group([_cfg(s, "prune.rounds=1") for s in (0, 1)], tmp_path, say=lambda line: None)
    state = store.round_dir(dirs[1], 1) / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-4] + b"\0\0\0\0")
    before = _snapshot(dirs[0])
    with pytest.raises(UserError, match="state.safetensors"):
        run_group([_cfg(s, "prune.rounds=2") for s in (0, 1)], tmp_path, say=lambda line: None)
    assert _snapshot(dirs[0]) == before


def test_a_half_done_run_joins_a_group_at_its_next_round(tmp_path):
    """Seed 0 was killed after round 1 (unfused); `--seeds 0,1` trains seed 1 alone up to round 1
    (seed 0's saved rounds are not trained again), then both together from round 2."""
    from conftest import run_interrupted

    half = run_interrupted(_cfg(0), tmp_path, after_round=1)
    kept = {p: b for p, b in _snapshot(half).items() if p.startswith("round_")}
    dirs = run_group([_cfg(0), _cfg(1)], tmp_path, say=lambda line: None)
    assert dirs[0] == half and {p: b for p, b in _snapshot(half).items() if p in kept} == kept
    assert _fused_sizes(dirs[0]) == [None, None, 2] and _fused_sizes(dirs[1]) == [None, None, 2]
