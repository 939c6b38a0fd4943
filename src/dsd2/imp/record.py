"""The record steps of a run's start, one run-directory file each (labels, noise, init, teacher,
config.yaml, meta.json), each saying whether it writes when the file is missing or on every start;
and the records of a later change: more rounds (:func:`extend_rounds`), another place or way to
execute (:func:`record_execution`)."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dsd2 import __version__, distributed, rundir, store
from dsd2.config import RunConfig, config_hash, execution_changes, validate_config, with_execution
from dsd2.config.identity import moved_teachers, with_teachers_of
from dsd2.data import DataSplits
from dsd2.errors import UserError
from dsd2.imp.build import Built, data_seed, data_shape, init_seed
from dsd2.noise import NoisyLabels, noise_summary


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str | None:
    """The CPU's model name (Linux), cut short: with ``cpu_capability`` it says which kernels
    MKL and oneDNN chose, and so why the same config and seed differ between machines."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in itertools.islice(f, 200):
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()[:120] or None
    except OSError:
        pass
    return platform.processor()[:120] or None


def run_metadata(cfg: RunConfig) -> dict[str, Any]:
    import numpy
    import torchvision

    return {
        "dsd2": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector ISA torch's CPU kernels use
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),  # the run id's hash
        "config_digest": cfg.digest(),  # resume refuses a config.yaml edited since (an extension rewrites it)
        "data_seed": data_seed(cfg),
        "init_seed": init_seed(cfg),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def data_meta(data: DataSplits) -> dict[str, Any]:
    """meta.json's "data": the builder's shape, one sample's shape, the normalisation, the class
    names (None when the dataset has none), the data path (memory or stream) and, for image
    folders, the sha256 of the file list (a resumed run refuses another list)."""
    return {
        **data_shape(data),
        "input_shape": list(data.input_shape),
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": list(data.class_names) if data.class_names is not None else None,
        "loader": "stream" if data.streamed else "memory",
        "files_sha256": data.files_digest,
    }


def record_labels(run_dir: Path, data: DataSplits, labels: NoisyLabels) -> None:
    """``labels.safetensors``: written when missing; when present, checked against the labels this
    config produces (a mismatch is refused) and never rewritten."""
    path = rundir.labels_path(run_dir)
    tensors = {"clean": data.train_y, "noisy": labels.noisy, "flipped": labels.flipped, "train_idx": data.train_idx}
    if labels.soft is not None:  # only then: the files of hard-label runs stay as they were
        tensors["soft"] = labels.soft
    if labels.probe is not None:  # likewise: only runs with a memorisation probe list it
        tensors["probe"] = labels.probe
    if path.exists():
        saved = store.load_tensors(path)
        # train_idx too: a student's teacher check reads it from this file (runs from before it had none)
        for key in (
            "clean",
            "noisy",
            "flipped",
            *(k for k in ("soft", "probe") if k in tensors),
            *(["train_idx"] if "train_idx" in saved else []),
        ):
            if key not in saved or not torch.equal(saved[key], tensors[key].cpu()):
                raise UserError(
                    f"{path} does not match the labels this config produces ({key} differs): it was edited, or the data or noise "
                    "code changed since the run started; start a new run directory"
                )
        return
    store.save_tensors(path, tensors)


def record_noise(run_dir: Path, cfg: RunConfig, data: DataSplits, labels: NoisyLabels) -> None:
    """``noise.json``: the noise asked for and what it did to the train labels (realised rate,
    per-class flip rates, clean→noisy confusion counts); rewritten on every start (a pure
    function of the labels, which labels.safetensors pins)."""
    # the summary is of the run's own noise; the probe's flips are recorded apart (docs/noise.md)
    own = labels.noisy
    probe: dict[str, Any] | None = None
    if labels.probe is not None:
        own = labels.noisy.clone()
        own[labels.probe] = data.train_y[labels.probe.to(data.train_y.device)].to(own.device)
        probe = {
            "fraction": cfg.noise.probe,
            "num_probe": int(labels.probe.numel()),
            "seed": cfg.seed,
            "indices": "labels.safetensors: probe",
        }
    summary = noise_summary(data.train_y, own, data.num_classes)
    asked: dict[str, Any] = {"kind": cfg.noise.kind, "rate": cfg.noise.rate}
    if cfg.dataset.label_file:
        asked = {"kind": "human", "label_file": cfg.dataset.label_file, "label_key": cfg.dataset.label_key}
        if labels.soft is not None:  # the summary below is of the arg-max labels
            asked |= {"kind": "soft", "mean_clean_probability": float(labels.soft.gather(1, data.train_y.view(-1, 1)).mean())}
    elif cfg.noise.kind == "transition":
        asked = {
            "kind": "transition",
            "matrix": cfg.noise.matrix,
            "matrix_file": cfg.noise.matrix_file,
            "matrix_sha256": cfg.noise.matrix_sha256,
        }
    elif cfg.noise.kind == "instance":
        asked["instance_std"] = cfg.noise.instance_std
    elif cfg.noise.kind == "asymmetric" and cfg.noise.class_map is not None:
        asked["class_map"] = cfg.noise.class_map
    elif cfg.noise.kind_options():  # a plugin kind's own options, as it got them
        asked["options"] = cfg.noise.kind_options()
    record = {**asked, "class_names": list(data.class_names) if data.class_names else None, **summary}
    if probe is not None:  # only then: noise.json of runs without a probe stays as it was
        record["probe"] = probe
    store.write_json(run_dir / rundir.NOISE, record)


