"""End-to-end IMP runs on tiny MNIST-1D: the run-directory contract, resume, retraining modes, KD."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dsd2 import imp, store
from dsd2.errors import UserError
from dsd2.prune import full_masks

from conftest import TINY as TINY_RUN
from conftest import run_interrupted, tiny_config

# Two epochs and three rounds: resume and kill tests need an epoch boundary inside a round.
IMP = ["train.epochs=2", "prune.rounds=3", "model.hidden=[32, 32]", "entropy.batch_size=700"]
TINY = [*TINY_RUN, *IMP]


def tiny(*extra):
    return tiny_config(*IMP, *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny()
    return cfg, imp.run(cfg, out)


def test_run_directory_contract(finished):
    cfg, run_dir = finished
    assert run_dir.name == cfg.run_id()
    for name in ("config.yaml", "meta.json", "rounds.csv", "labels.safetensors", "init.safetensors", "entropy.csv", "timings.csv"):
        assert (run_dir / name).is_file(), name
    rows = store.read_csv(run_dir / "rounds.csv")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for col in (
        "round",
        "sparsity",
        "train_acc_noisy",
        "train_acc_clean",
        "val_acc",
        "test_acc",
        "entropy",
        "phase",
        "train_pflops_dense",
        "train_pflops_sparse",
    ):
        assert col in rows[0]
    for r in rows:
        for col in ("train_acc_noisy", "train_acc_clean", "val_acc", "test_acc"):
            assert 0.0 <= r[col] <= 1.0
        assert r["sparsity"] == pytest.approx(1 - 0.5 ** r["round"], abs=1e-3)
    # cumulative compute grows, sparse-aware cost grows slower
    dense = [r["train_pflops_dense"] for r in rows]
    sparse = [r["train_pflops_sparse"] for r in rows]
    assert all(b > a for a, b in zip(dense, dense[1:]))
    assert sparse[-1] < dense[-1]

    labels = store.load_tensors(run_dir / "labels.safetensors")
    n = labels["clean"].numel()
    assert labels["flipped"].tolist() == list(range(int(0.2 * n)))  # reference rule: first floor(eps N)
    assert (labels["noisy"][labels["flipped"]] != labels["clean"][labels["flipped"]]).all()

    prev = None
    for i in range(4):
        rd = store.round_dir(run_dir, i)
        state = store.load_tensors(rd / "state.safetensors")
        masks = store.load_tensors(rd / "masks.safetensors")
        assert len(masks) == 3 and all(k.endswith(".weight") for k in masks)
        for k, m in masks.items():
            assert m.dtype == torch.bool
            assert (state[k][~m] == 0).all()  # pruned entries are zero in the saved weights
            if prev is not None:
                assert not (m & ~prev[k]).any()  # pruned stays pruned
        alive = sum(int(m.sum()) for m in masks.values())
        assert alive == rows[i]["alive_weights"]
        prev = masks


def test_resume_after_interruption_gives_identical_rounds(finished, tmp_path):
    cfg, ref_dir = finished

    run_dir = run_interrupted(cfg, tmp_path)
    assert store.finished_rounds(run_dir) == [0, 1]
    imp.resume(run_dir)
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()
    for i in range(4):
        a = store.load_tensors(store.round_dir(run_dir, i) / "state.safetensors")
        b = store.load_tensors(store.round_dir(ref_dir, i) / "state.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(finished, tmp_path):
    """A real SIGKILL while round 2 trains; `dsd2 resume` finishes with the same rounds.csv."""
    cfg, ref_dir = finished
    args = [sys.executable, "-m", "dsd2.cli", "run", "tiny_mnist1d", *TINY, "train.epochs=2", "--out", str(tmp_path), "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / cfg.run_id()
    deadline = time.time() + 120
    while time.time() < deadline and not (store.round_dir(run_dir, 1) / store.MANIFEST).exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = store.finished_rounds(run_dir)
    assert 1 in done and len(done) < 4
    res = subprocess.run([sys.executable, "-m", "dsd2.cli", "resume", str(run_dir), "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()


def test_same_config_is_deterministic_and_finished_run_is_a_no_op(finished, tmp_path):
    cfg, ref_dir = finished
    before = (ref_dir / "rounds.csv").read_bytes()
    imp.run(cfg, ref_dir.parent)  # already finished: nothing retrained
    assert (ref_dir / "rounds.csv").read_bytes() == before


def test_config_mismatch_and_lock(finished, tmp_path):
    cfg, ref_dir = finished
    with pytest.raises(UserError, match="different config"):
        imp.run(tiny("seed=5"), run_dir=ref_dir)
    with store.run_lock(ref_dir):
        with pytest.raises(UserError, match="in use"):
            with store.run_lock(ref_dir):
                pass


@pytest.mark.parametrize("mode", ["lottery", "reinit", "late_rewind", "finetune"])
def test_retraining_modes(mode, tmp_path):
    cfg = tiny(f"prune.retrain={mode}", "prune.rounds=1", "prune.rewind_epoch=1", "prune.finetune_epochs=1")
    ctx_dir = tmp_path / "ctx"
    ctx = imp.prepare(cfg, ctx_dir)
    init = store.load_tensors(ctx_dir / "init.safetensors")
    if mode == "late_rewind":
        snap = imp.RewindSnapshot(ctx_dir, cfg.prune.rewind_epoch)
        from dsd2.train import EpochLog

        with torch.no_grad():
            for p in ctx.model.parameters():
                p.add_(1.0)
        snap.epoch_end(0, cfg.train.epochs, EpochLog(epoch=1, lr=0.1, loss=0.0, acc=0.0), ctx.model)
        rewind = store.load_tensors(ctx_dir / "rewind.safetensors")
        assert all(torch.equal(rewind[k], v + 1.0) for k, v in init.items() if v.is_floating_point())
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.mul_(3.0).add_(0.5)  # "trained" weights
    trained = imp.state_dict_cpu(ctx.model)
    imp.reset_weights(ctx, 1, full_masks(ctx.weights))
    after = imp.state_dict_cpu(ctx.model)
    if mode == "lottery":
        assert all(torch.equal(after[k], init[k]) for k in init)
    elif mode == "late_rewind":
        assert all(torch.equal(after[k], init[k] + 1.0) for k in init if init[k].is_floating_point())
    elif mode == "reinit":
        assert not any(torch.equal(after[k], init[k]) for k in init if k.endswith("weight"))
        assert not any(torch.equal(after[k], trained[k]) for k in init if k.endswith("weight"))
    else:
        assert all(torch.equal(after[k], trained[k]) for k in trained)
        s = imp.schedule_for(cfg, 1)
        assert (s.kind, s.lr, s.epochs) == ("constant", cfg.prune.finetune_lr, 1)
    if mode == "late_rewind":
        s = imp.schedule_for(cfg, 1)
        assert s.start_epoch == 1 and s.lr_at(1) == pytest.approx(
            cfg.train.lr * 0.5 * (1 + __import__("math").cos(__import__("math").pi / 2))
        )
    # the whole mode runs end to end
    run_dir = imp.run(cfg, tmp_path / "runs")
    assert len(store.read_csv(run_dir / "rounds.csv")) == 2


def test_kd_student_run_uses_teacher(finished, tmp_path):
    cfg, teacher_dir = finished
    student = tiny("name=student", f"distill.teacher={teacher_dir}", "distill.round=best", "prune.rounds=1")
    run_dir = imp.run(student, tmp_path)
    info = store.read_json(run_dir / "teacher.json")
    rows = store.read_csv(teacher_dir / "rounds.csv")
    assert info["round"] == max(rows, key=lambda r: (r["val_acc"], r["round"]))["round"]
    assert info["selected_on"] == "val_acc"
    srows = store.read_csv(run_dir / "rounds.csv")
    # the teacher's forward passes are counted: a student round costs more than a vanilla round
    assert srows[0]["round_pflops_dense"] > rows[0]["round_pflops_dense"]
    with pytest.raises(UserError, match="not finished"):
        imp.run(tiny("name=student2", f"distill.teacher={teacher_dir}", "distill.round=9", "prune.rounds=0"), tmp_path)


def test_teacher_with_a_different_architecture(finished, tmp_path):
    cfg, teacher_dir = finished
    student = tiny("name=small_student", "model.hidden=[8]", f"distill.teacher={teacher_dir}", "distill.round=dense", "prune.rounds=1")
    run_dir = imp.run(student, tmp_path)
    info = store.read_json(run_dir / "teacher.json")
    assert info["round"] == 0 and info["choice"] == "dense"
    masks = store.load_tensors(store.round_dir(run_dir, 0) / "masks.safetensors")
    assert sum(m.numel() for m in masks.values()) == 40 * 8 + 8 * 10


def test_online_early_stop_stops_pruning(finished, tmp_path):
    cfg, ref_dir = finished
    ref_rows = store.read_csv(ref_dir / "rounds.csv")
    from dsd2.phases import plain_early_stop

    expected = plain_early_stop([r["val_acc"] for r in ref_rows])
    run_dir = imp.run(tiny("early_stop.rule=plain"), tmp_path)
    rows = store.read_csv(run_dir / "rounds.csv")
    decision = store.read_json(run_dir / "early_stop.json")
    assert decision["rule"] == "plain"
    if expected.stop_round is None:
        assert len(rows) == len(ref_rows)
    else:
        assert len(rows) == expected.stop_round + 1  # no round trained after the rule fired
        assert decision["stop_round"] == expected.stop_round
        assert decision["selected_round"] == expected.selected_round
    # identical rounds up to the stop: early stopping changes nothing before it fires
    for a, b in zip(rows, ref_rows):
        assert a["val_acc"] == b["val_acc"] and a["sparsity"] == b["sparsity"]


KILL = ["train.epochs=6", "train.batch_size=32", "model.hidden=[64, 64]", "prune.rounds=3", "entropy.enabled=false"]


def _progress(run_dir):
    """What a training process has written so far: round folders and epoch checkpoints, with mtimes."""
    out = []
    for p in sorted(run_dir.glob("round_*")):
        try:
            out.append((p.name, p.stat().st_mtime_ns))
        except FileNotFoundError:  # a partial checkpoint removed at the end of its round
            pass
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_identical_results(tmp_path):
    """Kill -9 at 5+ random moments (mid-epoch, mid-checkpoint, between rounds); every resume
    continues from the last epoch checkpoint and the end result equals an uninterrupted run."""
    import random

    cfg = tiny(*KILL)
    t0 = time.perf_counter()
    ref_dir = imp.run(cfg, tmp_path / "ref")
    epoch_s = (time.perf_counter() - t0) / ((cfg.prune.rounds + 1) * cfg.train.epochs)  # kill delays scale with it
    out = tmp_path / "killed"
    run_dir = out / cfg.run_id()
    args = ["-m", "dsd2.cli", "run", "tiny_mnist1d", *TINY, *KILL, "train.checkpoint_interval_s=0", "--out", str(out), "-q"]
    rng = random.Random(1234)
    kills, partial_seen = 0, 0
    while kills < 6:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until this process trains (it wrote an epoch checkpoint or finished a round), then
        # kill it at a random moment within the next couple of epochs
        start = _progress(run_dir)
        while proc.poll() is None and _progress(run_dir) == start:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 2.0) * epoch_s)
        if proc.poll() is not None:  # finished before the kill: nothing left to interrupt
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        partial_seen += any(run_dir.glob("round_*.partial.safetensors"))
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert kills >= 5, f"only {kills} kills landed; the run finished too fast"
    assert partial_seen >= 1, "no kill landed mid-round: the epoch checkpoint was never exercised"
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()
    for i in range(cfg.prune.rounds + 1):
        for name in ("state.safetensors", "masks.safetensors"):
            a = store.load_tensors(store.round_dir(run_dir, i) / name)
            b = store.load_tensors(store.round_dir(ref_dir, i) / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run_dir.glob("round_*.partial.safetensors"))


def test_epoch_checkpoint_resume_is_exact(tmp_path):
    """Resume from an epoch checkpoint written mid-round equals the uninterrupted round (in process)."""
    cfg = tiny("train.epochs=4", "prune.rounds=0", "train.checkpoint_interval_s=0", "entropy.enabled=false")
    ref_dir = imp.run(cfg, tmp_path / "ref")

    class Boom(Exception):
        pass

    from dsd2 import checkpoint

    real = checkpoint.save_epoch_state
    calls = []

    def save_then_die(path, **kw):
        real(path, **kw)
        calls.append(kw["next_epoch"])
        if kw["next_epoch"] == 2:
            raise Boom

    checkpoint.save_epoch_state = save_then_die
    try:
        with pytest.raises(Boom):
            imp.run(cfg, tmp_path / "cut")
    finally:
        checkpoint.save_epoch_state = real
    run_dir = tmp_path / "cut" / cfg.run_id()
    assert calls == [1, 2] and checkpoint.partial_path(run_dir, 0).is_file()
    imp.resume(run_dir)
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()
    a = store.load_tensors(store.round_dir(run_dir, 0) / "metrics.json".replace("metrics.json", "state.safetensors"))
    b = store.load_tensors(store.round_dir(ref_dir, 0) / "state.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_real_noise_from_a_cifar_n_style_label_file(tmp_path):
    """dataset.label_file: human labels replace the train labels (train part only), flipped recorded."""
    from conftest import write_mnist1d_label_file

    path = tmp_path / "MNIST1D_human.pt"
    d, worse = write_mnist1d_label_file(path)  # numpy arrays: the CIFAR-N format
    cfg = tiny("noise.kind=none", f"dataset.label_file={path}", "dataset.label_key=worse_label", "prune.rounds=0")
    run_dir = imp.run(cfg, tmp_path / "runs")
    labels = store.load_tensors(run_dir / "labels.safetensors")
    expected_noisy = torch.from_numpy(worse)[d.train_idx]
    assert torch.equal(labels["noisy"], expected_noisy)
    assert torch.equal(labels["flipped"], (expected_noisy != d.train_y).nonzero().squeeze(1))
    with pytest.raises(UserError, match="noise.kind=none"):
        tiny(f"dataset.label_file={path}")
    with pytest.raises(UserError, match="coarse"):
        imp.run(
            tiny("noise.kind=none", f"dataset.label_file={path}", "dataset.label_key=noisy_coarse_label", "prune.rounds=0"), tmp_path / "r3"
        )
    with pytest.raises(UserError, match="no labels named"):
        imp.run(tiny("noise.kind=none", f"dataset.label_file={path}", "dataset.label_key=nope", "prune.rounds=0"), tmp_path / "r2")


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny("train.tensorboard=true", "prune.rounds=1", "entropy.enabled=false")
    run_dir = imp.run(cfg, tmp_path)
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"epoch/loss", "epoch/lr", "round/test_acc", "round/sparsity"} <= set(tags)
    rows = store.read_csv(run_dir / "rounds.csv")
    logged = [e.value for e in acc.Scalars("round/test_acc")]
    assert logged == pytest.approx([r["test_acc"] for r in rows])
    assert len(acc.Scalars("epoch/loss")) == 2 * cfg.train.epochs


def test_memory_does_not_grow_across_rounds(tmp_path):
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    cfg = tiny("train.epochs=1", "prune.rounds=10", "prune.rate=0.3", "model.hidden=[64, 64]")
    seen = []
    imp.run(cfg, tmp_path, on_round=lambda row: seen.append(rss_mb()))
    assert len(seen) == 11
    assert seen[-1] - seen[2] < 8.0, f"resident memory grew across rounds: {seen}"


def test_normalisation_override(tmp_path):
    ctx = imp.prepare(tiny("dataset.mean=[0.5]", "dataset.std=[2.0]"), tmp_path)
    assert (ctx.train_batches.mean, ctx.train_batches.std) == ((0.5,), (2.0,))
    with pytest.raises(UserError, match="together"):
        tiny("dataset.mean=[0.5]")
    with pytest.raises(UserError, match="channel"):
        imp.prepare(tiny("dataset.mean=[0.5, 0.5]", "dataset.std=[1.0, 1.0]"), tmp_path / "b")


def test_a_hand_edited_config_is_refused_on_resume(finished, tmp_path):
    """Editing config.yaml between sessions would train later rounds with another config."""
    import shutil

    import yaml

    cfg, run_dir = finished
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    shutil.rmtree(store.round_dir(edited, 3))
    data = yaml.safe_load((edited / "config.yaml").read_text())
    data["train"]["lr"] = 0.5
    (edited / "config.yaml").write_text(yaml.safe_dump(data))
    before = (edited / "rounds.csv").read_bytes()
    with pytest.raises(UserError, match="was edited after the run started.*--lr-scale"):
        imp.resume(edited)
    assert (edited / "rounds.csv").read_bytes() == before
    assert not store.round_dir(edited, 3).exists()


def test_more_rounds_extend_a_finished_run(finished, tmp_path):
    """prune.rounds=3 after a finished prune.rounds=1 run trains rounds 2-3 in the same folder,
    identical to an uninterrupted 3-round run, and records the extension."""
    cfg, ref_dir = finished
    short = tiny("prune.rounds=1")
    run_dir = imp.run(short, tmp_path)
    assert run_dir.name == cfg.run_id()
    assert store.finished_rounds(run_dir) == [0, 1]
    assert imp.run(cfg, tmp_path) == run_dir
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()
    meta = store.read_json(run_dir / "meta.json")
    assert [(e["rounds_from"], e["rounds_to"]) for e in meta["extensions"]] == [(1, 3)]
    assert meta["config_digest"] == cfg.digest()
    imp.resume(run_dir)  # the rewritten config.yaml matches the recorded digest
    # asking fewer rounds than the run holds trains nothing and changes nothing
    before = (run_dir / "rounds.csv").read_bytes()
    assert imp.run(short, tmp_path) == run_dir
    assert (run_dir / "rounds.csv").read_bytes() == before
    assert store.read_json(run_dir / "meta.json") == meta


def test_an_extension_that_fails_to_start_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """A student extended from another folder, where its relative teacher path is not found, failed
    after config.yaml and meta.json took the new count: the run then said "2 of 3 rounds" and
    export --round best refused it. A failed start now restores both."""
    from dsd2 import rundir
    from dsd2.imp import loop

    short = tiny("prune.rounds=1")
    run_dir = imp.run(short, tmp_path)
    before = {n: (run_dir / n).read_bytes() for n in ("config.yaml", "meta.json")}

    def fails(*args, **kwargs):
        raise UserError("teacher not found")

    monkeypatch.setattr(loop, "start", fails)
    with pytest.raises(UserError, match="teacher not found"):
        imp.run(tiny("prune.rounds=2"), tmp_path)
    assert {n: (run_dir / n).read_bytes() for n in ("config.yaml", "meta.json")} == before
    assert rundir.is_complete(rundir.read_config(run_dir), 2, run_dir)


def test_a_run_named_by_the_old_rounds_counting_id_is_extended(tmp_path):
    """Run folders of the earlier scheme (whose id counted prune.rounds) are found and extended."""
    short = tiny("prune.rounds=0")
    run_dir = imp.run(short, tmp_path)
    meta = store.read_json(run_dir / "meta.json")
    meta["config_hash"] = meta.pop("config_digest")  # what the earlier version recorded
    store.write_json(run_dir / "meta.json", meta)
    old = run_dir.rename(tmp_path / short.legacy_run_ids()[0])
    extended = imp.run(tiny("prune.rounds=1"), tmp_path)
    assert extended == old
    assert store.finished_rounds(old) == [0, 1]


def test_an_early_stopped_run_is_not_extended(tmp_path):
    stopping = ("early_stop.rule=plain", "train.lr=5")  # lr 5 diverges to chance: round 1 drops, the rule fires
    run_dir = imp.run(tiny("prune.rounds=2", *stopping), tmp_path)
    assert store.read_json(run_dir / "early_stop.json")["stop_round"] == 1
    with pytest.raises(UserError, match="ended by its early-stop rule"):
        imp.run(tiny("prune.rounds=3", *stopping), tmp_path)
    assert "extensions" not in store.read_json(run_dir / "meta.json")


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    cfg = tiny("model.hidden=[200000, 200000]")  # 160 GB of weights
    with pytest.raises(UserError, match="does not fit in memory"):
        imp.run(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # an existing run is never removed by a failed resume
    run_dir = imp.run(tiny("prune.rounds=0"), tmp_path)
    (run_dir / "labels.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError):
        imp.run(tiny("prune.rounds=0"), tmp_path)
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_compiled_training_resumes_exactly_and_keeps_the_run_id(finished, tmp_path):
    """train.compile=true: same run directory (not in the run id), and an interrupted compiled run
    resumes to the uninterrupted compiled run's numbers (compiled kernels are deterministic on
    CPU; against eager mode only close, not bitwise)."""
    cfg, eager_dir = finished
    compiled = tiny("train.compile=true")
    assert compiled.run_id() == cfg.run_id()
    ref_dir = imp.run(compiled, tmp_path / "ref")

    run_dir = imp.resume(run_interrupted(compiled, tmp_path / "cut"))
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()
    ref = store.read_csv(ref_dir / "rounds.csv")
    eager = store.read_csv(eager_dir / "rounds.csv")
    assert [r["alive_weights"] for r in ref] == [r["alive_weights"] for r in eager]
    assert all(abs(a["train_loss"] - b["train_loss"]) < 0.05 for a, b in zip(ref, eager))
