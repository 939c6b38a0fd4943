"""Retrying a run after a divergence: a lower learning rate from the next unfinished round
(:func:`set_lr_scale`, read by :func:`lr_scale_for`) and a restart of that round (:func:`restart_round`)."""

from __future__ import annotations

from pathlib import Path

from dsd2 import checkpoint, rundir, store
from dsd2.errors import UserError
from dsd2.file_schemas import LrScale, LrStep


def lr_scale_for(run_dir: Path, round_idx: int) -> float:
    """The learning-rate factor a resumed run applies from a round on (``dsd2 resume --lr-scale``)."""
    path = rundir.lr_scale_path(run_dir)
    if not path.is_file():
        return 1.0
    scale = 1.0
    for entry in _lr_history(path):
        if round_idx >= entry.from_round:
            scale = entry.scale
    return scale


def _lr_history(path: Path) -> list[LrStep]:
    hint = "it records `dsd2 resume --lr-scale`; restore it, or delete it and give --lr-scale again"
    return store.read_json(path, LrScale, hint=hint).history


def set_lr_scale(run_dir: Path, scale: float) -> int:
    """Record that rounds from the next unfinished one on train with ``scale`` × the configured lr.

    The retry after a divergence; rounds already finished keep their numbers, and the factor is
    part of the run directory (lr_scale.json, and each later round's metrics.json)."""
    if not 0.0 < scale <= 1.0:
        raise UserError(f"--lr-scale must be in (0, 1], got {scale}")
    from_round = len(rundir.finished_rounds(run_dir))
    if rundir.is_complete(rundir.read_config(run_dir), from_round, run_dir):
        raise UserError(f"{run_dir} is finished: no round is left to train with a lower lr (--lr-scale changes nothing)")
    path = rundir.lr_scale_path(run_dir)
    history = [h.model_dump() for h in _lr_history(path)] if path.exists() else []
    history = [h for h in history if h["from_round"] < from_round] + [{"from_round": from_round, "scale": scale}]
    store.write_json(path, {"history": history})
    return from_round


def restart_round(run_dir: Path) -> int:
    """Drop the epoch checkpoint of the next unfinished round, which then retrains from the last
    finished round's weights (after a divergence the checkpoint may hold diverged weights)."""
    next_round = len(rundir.finished_rounds(run_dir))
    checkpoint.partial_path(run_dir, next_round).unlink(missing_ok=True)
    return next_round
