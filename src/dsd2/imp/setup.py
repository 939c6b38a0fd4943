"""Setting a run up: device, seeds, data, noisy labels, the model, the run directory's files and
checks (config, data, extension), thread count; :class:`RunContext` holds what every round shares."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import __version__, checkpoint, distributed, rundir, store
from dsd2.config import RunConfig, config_hash, default_gradual_window, differing_settings, execution_changes, options_of, with_execution
from dsd2.data import DataSplits, ImageLoader, load_dataset
from dsd2.data.fingerprint import data_fingerprint, fingerprint_mismatch
from dsd2.data.image_folder import resolve_workers
from dsd2.distill.setup import run_teaching
from dsd2.errors import UserError
from dsd2.file_schemas import LrScale, LrStep
from dsd2.flops import step_flops
from dsd2.layer_defaults import prunes_classes
from dsd2.models import build_model, prunable_weights
from dsd2.noise import FeatureSource, NoisyLabels, add_probe, apply_label_noise, noise_summary
from dsd2.prune import (
    Masks,
    add_slimming_penalty,
    composed,
)
from dsd2.registry import NOISE_MODELS, PRUNING_ALLOCATIONS
from dsd2.rundir import load_state
from dsd2.threads import Share, resolve_threads
from dsd2.train import (
    Objective,
    SoftTargets,
    Source,
    cross_entropy,
    make_source,
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def round_seed(seed: int, round_idx: int, stream: int = 0) -> int:
    """Independent, reproducible seed per (run seed, round, purpose)."""
    return (seed * 1_000_003 + round_idx * 7_919 + stream * 104_729) % (2**63 - 1)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),  # the run id's hash
        "config_digest": cfg.digest(),  # resume refuses a config.yaml edited since (an extension rewrites it)
        "data_seed": data_seed(cfg),
        "init_seed": init_seed(cfg),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- setup pieces


def data_seed(cfg: RunConfig) -> int:
    """Seed of the data split and subset: fixed by dataset.split_seed, else the run seed."""
    return cfg.seed if cfg.dataset.split_seed is None else cfg.dataset.split_seed


def init_seed(cfg: RunConfig) -> int:
    """Seed of the initial weights; a KD student with student_init=independent draws its own."""
    if cfg.distill.enabled and cfg.distill.student_init == "independent":
        return round_seed(cfg.seed, 0, stream=5)
    return cfg.seed


# Dataset options passed to the loaders that take them (image_folder); a non-default value for a
# loader that does not take it is an error that names the key.
DATASET_OPTIONS = ("image_size", "loader", "memory_budget_gb", "workers", "follow_links")


def dataset_options(cfg: RunConfig) -> dict[str, Any]:
    """The dataset.* options of ``cfg`` for its loader: all of them for a loader that takes options,
    else only those set away from their defaults (which the loader then refuses, naming them)."""
    import inspect

    from dsd2.data import DATASETS

    d = cfg.dataset
    takes = inspect.signature(DATASETS.get(d.name)).parameters
    fields = type(d).model_fields
    return {k: getattr(d, k) for k in DATASET_OPTIONS if k in takes or getattr(d, k) != fields[k].default}


def build_data(cfg: RunConfig) -> DataSplits:
    d = cfg.dataset
    root = Path(d.root).expanduser() if d.root else None  # "~/data" in a YAML file or an override
    data = load_dataset(
        d.name,
        root,
        val_size=d.val_size,
        train_subset=d.train_subset,
        seed=data_seed(cfg),
        download=d.download,
        augment=d.augment,
        options=dataset_options(cfg),
    )
    if d.mean is not None and d.std is not None:
        channels = data.train_x.shape[1] if data.train_x.dim() == 4 else 1
        if len(d.mean) != channels:
            raise UserError(f"dataset.mean has {len(d.mean)} values but {d.name} images have {channels} channel(s)")
        data = dataclasses.replace(data, mean=tuple(d.mean), std=tuple(d.std))
    return data


def data_shape(data: DataSplits) -> dict[str, int]:
    """What a model builder needs to know about the data (the first keys of meta.json's "data")."""
    shape = data.train_x.shape
    return {"num_classes": data.num_classes, "in_channels": shape[1] if len(shape) == 4 else 1, "input_size": shape[-1]}


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


def _check_batch_fits(cfg: RunConfig, data: DataSplits, device: torch.device) -> None:
    """Refuse a per-process batch whose activations cannot fit the device (:mod:`dsd2.memory_bound`)."""
    from dsd2.memory_bound import check_batch_fits

    with torch.device("meta"):
        meta = build_model(cfg.model.name, **data_shape(data), **cfg.model.options)
    per_rank = max(1, cfg.train.batch_size // distributed.world().size)
    check_batch_fits(meta, tuple(data.input_shape), per_rank, device)


def make_model(cfg: RunConfig, data: DataSplits, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg.model.name, **data_shape(data), **cfg.model.options)


def noisy_labels(cfg: RunConfig, data: DataSplits) -> NoisyLabels:
    labels = _human_noisy_labels(cfg, data) if cfg.dataset.label_file else _synthetic_noisy_labels(cfg, data)
    if cfg.noise.probe:  # the memorisation probe: flipped on top of the run's own noise (docs/noise.md)
        labels = add_probe(labels, data.train_y, fraction=cfg.noise.probe, num_classes=data.num_classes, seed=cfg.seed)
    return labels


def _synthetic_noisy_labels(cfg: RunConfig, data: DataSplits) -> NoisyLabels:
    return apply_label_noise(
        data.train_y,
        kind=cfg.noise.kind,
        rate=cfg.noise.rate,
        num_classes=data.num_classes,
        seed=cfg.seed,
        class_map=options_of(cfg, NOISE_MODELS, "asymmetric").class_map,
        dataset=data.name,
        matrix=cfg.noise.matrix,
        instance_std=options_of(cfg, NOISE_MODELS, "instance").std,
        features=_train_features(data),
        options=cfg.noise.kind_options(),
    )


def _train_features(data: DataSplits) -> FeatureSource | None:
    """The flattened, normalised train inputs instance-dependent noise reads (read by chunks when
    asked; None for a streamed image folder, whose images stay on disk)."""
    from dsd2.data.augment import normalize

    x = data.train_x
    if not isinstance(x, torch.Tensor):
        return None
    dim = int(x[0].numel())
    return FeatureSource(dim, lambda idx: normalize(x[idx.to(x.device)], data.mean, data.std).reshape(idx.numel(), -1))


def _human_noisy_labels(cfg: RunConfig, data: DataSplits) -> NoisyLabels:
    """Real noise (CIFAR-N): the file's labels for the train part; validation and test stay clean."""
    from dsd2.data.human_labels import human_labels

    if cfg.dataset.label_key and "coarse" in cfg.dataset.label_key:
        raise UserError(
            f"dataset.label_key={cfg.dataset.label_key}: coarse (20-superclass) labels do not match the dataset's "
            "fine test labels; use noisy_label (CIFAR-100N) or a CIFAR-10N key"
        )
    n_total = data.train_idx.numel() + data.val_idx.numel()
    full_clean = torch.empty(n_total, dtype=torch.long)
    full_clean[data.train_idx] = data.train_y
    full_clean[data.val_idx] = data.val_y
    assert cfg.dataset.label_file is not None  # called only for runs with a label file
    if cfg.dataset.soft_labels:
        from dsd2.data.human_labels import soft_labels

        probs = soft_labels(cfg.dataset.label_file, cfg.dataset.label_key, expected_len=n_total, num_classes=data.num_classes)
        soft = probs[data.train_idx]
        noisy = soft.argmax(1)  # the first of tied classes: deterministic
        return NoisyLabels(noisy=noisy, flipped=(noisy != data.train_y).nonzero().squeeze(1), soft=soft)
    full_noisy = human_labels(
        cfg.dataset.label_file, cfg.dataset.label_key, expected_len=n_total, num_classes=data.num_classes, clean_labels=full_clean
    )
    noisy = full_noisy[data.train_idx]
    return NoisyLabels(noisy=noisy, flipped=(noisy != data.train_y).nonzero().squeeze(1))


def _labels_file(run_dir: Path, data: DataSplits, labels: NoisyLabels) -> None:
    path = rundir.labels_path(run_dir)
    tensors = {"clean": data.train_y, "noisy": labels.noisy, "flipped": labels.flipped, "train_idx": data.train_idx}
    if labels.soft is not None:  # only then: the files of hard-label runs stay as they were
        tensors["soft"] = labels.soft
    if labels.probe is not None:  # likewise: only runs with a memorisation probe list it
        tensors["probe"] = labels.probe
    if path.exists():
        saved = store.load_tensors(path)
        for key in ("clean", "noisy", "flipped", *(k for k in ("soft", "probe") if k in tensors)):
            if key not in saved or not torch.equal(saved[key], tensors[key].cpu()):
                raise UserError(
                    f"{path} does not match the labels this config produces ({key} differs): it was edited, or the data or noise "
                    "code changed since the run started; start a new run directory"
                )
        return
    store.save_tensors(path, tensors)


def _noise_file(run_dir: Path, cfg: RunConfig, data: DataSplits, labels: NoisyLabels) -> None:
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


def structured_allocation(cfg: RunConfig) -> bool:
    """Whether the run removes whole output channels (``prune.allocation=channel`` or a method made of it)."""
    p = cfg.prune
    pair = composed(p.method, p.criterion, p.allocation)
    return pair is not None and bool(PRUNING_ALLOCATIONS.metadata(pair[1]).get("structured"))


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the run context


@dataclass
class RunContext:
    """What every round of a run shares: config, data, model and the training objective."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    data: DataSplits
    labels: NoisyLabels
    model: nn.Module
    weights: dict[str, nn.Parameter]
    train_batches: Source
    objective: Objective
    teacher: nn.Module | None
    teacher_info: dict[str, Any] | list[dict[str, Any]] | None
    teacher_masks: Masks | None
    threads: int | None = None  # torch CPU threads this process uses (recorded per round in timings.csv)
    images: ImageLoader | None = None  # a streamed image folder's loader workers, shared by every pass
    teacher_cache_round: int | None = None  # the round charged with the pass that cached the teachers' logits
    _splits: dict[str, Source] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> Source:
        """The ``val`` or ``test`` split as a :class:`~dsd2.train.Source`, made once per run: its
        tensors go to the device once, and every evaluation (rounds, best epoch) reads them."""
        if name not in self._splits:
            d, tb = self.data, self.train_batches
            x, y = (d.val_x, d.val_y) if name == "val" else (d.test_x, d.test_y)
            self._splits[name] = make_source(
                x, y, mean=d.mean, std=d.std, device=self.device, channels_last=tb.channels_last, loader=self.images
            )
        return self._splits[name]

    def close(self) -> None:
        """Stop the loader workers of a streamed image folder (nothing to do otherwise)."""
        if self.images is not None:
            self.images.close()


def set_threads(
    cfg: RunConfig,
    device: torch.device,
    model: nn.Module,
    batches: Source,
    teacher: nn.Module | None,
    loader_workers: int = 0,
    share: Share = Share(),
) -> int:
    """Apply ``train.threads`` (README, "Performance"): an integer as given; ``auto`` on CPU by the rule
    of :mod:`dsd2.threads` (from the FLOPs of one training step, less the image loader's workers, and
    ``share``: the runs side by side in this process's launch and their thread cap);
    ``auto`` on CUDA keeps torch's default for the CPU side. Returns the thread count in use."""
    if isinstance(cfg.train.threads, int):
        torch.set_num_threads(cfg.train.threads)
    elif device.type == "cpu":
        step = step_flops(model, batches.example(2), teacher=teacher)
        w = distributed.world()
        if w.distributed:  # the ranks on this node share its cores, each with its slice of the batch
            per_rank = step.dense_per_example * cfg.train.batch_size / w.size
            choice = resolve_threads(per_rank, share=Share(w.local_size), loader_workers=loader_workers)
        else:
            choice = resolve_threads(step.dense_per_example * cfg.train.batch_size, share=share, loader_workers=loader_workers)
        torch.set_num_threads(choice.threads)
    return torch.get_num_threads()


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
            f"{run_dir} was ended after round {floor} by the channel floor (prune.min_channels={saved.prune.min_channels}): no "
            "channel is left to remove, so more rounds cannot be trained. For more rounds start a new run with a lower "
            "prune.min_channels or prune.rate, or fewer layers pruned (prune.include / prune.exclude)"
        )
    return cfg


def _refuse_earlier_gradual_window(run_dir: Path, saved: RunConfig, cfg: RunConfig, meta: dict[str, Any]) -> None:
    """A gradual run with prune.gradual_end unset that an earlier scheme started (its recorded id
    hash is not today's, which hashes the new window) pruned until the last epoch; today's default
    leaves the last quarter to train. Its rounds stay readable (show, export, report), but training
    more of them, by resuming or extending it, would mix the two schedules in one curve."""
    if not default_gradual_window(saved) or meta.get("config_hash") in (config_hash(saved), config_hash(saved, version=4)):
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
    meta["config_digest"] = cfg.digest()
    # the saved execution settings stay until start() records the change (record_execution)
    store.write_yaml(run_dir / rundir.CONFIG, with_execution(cfg, saved).resolved())
    store.write_json(run_dir / rundir.META, meta)


def prepare(cfg: RunConfig, run_dir: Path, share: Share = Share()) -> RunContext:
    device = distributed.local_device(resolve_device(cfg.train.device))
    data = build_data(cfg)
    labels = noisy_labels(cfg, data)
    _labels_file(run_dir, data, labels)
    if distributed.is_main():
        _noise_file(run_dir, cfg, data, labels)
    _check_batch_fits(cfg, data, device)
    model = make_model(cfg, data, init_seed(cfg)).to(device)
    init_path = rundir.init_path(run_dir)
    if init_path.exists():
        load_state(model, store.load_tensors(init_path), init_path)
    else:
        store.save_tensors(init_path, state_dict_cpu(model))
    channels_last = cfg.train.channels_last and data.train_x.dim() == 4
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    p = cfg.prune
    if p.slimming_lambda > 0:
        add_slimming_penalty(model, p.slimming_lambda)  # hooks on the γ Parameters: they live as long as the model
    weights = prunable_weights(
        model, include_classifier=p.include_classifier, exclude_first_conv=p.exclude_first_conv, include=p.include, exclude=p.exclude
    )
    augment = data.augment if cfg.dataset.augment else type(data.augment)()
    images = None
    if data.streamed:  # one pool of loader workers for every pass of the run (train, evaluation, entropy)
        files = data.train_x
        assert not isinstance(files, torch.Tensor)
        workers = resolve_workers(cfg.dataset.workers)
        images = ImageLoader(files.table, files.image_size, augment=augment, workers=workers, pin_memory=device.type == "cuda")
    train_batches = make_source(
        data.train_x,
        labels.noisy,
        mean=data.mean,
        std=data.std,
        device=device,
        augment=augment,
        channels_last=channels_last,
        loader=images,
    )
    # distillation (docs/distillation.md): one or several teachers, or the student's own last round
    teaching = run_teaching(cfg, run_dir, device, data, labels, train_batches, channels_last, student=model)
    objective: Objective = cross_entropy if labels.soft is None else SoftTargets(labels.soft.to(device))
    teacher = teacher_info = teacher_masks = None
    if teaching is not None:
        objective = teaching.objective or cross_entropy
        teacher, teacher_info, teacher_masks = teaching.teacher, teaching.info, teaching.masks
        if distributed.is_main():
            store.write_json(rundir.teacher_path(run_dir), teacher_info)
    loader_workers = images.workers if images is not None else 0
    threads = set_threads(cfg, device, model, train_batches, teacher, loader_workers=loader_workers, share=share)
    return RunContext(
        cfg,
        run_dir,
        device,
        data,
        labels,
        model,
        weights,
        train_batches,
        objective,
        teacher,
        teacher_info,
        teacher_masks,
        threads,
        images=images,
        teacher_cache_round=None if teaching is None else teaching.cache_round,
    )


def start(cfg: RunConfig, run_dir: Path, share: Share = Share()) -> RunContext:
    """The run's context (``share``: see :func:`set_threads`); config.yaml and meta.json are written
    when the run begins, the data is checked against the fingerprint meta.json recorded, and a
    change of where or how the run executes is recorded (:func:`record_execution`)."""
    main = distributed.is_main()
    fingerprint = checked_fingerprint(cfg, run_dir) if main else {}
    if not (run_dir / rundir.CONFIG).exists():
        store.write_yaml(run_dir / rundir.CONFIG, located(cfg).resolved())
    ctx = prepare(cfg, run_dir, share)
    if not (run_dir / rundir.META).exists():
        data = data_meta(ctx.data) | ({"fingerprint": fingerprint} if fingerprint else {})
        store.write_json(run_dir / rundir.META, {**run_metadata(cfg), "data": data})
    else:
        _check_data_matches(run_dir, ctx.data)
        if main:  # the data loaded: this command's data folder, threads, ... are the run's now
            record_execution(run_dir, cfg)
            if fingerprint:
                _record_fingerprint(run_dir, fingerprint)
    return ctx


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


def _teacher_dirs(cfg: RunConfig) -> list[Path]:
    d = cfg.distill
    if d.self_distill:
        return []
    return [Path(r) for r in ([d.teacher] if d.teacher else [t.run for t in d.teachers])]


def _record_fingerprint(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Give a run started before data fingerprints its fingerprint (later starts are checked against it)."""
    meta = store.read_json(run_dir / rundir.META)
    if isinstance(meta, dict) and isinstance(meta.get("data"), dict) and "fingerprint" not in meta["data"]:
        meta["data"]["fingerprint"] = fingerprint
        store.write_json(run_dir / rundir.META, meta)


def _pinned_root(saved: RunConfig, cfg: RunConfig) -> RunConfig:
    """``cfg`` with a new relative dataset.root made absolute: config.yaml records where the data
    is, not where it was from the folder this command ran in (a later resume from elsewhere)."""
    root = cfg.dataset.root
    if not root or root == saved.dataset.root or Path(root).expanduser().is_absolute():
        return cfg
    return cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"root": os.path.abspath(root)})})


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute from this command's folder (None, absolute and ~ paths as they are)."""
    if not path or Path(path).expanduser().is_absolute():
        return path
    return os.path.abspath(path)


def located(cfg: RunConfig) -> RunConfig:
    """``cfg`` as a new run's config.yaml records it: a relative dataset.root (where the data is) and
    noise.matrix_file (a record) absolute, so a resume from another folder finds the data. Neither
    is in the run id or the digest, so both stay as they are. (dataset.label_file is hashed as
    given: making it absolute would change the id read back from config.yaml.)"""
    root, matrix = _absolute(cfg.dataset.root), _absolute(cfg.noise.matrix_file)
    if root == cfg.dataset.root and matrix == cfg.noise.matrix_file:
        return cfg
    return cfg.model_copy(
        update={"dataset": cfg.dataset.model_copy(update={"root": root}), "noise": cfg.noise.model_copy(update={"matrix_file": matrix})}
    )


def record_execution(run_dir: Path, cfg: RunConfig) -> None:
    """Where and how the run executes from now on (data folder, threads, device, workers, ...):
    ``cfg``'s, when they differ from config.yaml's: config.yaml takes them (a later `dsd2 resume`
    keeps them) and meta.json's ``execution_changes`` lists each change (when, which setting, from
    and to). They cannot change the numbers: the run id and the recorded digest leave them out."""
    saved = rundir.read_config(run_dir)
    cfg = _pinned_root(saved, cfg)
    changes = execution_changes(saved, cfg)
    if not changes:
        return
    meta = store.read_json(run_dir / rundir.META)
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "round": len(rundir.finished_rounds(run_dir)),
        "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
    }
    meta["execution_changes"] = [*meta.get("execution_changes", []), entry]
    store.write_yaml(run_dir / rundir.CONFIG, with_execution(saved, cfg).resolved())
    store.write_json(run_dir / rundir.META, meta)