def record_init(run_dir: Path, built: Built) -> None:
    """``init.safetensors``: written when missing, never rewritten (build read it when present)."""
    path = rundir.init_path(run_dir)
    if not path.exists():
        store.save_tensors(path, built.init_state)


def record_teacher(run_dir: Path, built: Built) -> None:
    """``teacher.json`` of a distilling run: rewritten on every start (what the teachers checked
    against it are; run_teaching refuses a teacher that changed since)."""
    if built.teaching is not None:
        store.write_json(rundir.teacher_path(run_dir), built.teaching.info)


def record_config(run_dir: Path, cfg: RunConfig) -> None:
    """``config.yaml``: written when missing (:func:`located`); a started run's is changed only by
    an extension (:func:`extend_rounds`) or a change of execution (:func:`record_execution`)."""
    if not (run_dir / rundir.CONFIG).exists():
        store.write_yaml(run_dir / rundir.CONFIG, located(cfg).resolved())


def _check_data_matches(run_dir: Path, data: DataSplits) -> None:
    """A resumed run must read the data its finished rounds were trained on: same data path, same file list."""
    meta = rundir.read_meta(run_dir) if (run_dir / rundir.META).exists() else {}
    saved = meta.get("data")
    if not isinstance(saved, dict):
        return
    now = data_meta(data)
    if saved.get("loader", now["loader"]) != now["loader"]:
        raise UserError(
            f"{run_dir} was trained on the {saved['loader']} data path but this config now resolves to {now['loader']} "
            "(dataset.loader=auto and the decoded set's size against dataset.memory_budget_gb changed?): set dataset.loader="
            f"{saved['loader']} to resume, or start a new run"
        )
    if saved.get("files_sha256") is not None and saved["files_sha256"] != now["files_sha256"]:
        raise UserError(
            f"the image folder's file list changed since {run_dir} started (files added, removed or renamed): its finished "
            "rounds were trained on other files. Restore the folder, or start a new run directory"
        )


def record_meta(run_dir: Path, cfg: RunConfig, data: DataSplits, fingerprint: dict[str, Any]) -> None:
    """``meta.json``: written when missing; when present, the data is checked against it and (rank 0)
    this command's execution settings and a missing data fingerprint are added to it."""
    if not (run_dir / rundir.META).exists():
        recorded = data_meta(data) | ({"fingerprint": fingerprint} if fingerprint else {})
        # the digest of config.yaml as written: a relative dataset.label_file is recorded absolute
        store.write_json(run_dir / rundir.META, {**run_metadata(located(cfg)), "data": recorded})
        return
    _check_data_matches(run_dir, data)
    if distributed.is_main():  # the data loaded: this command's data folder, threads, ... are the run's now
        record_execution(run_dir, cfg)
        if fingerprint:
            _record_fingerprint(run_dir, fingerprint)


def record_run_files(run_dir: Path, cfg: RunConfig, built: Built) -> None:
    """The files a built run writes before its rounds: labels (every rank: the others check rank 0's),
    noise and teacher (rank 0), init (every rank: present by then on the others)."""
    record_labels(run_dir, built.data, built.labels)
    if distributed.is_main():
        record_noise(run_dir, cfg, built.data, built.labels)
    record_init(run_dir, built)
    if distributed.is_main():
        record_teacher(run_dir, built)


