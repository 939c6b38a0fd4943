"""One IMP run data-parallel (dsd2.distributed): 2 CPU processes with gloo against one process.

What must be equal, and why. With the same global batch (train.batch_size) every rank draws the
same permutation from the same seeded round generator and trains on its contiguous slice of each
one-process batch, so the samples, their order, their labels and (for images) their augmentation
are those of one process. Each rank's mean loss is weighted by its share of the batch, so the
gradient DDP averages is the gradient of the global batch's mean loss. What differs is only the
order of floating-point additions (two half-batch sums added by the all-reduce instead of one
sum over the batch), a relative error of about 1e-7 per step in float32. Hence:

* exactly equal: masks, sparsity, alive weights, epochs, the FLOP columns (counted from the
  global number of samples), the config and the run's file list;
* weights: |difference| <= 1e-5 (observed: 2e-7 after 3 rounds of 2 epochs);
* train_loss: relative 1e-5 (the epoch loss is summed over the ranks in float64);
* accuracies and entropy: predictions and ON counts are per sample, summed over the ranks, so they
  are equal unless a weight difference of ~1e-7 moves a sample across a decision boundary; we
  allow one sample per split (observed: exactly equal).

The model is an MLP without BatchNorm: with BN each rank normalises over its own half batch (as
DDP always does without SyncBatchNorm), so BN models match a one-process run only statistically.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dsd2 import distributed, store
from dsd2.errors import UserError
from dsd2.train.sources import _rank_positions

TINY = ["train.epochs=2", "prune.rounds=2", "prune.rate=0.5", "model.hidden=[16,16]", "dataset.val_size=300", "train.threads=1"]
EXACT = ["round", "sparsity", "alive_weights", "epochs", "phase"] + [
    f"{k}_pflops_{c}" for k in ("round", "train") for c in ("dense", "sparse", "paper")
]
ACCURACIES = ["train_acc_noisy", "train_acc_clean", "train_acc_flipped", "flipped_acc_clean", "unflipped_acc", "val_acc", "test_acc"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


# ----------------------------------------------------------------------------- pure pieces (fast)


@pytest.mark.parametrize("count,size", [(10, 2), (7, 2), (7, 3), (1, 2), (128, 8)])
def test_shards_cover_the_batch_once(count, size):
    bounds = [distributed.shard_bounds(count, r, size) for r in range(size)]
    assert [list(range(lo, hi)) for lo, hi in bounds] == [t.tolist() for t in torch.arange(count).tensor_split(size)]


def test_an_empty_share_runs_one_row_weighted_zero():
    assert distributed.step_rows(1, 1, 2) == (0, 1, 0)
    assert distributed.step_rows(5, 1, 2) == (3, 5, 2)


def test_rank_positions_are_the_ranks_slices_of_every_batch():
    # 10 rows, global batch 4, 2 ranks: batches [0..3] [4..7] [8, 9]
    assert _rank_positions(10, 4, 0, 2).tolist() == [0, 1, 4, 5, 8]
    assert _rank_positions(10, 4, 1, 2).tolist() == [2, 3, 6, 7, 9]
    both = np.sort(np.concatenate([_rank_positions(103, 8, r, 4) for r in range(4)]))
    assert both.tolist() == list(range(103))


def test_the_global_batch_must_split_evenly():
    assert distributed.check_global_batch(128, 8) == 16
    with pytest.raises(UserError, match="divisible"):
        distributed.check_global_batch(100, 8)


def test_one_process_is_no_job(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.session("cpu") as w:
        assert not w.distributed and w.main
        t = torch.ones(3)
        assert distributed.all_reduce_sum(t) is t and distributed.on_main(lambda: 5) == 5
        distributed.check_same({"a": t}, "masks")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with distributed.session("cpu") as w:
        assert w is distributed.SINGLE


def test_bad_launcher_variables_are_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UserError, match="RANK=5"):
        distributed.env_world()


# ----------------------------------------------------------------------------- real jobs (slow)


def _env() -> dict[str, str]:
    # 2 cores: one thread per rank; a free port per test for the rendezvous (--standalone picks one)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _dsd2(prefix: list[str], out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [*prefix, "-m", "dsd2", "run", "tiny_mnist1d", *TINY, *extra, "--out", str(out), "-q"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _run_dir(out: Path) -> Path:
    (d,) = out.iterdir()
    return d


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "rounds.csv") as f:
        return list(csv.DictReader(f))


def _assert_same_run(one: Path, two: Path, *, rounds: int = 2, smallest_split: int = 300) -> None:
    """The comparison of the module docstring."""
    rows1, rows2 = _rows(one), _rows(two)
    assert len(rows1) == len(rows2) == rounds + 1
    for a, b in zip(rows1, rows2):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-5)
        for k in ACCURACIES:
            if a[k] or b[k]:  # one sample of the smallest split
                assert abs(float(a[k]) - float(b[k])) <= 1 / smallest_split + 1e-12, k
        assert float(b["entropy"]) == pytest.approx(float(a["entropy"]), abs=1e-3)
    for r in range(rounds + 1):
        rd1, rd2 = one / f"round_{r:03d}", two / f"round_{r:03d}"
        m1, m2 = store.load_tensors(rd1 / "masks.safetensors"), store.load_tensors(rd2 / "masks.safetensors")
        assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
        s1, s2 = store.load_tensors(rd1 / "state.safetensors"), store.load_tensors(rd2 / "state.safetensors")
        for k in s1:
            torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=1e-5)
    assert (one / "config.yaml").read_text() == (two / "config.yaml").read_text()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    res = _dsd2([sys.executable], out)
    assert res.returncode == 0, res.stderr
    return _run_dir(out)


@pytest.mark.slow
def test_two_gloo_processes_train_the_one_process_run(tmp_path, one_process):
    res = _dsd2(TORCHRUN, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    two = _run_dir(tmp_path)
    _assert_same_run(one_process, two)
    meta = store.read_json(two / "meta.json")
    assert meta["distributed"] == {"world_size": 2, "global_batch": 128, "per_rank_batch": 64, "backend": "gloo"}
    assert "rounds.csv" in os.listdir(two) and not list(two.glob("*.partial.safetensors"))
    assert res.stdout.count("run directory:") == 1  # rank 1 prints no second table


@pytest.mark.slow
def test_an_odd_global_batch_is_refused_on_every_rank(tmp_path):
    res = _dsd2(TORCHRUN, tmp_path, "train.batch_size=127", timeout=120)
    assert res.returncode != 0 and "must be divisible" in res.stderr
    assert not any(tmp_path.iterdir())  # nothing was created


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_images_with_augmentation_on_both_data_paths(loader, tmp_path):
    """A conv net (LeNet-5, no BatchNorm) on an image folder with crop+flip: the resident path
    augments the whole global batch on every rank, the streamed one seeds each sample from its
    index, so both give the one-process samples. 25 training rows in global batches of 8: the
    last batch has 1 row, and rank 1 runs one row weighted 0."""
    import yaml

    from dsd2.config import apply_overrides
    from dsd2.data.testing import write_image_folder

    root = tmp_path / "imgs"
    write_image_folder(root, n_train=10, n_test=4)
    args = [
        "name=imf",
        "dataset.name=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=16",
        f"dataset.loader={loader}",
        "dataset.workers=0",
        "dataset.val_size=5",
        "model.name=lenet5",
        "train.epochs=2",
        "train.batch_size=8",
        "train.optimizer=adam",
        "train.lr=0.001",
        "train.device=cpu",
        "train.threads=1",
        "train.eval_batch_size=7",
        "prune.rounds=1",
        "prune.rate=0.5",
        "noise.rate=0.2",
        "entropy.batch_size=5",
    ]
    config = tmp_path / "imf.yaml"
    config.write_text(yaml.safe_dump(apply_overrides({}, args)))
    runs = {}
    for name, prefix in (("one", [sys.executable]), ("two", TORCHRUN)):
        cmd = [*prefix, "-m", "dsd2", "run", str(config), "--out", str(tmp_path / name), "-q"]
        res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = _run_dir(tmp_path / name)
    _assert_same_run(runs["one"], runs["two"], rounds=1, smallest_split=5)


def _worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun (``parent``) started, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
@pytest.mark.parametrize("rerun", ["torchrun", "one process"])
def test_killing_a_rank_stops_the_job_and_the_rerun_resumes(rerun, tmp_path, one_process):
    """Kill rank 1 while round 1 trains (after an epoch checkpoint): torchrun stops every rank and
    exits non-zero; the same command resumes (round 0 is not retrained) and ends with the run of
    one process, within the tolerances above. The world size is not part of the run: one process
    resumes the 2-process job as well (same global batch, same sample order)."""
    out = tmp_path / "runs"
    extra = ["train.checkpoint_interval_s=0"]
    cmd = [*TORCHRUN, "-m", "dsd2", "run", "tiny_mnist1d", *TINY, *extra, "--out", str(out), "-q"]
    job = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        partial = None
        while time.monotonic() < deadline and job.poll() is None:
            hits = list(out.glob("*/round_001.partial.safetensors")) if out.is_dir() else []
            if hits:
                partial = hits[0]
                break
            time.sleep(0.02)
        if partial is None:
            pytest.skip("the job finished round 1 before the test saw its epoch checkpoint (a very fast machine)")
        round0 = (partial.parent / "round_000" / "state.safetensors").stat().st_mtime_ns
        os.kill(_worker_pids(job.pid)[1], signal.SIGKILL)
        _, err = job.communicate(timeout=120)
        assert job.returncode != 0, err[-2000:]
    finally:
        if job.poll() is None:
            job.kill()
    again = cmd if rerun == "torchrun" else [sys.executable, *cmd[len(TORCHRUN) :]]
    res = subprocess.run(again, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = _run_dir(out)
    assert (run_dir / "round_000" / "state.safetensors").stat().st_mtime_ns == round0
    with_interval = tmp_path / "reference"
    shutil.copytree(one_process, with_interval)  # the interval is in the config: compare all but config.yaml
    (with_interval / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    _assert_same_run(with_interval, run_dir)
