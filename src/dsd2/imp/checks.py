"""What a start checks against a run directory before building: the config it was started with
(:func:`check_config_matches`: edited, another run, an extension it cannot take) and the data
fingerprint of the run and its teachers (:func:`checked_fingerprint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsd2 import rundir, store
from dsd2.config import RunConfig, config_hash, default_gradual_window, differing_settings, with_execution
from dsd2.data.fingerprint import content_digest, data_fingerprint, fingerprint_mismatch
from dsd2.errors import UserError
from dsd2.layer_defaults import prunes_classes


def _started_meta(run_dir: Path) -> dict[str, Any] | None:
    """meta.json as the run's start wrote it; None only when a start was killed before writing it
    (nothing trained). Trained rounds without it are refused: the guard it holds fails closed."""
    if not (run_dir / rundir.META).exists():
        if any(run_dir.glob("round_*")):
            raise UserError(
                f"{run_dir} has trained rounds but no {rundir.META} (deleted?): nothing proves {rundir.CONFIG} is the config "
                "they were trained with. Restore meta.json from a copy of the run, or start a new run directory"
            )
        return None
    return rundir.read_meta(run_dir)


def _recorded_digest(run_dir: Path, meta: dict[str, Any] | None) -> str | None:
    """The config digest ``meta`` (the run's meta.json, :func:`_started_meta`) recorded when the run
    started (or was extended); one without a digest, or with one of the wrong type, is refused."""
    if meta is None:
        return None
    # runs started before extensions existed recorded the digest as "config_hash" (their run id hash counted the rounds)
    recorded = meta["config_digest"] if "config_digest" in meta else meta.get("config_hash")
    if not isinstance(recorded, str):
        raise UserError(
            f"{run_dir / rundir.META} lacks the config digest (config_digest missing or not a string): nothing proves "
            f"{rundir.CONFIG} is the config the finished rounds were trained with. Restore meta.json from a copy of the run, "
            "or start a new run directory"
        )
    return recorded


def check_config_matches(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """The config to run in ``run_dir``: ``cfg``, or the saved one when it asks more rounds.

    A config that differs from the saved one only by more rounds extends the run (see
    :func:`extend_rounds`); anything else is refused, and so is a new run that would prune away
    classes (:func:`dsd2.layer_defaults.prunes_classes`)."""
    if not (run_dir / rundir.META).exists():
        p = cfg.prune
        if why := prunes_classes(p.method, p.criterion, p.allocation, p.include_classifier):
            raise UserError(f"{cfg.name}: {why}")
    if not (run_dir / rundir.CONFIG).exists():
        return cfg
    saved = rundir.read_config(run_dir)
    meta = _started_meta(run_dir)
    recorded = _recorded_digest(run_dir, meta)
    if recorded is not None and saved.digest() != recorded:
        raise UserError(
            f"{run_dir / rundir.CONFIG} was edited after the run started (its hash {saved.digest()} is not the recorded "
            f"{recorded}): finished rounds were trained with another config. Start a new run with the changed config "
            "(`dsd2 run CONFIG`), extend it with more rounds (`dsd2 run CONFIG prune.rounds=N`), or, to retry a diverged "
            "run with a lower learning rate, `dsd2 resume RUN_DIR --lr-scale 0.1`"
        )
    saved = rundir.moved_teachers_config(run_dir, saved, cfg)  # its teachers at a new place: a location (record_execution)
    _refuse_earlier_gradual_window(run_dir, saved, cfg, meta or {})
    if saved.run_id() != cfg.run_id():
        differ = ", ".join(differing_settings(saved, cfg)) or "name"
        raise UserError(
            f"{run_dir} holds a run of a different config ({saved.run_id()}; {differ} would change its numbers): start a new "
            "run (`dsd2 run CONFIG`), or choose another --out"
        )
    if cfg.prune.rounds <= saved.prune.rounds:
        # the first rounds of a longer curve are this curve: nothing new to decide; where and
        # how it runs (data folder, threads, device, ...) are this command's (record_execution)
        return with_execution(saved, cfg)
    stop = rundir.stopped_at(run_dir)
    if saved.early_stop.rule != "none" and stop is not None:
        raise UserError(
            f"{run_dir} was ended by its early-stop rule ({saved.early_stop.rule}) at round {stop}: more rounds would not be "
            "trained. To go on past the stop, run the same config with early_stop.rule=none (a new run)"
        )
    floor = rundir.floor_stopped_at(run_dir)
    if floor is not None:
        raise UserError(
            f"{run_dir} was ended after round {floor}: its next round would remove no channel (the floor prune.min_channels="
            f"{saved.prune.min_channels}, or prune.rate rounding to none; floor_stop.json says which), so more rounds cannot be "
            "trained. For more rounds start a new run with a lower prune.min_channels, another prune.rate, or fewer layers "
            "pruned (prune.include / prune.exclude)"
        )
    return cfg


def _refuse_earlier_gradual_window(run_dir: Path, saved: RunConfig, cfg: RunConfig, meta: dict[str, Any]) -> None:
    """A gradual run with prune.gradual_end unset that an earlier scheme started (its recorded id
    hash is not today's, which hashes the new window) pruned until the last epoch; today's default
    leaves the last quarter to train. Its rounds stay readable (show, export, report), but training
    more of them, by resuming or extending it, would mix the two schedules in one curve."""
    if not default_gradual_window(saved) or meta.get("config_hash") in (
        config_hash(saved),
        config_hash(saved, version=5),
        config_hash(saved, version=4),
    ):
        return
    done = len(rundir.finished_rounds(run_dir))
    if done and rundir.is_complete(saved, done, run_dir) and cfg.prune.rounds <= saved.prune.rounds:
        return  # nothing to train: it is only shown
    last = max(0, saved.train.epochs - 1)
    raise UserError(
        f"{run_dir} is a gradual run started before gradual pruning left the last quarter of the epochs to train (its "
        "rounds pruned until the last epoch): more rounds would prune on another schedule. Show, export or report it as "
        f"it is; to train a curve start a new run: `dsd2 run {run_dir / rundir.CONFIG}` (today's window) or add "
        f"prune.gradual_end={last} (the old one)"
    )


def _recorded_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / rundir.META
    meta = store.read_json(path) if path.is_file() else None
    data = meta.get("data") if isinstance(meta, dict) else None
    found = data.get("fingerprint") if isinstance(data, dict) else None
    return found if isinstance(found, dict) else None


def checked_fingerprint(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The fingerprint of the data ``cfg`` reads (dsd2.data.fingerprint; empty for a built-in
    dataset), refused when it differs from the one ``run_dir`` or its teachers recorded: a run
    never goes on, and a student never distils, on data other than its rounds were trained on."""
    d = cfg.dataset
    now = data_fingerprint(d.name, d.root, d.label_file, follow_links=d.follow_links)
    if not now:
        return now
    recorded = _recorded_fingerprint(run_dir)
    change = fingerprint_mismatch(recorded, now) if recorded is not None else None
    if change is not None:
        raise UserError(
            f"{run_dir} was trained on other data: {change}. Restore the data it was trained on, or run this data as a new "
            "run (another name=NAME or --out)"
        )
    for teacher in _teacher_dirs(cfg):
        found = _recorded_fingerprint(teacher)
        change = fingerprint_mismatch(found, now) if found is not None else None
        if change is not None:
            raise UserError(f"teacher {teacher} was trained on other data than this student reads: {change}. Train a teacher on this data")
    return now


def checked_content(cfg: RunConfig, run_dir: Path, splits: Any) -> dict[str, Any]:
    """``{"content": sha256}`` of the loaded data (:func:`dsd2.data.fingerprint.content_digest`),
    refused when it differs from the one ``run_dir`` or its teachers recorded: a built-in dataset
    at another dataset.root that holds other samples or labels (the id does not see the root)
    trained on, or a student distilling on images its teacher never saw."""
    digest = content_digest(splits)
    if digest is None:
        return {}
    recorded = (_recorded_fingerprint(run_dir) or {}).get("content")
    if isinstance(recorded, str) and recorded != digest:
        raise UserError(
            f"{run_dir} was trained on other data: the {splits.name} samples or labels this config loads differ from those its "
            f"rounds were trained on (content sha256 {recorded[:12]}… then, {digest[:12]}… now; dataset.root, the files there or "
            "the generator changed?). Restore the data it was trained on, or run this data as a new run (another name=NAME or --out)"
        )
    for teacher in _teacher_dirs(cfg):
        theirs = (_recorded_fingerprint(teacher) or {}).get("content")
        if isinstance(theirs, str) and theirs != digest:
            raise UserError(
                f"teacher {teacher} was trained on other data than this student loads (content sha256 {theirs[:12]}… there, "
                f"{digest[:12]}… here; dataset.root or the files there differ?). Give the student the teacher's data, or train a teacher on this data"
            )
    return {"content": digest}


def _teacher_dirs(cfg: RunConfig) -> list[Path]:
    d = cfg.distill
    if d.self_distill:
        return []
    return [Path(r) for r in ([d.teacher] if d.teacher else [t.run for t in d.teachers])]
