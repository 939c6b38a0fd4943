"""The student's objective from ``distill.*``: one teacher, several teachers, or itself (docs/distillation.md).

:func:`run_teaching` is what a run starts with; :func:`self_teaching` what round i >= 1 of a
self-distilling run switches to (its round i-1, read back from the run directory, so a resumed
run gets exactly the teacher an uninterrupted one had).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import distributed, rundir, store
from dsd2.config import RunConfig
from dsd2.distill.feature import HintObjective
from dsd2.distill.teacher import KDObjective, TeacherEnsemble, load_teacher, load_teachers
from dsd2.errors import UserError
from dsd2.file_schemas import TeacherFile
from dsd2.train import Source, logits_of


@dataclass
class Teaching:
    """A student's objective and what the compute accounting needs of its teachers.

    ``teacher``: the module whose forward is the teachers' cost per batch (one teacher, or a
    :class:`TeacherEnsemble`); ``masks``: its weight masks; ``info``: what teacher.json records
    (a dict for one teacher, a list for several); ``cache_round``: the round charged with the one
    teacher pass that filled the cached logits (None when the teachers run every step)."""

    objective: KDObjective | HintObjective | None
    teacher: nn.Module | None
    masks: dict[str, torch.Tensor] | None
    info: dict[str, Any] | list[dict[str, Any]]
    cache_round: int | None


def _frozen(model: nn.Module, channels_last: bool) -> nn.Module:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _cache(cfg: RunConfig, teachers: list[nn.Module], batches: Source) -> list[torch.Tensor] | None:
    """Each teacher's logits per training row when the batches are unaugmented (they never change then)."""
    if batches.augmented:
        return None
    return [logits_of(t, batches, batch_size=cfg.train.eval_batch_size, amp=cfg.train.amp) for t in teachers]


def _hint(cfg: RunConfig, student: nn.Module, teacher: nn.Module, batches: Source, seed: int) -> HintObjective:
    """Feature distillation's objective (the teacher runs every step: its hints are not cached)."""
    d, f = cfg.distill, cfg.distill.feature
    assert f is not None
    if distributed.world().distributed:
        # the adapter is not in the DDP-wrapped model: its gradients would not be averaged over the ranks
        raise UserError("distill.feature is not supported in a data-parallel (torchrun) job yet: run it in one process")
    return HintObjective(
        student,
        teacher,
        student_layer=f.student_layer,
        teacher_layer=f.teacher_layer,
        beta=f.weight,
        alpha=d.alpha,
        temperature=d.temperature,
        example=batches.example(2),
        seed=seed,
        amp=cfg.train.amp,
    )


def run_teaching(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    data: Any,
    labels: Any,
    batches: Source,
    channels_last: bool,
    student: nn.Module | None = None,
) -> Teaching | None:
    """The objective a run starts with: None without distillation; for self-distillation no
    teacher yet (round 0 trains with plain CE); else the configured teacher(s), checked against
    the student and against the teacher.json a resumed run recorded."""
    d = cfg.distill
    if not d.enabled:
        if d.feature is not None:
            raise UserError("distill.feature needs a teacher: set distill.teacher=<run directory> or self (or run it as a pipeline)")
        return None
    if d.self_distill:
        return Teaching(None, None, None, self_info(), None)
    recorded = _recorded_teachers(run_dir, several=d.teacher is None, count=len(d.teachers))
    checks = (cfg, data, labels)
    if d.teacher is not None:  # the single-teacher form: unchanged (a dict in teacher.json)
        model, info, masks = load_teacher(d.teacher, d.round, device=device, student=checks, recorded=recorded)
        model = _frozen(model, channels_last)
        if d.feature is not None:
            assert student is not None
            return Teaching(_hint(cfg, student, model, batches, cfg.seed), model, masks, info, None)
        cached = _cache(cfg, [model], batches)
        objective = KDObjective(
            model, alpha=d.alpha, temperature=d.temperature, amp=cfg.train.amp, cached_logits=None if cached is None else cached[0]
        )
        return Teaching(objective, model, masks, info, None if cached is None else 0)
    models, infos, masks_list = load_teachers(d.teachers, device=device, student=checks, recorded=recorded)
    models = [_frozen(m, channels_last) for m in models]
    weights = [i["weight"] for i in infos]
    cached = _cache(cfg, models, batches)
    objective = KDObjective(models, alpha=d.alpha, temperature=d.temperature, amp=cfg.train.amp, cached_logits=cached, weights=weights)
    ensemble = TeacherEnsemble(models, weights)
    return Teaching(objective, ensemble, TeacherEnsemble.masks_of(masks_list), infos, None if cached is None else 0)


def _recorded_teachers(run_dir: Path, *, several: bool, count: int) -> Any:
    """What teacher.json recorded when the student started (None for a fresh start). A student
    that has started (meta.json written) must have it, with a fingerprint per teacher: a deleted
    file or digest would otherwise switch off the check that its teacher did not change."""
    path = rundir.teacher_path(run_dir)
    if not rundir.meta_path(run_dir).exists() and not path.exists():
        return None
    how = "Restore teacher.json from a copy of the run, or start a new student run directory"
    if not path.exists():
        raise UserError(
            f"{run_dir} is a student run that has started but has no {rundir.TEACHER} (deleted?): its teacher cannot be checked. {how}"
        )
    recorded = store.read_json_dict(path, TeacherFile, hint=how)
    if several != isinstance(recorded, list) or (several and len(recorded) != count):
        raise UserError(f"{path} does not record the teacher(s) this config names (one teacher vs a list, or another count). {how}")
    if any(not isinstance(entry.get("digest"), str) for entry in (recorded if several else [recorded])):
        raise UserError(f"{path} lacks a teacher's fingerprint (digest): the teacher cannot be checked. {how}")
    return recorded


def self_info() -> dict[str, Any]:
    return {
        "self": True,
        "rule": "round i >= 1 distils from this run's own round i-1 (its saved state and masks); round 0 trains with plain CE",
    }


def self_teaching(
    cfg: RunConfig,
    run_dir: Path,
    round_idx: int,
    device: torch.device,
    batches: Source,
    channels_last: bool,
    student: nn.Module | None = None,
) -> Teaching:
    """Self-distillation's objective for round ``round_idx`` >= 1: the student of round i-1 as it
    was saved (round_XXX/state.safetensors, its masks applied), frozen."""
    model, masks, _ = rundir.load_round_model(run_dir, round_idx - 1, device=device)
    model = _frozen(model, channels_last)
    if cfg.distill.feature is not None:
        assert student is not None
        return Teaching(_hint(cfg, student, model, batches, cfg.seed), model, masks, self_info(), None)
    cached = _cache(cfg, [model], batches)
    d = cfg.distill
    objective = KDObjective(
        model, alpha=d.alpha, temperature=d.temperature, amp=cfg.train.amp, cached_logits=None if cached is None else cached[0]
    )
    # a new teacher every round: the pass that fills its cache is charged to the round it teaches
    return Teaching(objective, model, masks, self_info(), None if cached is None else round_idx)
