"""Running an existing run with other execution settings: which overrides it accepts, and a study
moved or copied to another place (its teachers and label file at new paths, the same curves)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dsd2.config import RunConfig, validate_config
from dsd2.errors import UserError
from dsd2.rundir.layout import CONFIG, meta_path
from dsd2.rundir.read import read_config, read_meta


def with_overrides(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied: where and how it executes
    (:data:`~dsd2.config.EXECUTION_FIELDS`) and more rounds (an extension) are used; a setting
    that would change its numbers, or one its choices never read, is refused naming it."""
    from dsd2.config import EXECUTION_FIELDS, apply_overrides, differing_settings

    saved = read_config(run_dir)
    cfg = validate_config(apply_overrides(saved.resolved(), overrides), source="overrides")
    saved = moved_teachers_config(run_dir, saved, cfg)  # a teacher at its new place (a moved study): a location
    changed = differing_settings(saved, cfg)
    if changed:
        raise UserError(
            f"{', '.join(changed)} would change the numbers of the run in {run_dir}: start a new run with "
            f"`dsd2 run {Path(run_dir) / CONFIG} {' '.join(overrides)}`"
        )
    if cfg.name != saved.name:  # the folder is named after it: a run directory keeps its name
        raise UserError(
            f"name names the run directory {run_dir}, which keeps its name; to run these settings under another name "
            f"start a new run with `dsd2 run {Path(run_dir) / CONFIG} {' '.join(overrides)}`"
        )
    usable = {f"{s}.{k}" for s, k in EXECUTION_FIELDS} | {"prune.rounds"}
    saved_all, now_all = saved.resolved(), cfg.resolved()
    unread = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in usable and _dotted(saved_all, key) != _dotted(now_all, key):
            unread.append(key)
    if unread:
        raise UserError(
            f"{', '.join(unread)}: not read by the run in {run_dir} (an option of a choice it did not make, "
            "e.g. distill.* without a teacher): leave it out, or start a new run with that choice"
        )
    return cfg


def moved_teachers_config(run_dir: str | Path, saved: RunConfig, cfg: RunConfig) -> RunConfig:
    """``saved`` (the config of the student in ``run_dir``) naming its teachers where ``cfg`` names
    them, when those are the same teachers at another path (a moved or copied study): the same
    folder name (<name>-<hash>) and the config digest the student's recorded run id hash counted
    (schemes 5 on: each teacher's name and digest; the teacher's digest now, or one it had before
    its own location changes). A student of the scheme that hashed the teacher's path has no such
    record: the name must match (and the old path, if it still holds a run, hold this one); every
    start also checks the teacher's content against teacher.json (labels and round files,
    dsd2.distill.teacher.load_teacher) before anything is written. Another teacher is refused
    naming it. Without a move, ``saved`` as it is."""
    from dsd2.config.identity import config_hash, moved_teachers, teacher_identity, with_teachers_of

    moves = moved_teachers(saved, cfg)
    if not moves:
        return saved
    moved = with_teachers_of(saved, cfg)
    recorded = (read_meta(run_dir) if meta_path(run_dir).is_file() else {}).get("config_hash")
    by_id = recorded is None or recorded in _hashes_with_earlier_teachers(
        moved, [new for _, new in moves.values()]
    )  # None: nothing trained
    path_hashed = recorded == config_hash(saved, version=4)  # the scheme before: the teacher's path was hashed
    new_student = f"start a new student for it (`dsd2 run {Path(run_dir) / CONFIG} {{key}}={{new}}` makes another run directory)"
    for key, (old, new) in moves.items():
        now, before = teacher_identity(new), teacher_identity(old)
        if not isinstance(now, dict):
            raise UserError(f"{key}={new}: no dsd2 run there (no readable meta.json); give the folder its teacher run was moved to")
        if now["run"] != Path(old).name:
            raise UserError(
                f"{key}={new} is another teacher: run {now['run']}, while the student in {run_dir} learned from {Path(old).name}; "
                + new_student.format(key=key, new=new)
            )
        if not (by_id or (path_hashed and (not isinstance(before, dict) or before == now))):
            raise UserError(
                f"{key}={new}: run {now['run']} there is another curve than the teacher the student in {run_dir} learned from "
                "(its config digest differs: extended or retrained since); restore that teacher, or " + new_student.format(key=key, new=new)
            )
    return moved


def _hashes_with_earlier_teachers(cfg: RunConfig, paths: list[str]) -> set[str]:
    """The run id hashes (schemes 5 on) ``cfg`` has with each teacher at ``paths`` counted by its
    digest now or by one it had before a location change (a moved label file or teacher: its
    meta.json's execution_changes record the digest they replaced), not an extension's."""
    import itertools

    from dsd2.config.identity import ID_VERSION, config_hash, teacher_identity

    options = []
    for path in paths:
        now = teacher_identity(path)
        if not isinstance(now, dict):
            return set()
        options.append([now] + [{"run": now["run"], "digest": d} for d in _digests_before_moves(path, now["digest"])])
    return {
        config_hash(cfg, version=v, teachers=dict(zip(paths, combo, strict=True)))
        for combo in itertools.product(*options)
        for v in range(5, ID_VERSION + 1)
    }


def _digests_before_moves(run_dir: str | Path, digest: str) -> list[str]:
    """The digests the run in ``run_dir`` had for its current curve before location changes gave
    it ``digest``: its execution_changes followed back from ``digest`` while each one's ``to`` is the
    digest after it; an extension (recorded apart) breaks the chain, so a digest from before one,
    another curve, is never among them."""
    changes = read_meta(run_dir).get("execution_changes") if meta_path(run_dir).is_file() else None
    out: list[str] = []
    for change in reversed(changes if isinstance(changes, list) else []):
        moved = change.get("config_digest") if isinstance(change, dict) else None
        if not isinstance(moved, dict):
            continue  # threads, device, ...: the digest stayed
        if moved.get("to") != digest or not isinstance(moved.get("from"), str):
            break
        digest = moved["from"]
        out.append(digest)
    return out


def moved_note(cfg: RunConfig, run_dir: str | Path) -> str | None:
    """What ``cfg`` finds at another place than the run in ``run_dir`` recorded: its image folder,
    label file or teachers (said once the start has checked them: the images' and the label file's
    content against meta.json's fingerprint, a teacher's identity and round files), else None. Reusing a run is never silent."""
    from dsd2.config.identity import moved_teachers

    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        return None
    saved = read_config(path)
    parts = [f"{key} now {new} (was {old})" for key, (old, new) in moved_teachers(saved, cfg).items() if _place(new) != _place(old)]
    old_labels, labels = saved.dataset.label_file, cfg.dataset.label_file
    if old_labels and labels and _place(old_labels) != _place(labels):
        parts.append(f"dataset.label_file now {labels} (was {old_labels}; the same content, by its sha256)")
    old_root, root = saved.dataset.root, cfg.dataset.root
    if cfg.dataset.name == "image_folder" and old_root and root and _place(old_root) != _place(root):
        parts.append(f"dataset.root now {root} (was {old_root}; the same images, by their content fingerprint)")
    return f"the same run, its data and teachers at a new place: {'; '.join(parts)} (meta.json execution_changes)" if parts else None


def _place(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _dotted(data: Any, key: str) -> Any:
    """The value at ``key`` ("train.lr", "seed", "model") in nested ``data``; None when absent."""
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
