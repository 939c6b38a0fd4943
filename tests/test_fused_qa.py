"""Fused groups keep the contracts of unfused runs at their seams: identity and reuse, resume
after tampering, readers of a fused run, stop rules, per-run teachers and labels, error paths."""

from __future__ import annotations

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
    assert main(["run", "tiny_mnist1d", *TINY, "--seeds", "0,1", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "seed 0: finished on" in out and "seed 1: finished" not in out