def _record_fingerprint(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Give a run started before data fingerprints (or before one of their parts, e.g. the loaded
    content) what it lacks; later starts are checked against it. A recorded part is never replaced."""
    meta = store.read_json(run_dir / rundir.META)
    if not (isinstance(meta, dict) and isinstance(meta.get("data"), dict)):
        return
    recorded = meta["data"].get("fingerprint")
    if recorded is None:
        meta["data"]["fingerprint"] = fingerprint
    elif isinstance(recorded, dict) and fingerprint.keys() - recorded.keys():
        meta["data"]["fingerprint"] = {**fingerprint, **recorded}
    else:
        return
    store.write_json(run_dir / rundir.META, meta)


def _pinned_root(saved: RunConfig, cfg: RunConfig) -> RunConfig:
    """``cfg`` with a new relative dataset.root and dataset.label_file made absolute: config.yaml
    records where the data is, not where it was from the folder this command ran in (a later
    resume from elsewhere)."""
    d = cfg.dataset
    root = d.root if d.root == saved.dataset.root else _absolute(d.root)
    labels = d.label_file if d.label_file == saved.dataset.label_file else _absolute(d.label_file)
    if root == d.root and labels == d.label_file:
        return cfg
    return cfg.model_copy(update={"dataset": d.model_copy(update={"root": root, "label_file": labels})})


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute from this command's folder (None, absolute and ~ paths as they are)."""
    if not path or Path(path).expanduser().is_absolute():
        return path
    return os.path.abspath(path)


def located(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a new run's config.yaml records it: a relative dataset.root and dataset.label_file
    (where the data is), the teacher runs and noise.matrix_file (a record) absolute, so a resume
    from another folder finds the data and the teachers. None of them is in the run id, so it stays as it is (the digest, a hash of
    config.yaml, is taken of this config)."""
    d = cfg.dataset
    root, labels, matrix = _absolute(d.root), _absolute(d.label_file), _absolute(cfg.noise.matrix_file)
    cfg = _absolute_teachers(cfg)
    if root == d.root and labels == d.label_file and matrix == cfg.noise.matrix_file:
        return cfg
    return cfg.model_copy(
        update={
            "dataset": d.model_copy(update={"root": root, "label_file": labels}),
            "noise": cfg.noise.model_copy(update={"matrix_file": matrix}),
        }
    )


def _absolute_teachers(cfg: RunConfig) -> RunConfig:
    """``cfg`` naming its teacher runs by absolute path: a student started from ``dsd2 pipeline --out
    pp`` resumes from any folder. The run id counts a teacher by its folder name and digest, not
    its path; ``distill.teacher=self`` is no path."""
    d = cfg.distill
    teacher = d.teacher if d.teacher is None or d.self_distill else _absolute(d.teacher)
    runs = [t.model_copy(update={"run": _absolute(t.run)}) for t in d.teachers]
    if teacher == d.teacher and all(a.run == b.run for a, b in zip(runs, d.teachers, strict=True)):
        return cfg
    return cfg.model_copy(update={"distill": d.model_copy(update={"teacher": teacher, "teachers": runs})})


def record_execution(run_dir: Path, cfg: RunConfig) -> None:
    """Where and how the run executes from now on (data folder, threads, device, workers, ...):
    ``cfg``'s, when they differ from config.yaml's: config.yaml takes them (a later `dsd2 resume`
    keeps them) and meta.json's ``execution_changes`` lists each change (when, which setting, from
    and to). They cannot change the numbers: the run id and the recorded digest leave them out."""
    saved = rundir.read_config(run_dir)
    cfg = _pinned_teachers(saved, _pinned_root(saved, cfg))
    changes = execution_changes(saved, cfg) | moved_teachers(saved, cfg)
    if not changes:
        return
    meta = store.read_json(run_dir / rundir.META)
    entry: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "round": len(rundir.finished_rounds(run_dir)),
        "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
    }
    now = with_teachers_of(with_execution(saved, cfg), cfg)
    if now.digest() != saved.digest():  # a teacher's path is in the digest: config.yaml's new one is recorded
        entry["config_digest"] = {"from": meta.get("config_digest"), "to": now.digest()}
        meta["config_digest"] = now.digest()
    meta["execution_changes"] = [*meta.get("execution_changes", []), entry]
    store.write_yaml(run_dir / rundir.CONFIG, now.resolved())
    store.write_json(run_dir / rundir.META, meta)


def _pinned_teachers(saved: RunConfig, cfg: RunConfig) -> RunConfig:
    """``cfg`` with the teachers it names at a new place (a moved study) recorded absolute, as
    dataset.root: a later resume from another folder finds them."""
    moves = moved_teachers(saved, cfg)
    if not moves:
        return cfg
    data = cfg.resolved()
    d, before = data["distill"], saved.resolved()["distill"]
    if d["teacher"] is not None and d["teacher"] != before["teacher"]:
        d["teacher"] = os.path.abspath(os.path.expanduser(d["teacher"]))
    for spec, was in zip(d["teachers"], before["teachers"], strict=False):
        if spec["run"] != was["run"]:
            spec["run"] = os.path.abspath(os.path.expanduser(spec["run"]))
    return with_teachers_of(cfg, validate_config(data, source="config"))


def extend_rounds(run_dir: Path, saved: RunConfig, cfg: RunConfig) -> None:
    """Record that ``cfg`` asks more rounds than the run was started with: config.yaml takes the
    new count, meta.json its digest and the extension (from, to, when, by which version)."""
    meta = rundir.read_meta(run_dir)
    extension = {
        "rounds_from": saved.prune.rounds,
        "rounds_to": cfg.prune.rounds,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dsd2": __version__,
        "git_commit": _git_commit(),
    }
    meta["extensions"] = [*meta.get("extensions", []), extension]
    # the saved execution settings and teacher paths stay until start() records the change (record_execution)
    extended = with_teachers_of(with_execution(cfg, saved), saved)
    meta["config_digest"] = extended.digest()
    store.write_yaml(run_dir / rundir.CONFIG, extended.resolved())
    store.write_json(run_dir / rundir.META, meta)
