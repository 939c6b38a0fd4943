"""The IMP round loop: glue of data, noise, model, training, pruning, measures and the run directory.

Round 0 trains the dense network; round i >= 1 prunes ``prune.rate`` of the remaining weights of
round i-1's weights, resets them according to ``prune.retrain`` and trains again. Every round
gets its own seeded generator, so resuming after a kill reproduces exactly the rows an
uninterrupted run would have written (on CPU).

A round is five named steps, as in OpenLTH's runner: :func:`prune_step` → :func:`reset_weights`
→ :func:`train_round` → :func:`measure` → :func:`save_round` (:func:`run_round` chains them).
What runs alongside without changing the numbers (progress, the late-rewind snapshot,
TensorBoard, the caller's ``on_round``) is a list of :class:`Hook`. The files and the row they
write are the contract of :mod:`dsd2.rundir`.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import __version__, checkpoint, distributed, rundir, store
from dsd2.compare import decide, selection_column
from dsd2.config import RunConfig, config_hash
from dsd2.data import DataSplits, ImageLoader, load_dataset
from dsd2.data.image_folder import resolve_workers
from dsd2.distill.setup import run_teaching, self_teaching
from dsd2.entropy import OnCounter, activation_entropy, entropy_from_counts
from dsd2.errors import UserError
from dsd2.flops import paper_training_flops, step_flops, to_pflops, training_flops
from dsd2.models import build_model, prunable_weights
from dsd2.noise import FeatureSource, NoisyLabels, apply_label_noise, noise_summary
from dsd2.phases import label_phases
from dsd2.prune import (
    GradientSource,
    Masks,
    ScoreInputs,
    add_slimming_penalty,
    apply_masks,
    batchnorm_masks,
    composed,
    count_alive,
    full_masks,
    needs_gradients,
    next_masks,
    prune_with,
    sparsity,
)
from dsd2.registry import PRUNING_ALLOCATIONS, PRUNING_SCHEDULES, RETRAIN_MODES

# Kept importable here for the sweep and older callers; their home is dsd2.rundir.
from dsd2.rundir import ROUND_COLUMNS, RoundRow, load_round_model, load_state, run_dir_for  # noqa: F401
from dsd2.threads import resolve_threads, sharing
from dsd2.train import (
    EpochLog,
    Objective,
    Schedule,
    SoftTargets,
    Source,
    TrainingDiverged,
    accuracy,
    cross_entropy,
    make_source,
    predict,
    train,
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


def _generator(device: torch.device, seed: int) -> torch.Generator:
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
DATASET_OPTIONS = ("image_size", "loader", "memory_budget_gb", "workers")


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
    meta = store.read_json(run_dir / rundir.META) if (run_dir / rundir.META).is_file() else {}
    saved = meta.get("data") if isinstance(meta, dict) else None
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


def make_model(cfg: RunConfig, data: DataSplits, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg.model.name, **data_shape(data), **cfg.model.options)


def noisy_labels(cfg: RunConfig, data: DataSplits) -> NoisyLabels:
    if cfg.dataset.label_file:
        return _human_noisy_labels(cfg, data)
    return apply_label_noise(
        data.train_y,
        kind=cfg.noise.kind,
        rate=cfg.noise.rate,
        num_classes=data.num_classes,
        seed=cfg.seed,
        class_map=cfg.noise.class_map,
        dataset=data.name,
        matrix=cfg.noise.matrix,
        instance_std=cfg.noise.instance_std,
        features=_train_features(data),
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
    path = run_dir / "labels.safetensors"
    tensors = {"clean": data.train_y, "noisy": labels.noisy, "flipped": labels.flipped, "train_idx": data.train_idx}
    if labels.soft is not None:  # only then: the files of hard-label runs stay as they were
        tensors["soft"] = labels.soft
    if path.exists():
        saved = store.load_tensors(path)
        for key in ("clean", "noisy", "flipped", *(["soft"] if "soft" in tensors else [])):
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
    summary = noise_summary(data.train_y, labels.noisy, data.num_classes)
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
    store.write_json(run_dir / rundir.NOISE, {**asked, "class_names": list(data.class_names) if data.class_names else None, **summary})


LR_SCALE_FILE = "lr_scale.json"


def lr_scale_for(run_dir: Path, round_idx: int) -> float:
    """The learning-rate factor a resumed run applies from a round on (``dsd2 resume --lr-scale``)."""
    path = Path(run_dir) / LR_SCALE_FILE
    if not path.is_file():
        return 1.0
    scale = 1.0
    for entry in store.read_json(path)["history"]:
        if round_idx >= entry["from_round"]:
            scale = entry["scale"]
    return scale


def set_lr_scale(run_dir: Path, scale: float) -> int:
    """Record that rounds from the next unfinished one on train with ``scale`` × the configured lr.

    The retry after a divergence; rounds already finished keep their numbers, and the factor is
    part of the run directory (lr_scale.json, and each later round's metrics.json)."""
    if not 0.0 < scale <= 1.0:
        raise UserError(f"--lr-scale must be in (0, 1], got {scale}")
    from_round = len(rundir.finished_rounds(run_dir))
    if rundir.is_complete(rundir.read_config(run_dir), from_round, run_dir):
        raise UserError(f"{run_dir} is finished: no round is left to train with a lower lr (--lr-scale changes nothing)")
    path = Path(run_dir) / LR_SCALE_FILE
    history = store.read_json(path)["history"] if path.is_file() else []
    history = [h for h in history if h["from_round"] < from_round] + [{"from_round": from_round, "scale": scale}]
    store.write_json(path, {"history": history})
    return from_round


def restart_round(run_dir: Path) -> int:
    """Drop the epoch checkpoint of the next unfinished round, which then retrains from the last
    finished round's weights (after a divergence the checkpoint may hold diverged weights)."""
    next_round = len(rundir.finished_rounds(run_dir))
    checkpoint.partial_path(run_dir, next_round).unlink(missing_ok=True)
    return next_round


def schedule_for(cfg: RunConfig, round_idx: int, lr_scale: float = 1.0) -> Schedule:
    t, p = cfg.train, cfg.prune
    base: dict[str, Any] = dict(
        epochs=t.epochs,
        lr=t.lr,
        optimizer=t.optimizer,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        kind=t.schedule,
        milestones=tuple(t.milestones),
        lr_decay=t.lr_decay,
        warmup_epochs=t.warmup_epochs,
    )
    base["lr"] = t.lr * lr_scale
    if round_idx == 0:
        return Schedule(**base)
    mode: RetrainMode = RETRAIN_MODES.get(p.retrain)
    return Schedule(**(mode.schedule(cfg, base, lr_scale) if mode.schedule is not None else base))


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

    def source(self, x: Any, y: torch.Tensor) -> Source:
        """An evaluation split (validation, test) of this run's data as a :class:`~dsd2.train.Source`."""
        d, tb = self.data, self.train_batches
        return make_source(x, y, mean=d.mean, std=d.std, device=self.device, channels_last=tb.channels_last, loader=self.images)

    def close(self) -> None:
        """Stop the loader workers of a streamed image folder (nothing to do otherwise)."""
        if self.images is not None:
            self.images.close()


def set_threads(
    cfg: RunConfig, device: torch.device, model: nn.Module, batches: Source, teacher: nn.Module | None, loader_workers: int = 0
) -> int:
    """Apply ``train.threads`` (README, "Performance"): an integer as given; ``auto`` on CPU by the rule
    of :mod:`dsd2.threads` (from the FLOPs of one training step, less the image loader's workers);
    ``auto`` on CUDA keeps torch's default for the CPU side. Returns the thread count in use."""
    if isinstance(cfg.train.threads, int):
        torch.set_num_threads(cfg.train.threads)
    elif device.type == "cpu":
        step = step_flops(model, batches.example(2), teacher=teacher)
        w = distributed.world()
        if w.distributed:  # the ranks on this node share its cores, each with its slice of the batch
            with sharing(w.local_size):
                choice = resolve_threads(step.dense_per_example * cfg.train.batch_size / w.size, loader_workers=loader_workers)
        else:
            choice = resolve_threads(step.dense_per_example * cfg.train.batch_size, loader_workers=loader_workers)
        torch.set_num_threads(choice.threads)
    return torch.get_num_threads()


def _recorded_digest(meta: dict[str, Any]) -> str | None:
    # runs started before extensions existed recorded the digest as "config_hash" (their run id hash counted the rounds)
    return meta.get("config_digest", meta.get("config_hash"))


def _check_config_matches(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """The config to run in ``run_dir``: ``cfg``, or the saved one when it asks more rounds.

    A config that differs from the saved one only by more rounds extends the run (see
    :func:`_extend`); anything else is refused."""
    if not (run_dir / rundir.CONFIG).exists():
        return cfg
    saved = rundir.read_config(run_dir)
    meta = store.read_json(run_dir / rundir.META) if (run_dir / rundir.META).is_file() else {}
    recorded = _recorded_digest(meta) if isinstance(meta, dict) else None
    if recorded is not None and saved.digest() != recorded:
        raise UserError(
            f"{run_dir / rundir.CONFIG} was edited after the run started (its hash {saved.digest()} is not the recorded "
            f"{recorded}): finished rounds were trained with another config. Start a new run with the changed config "
            "(`dsd2 run CONFIG`), extend it with more rounds (`dsd2 run CONFIG prune.rounds=N`), or, to retry a diverged "
            "run with a lower learning rate, `dsd2 resume RUN_DIR --lr-scale 0.1`"
        )
    if saved.run_id() != cfg.run_id():
        raise UserError(f"{run_dir} holds a run of a different config ({saved.run_id()}); choose another --out or remove that directory")
    if cfg.prune.rounds <= saved.prune.rounds:
        return saved  # the first rounds of a longer curve are this curve: nothing new to decide
    stop = rundir.stopped_at(run_dir)
    if saved.early_stop.rule != "none" and stop is not None:
        raise UserError(
            f"{run_dir} was ended by its early-stop rule ({saved.early_stop.rule}) at round {stop}: more rounds would not be "
            "trained. To go on past the stop, run the same config with early_stop.rule=none (a new run)"
        )
    return cfg


def _extend(run_dir: Path, saved: RunConfig, cfg: RunConfig) -> None:
    """Record that ``cfg`` asks more rounds than the run was started with: config.yaml takes the
    new count, meta.json its digest and the extension (from, to, when, by which version)."""
    meta = store.read_json(run_dir / rundir.META)
    extension = {
        "rounds_from": saved.prune.rounds,
        "rounds_to": cfg.prune.rounds,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dsd2": __version__,
        "git_commit": _git_commit(),
    }
    meta["extensions"] = [*meta.get("extensions", []), extension]
    meta["config_digest"] = cfg.digest()
    store.write_yaml(run_dir / rundir.CONFIG, cfg.resolved())
    store.write_json(run_dir / rundir.META, meta)


def prepare(cfg: RunConfig, run_dir: Path) -> RunContext:
    device = distributed.local_device(resolve_device(cfg.train.device))
    data = build_data(cfg)
    labels = noisy_labels(cfg, data)
    _labels_file(run_dir, data, labels)
    if distributed.is_main():
        _noise_file(run_dir, cfg, data, labels)
    model = make_model(cfg, data, init_seed(cfg)).to(device)
    init_path = run_dir / "init.safetensors"
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
            store.write_json(run_dir / "teacher.json", teacher_info)
    threads = set_threads(cfg, device, model, train_batches, teacher, loader_workers=images.workers if images is not None else 0)
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


def start(cfg: RunConfig, run_dir: Path) -> RunContext:
    """The run's context; config.yaml and meta.json are written once, when the run begins."""
    if not (run_dir / rundir.CONFIG).exists():
        store.write_yaml(run_dir / rundir.CONFIG, cfg.resolved())
    ctx = prepare(cfg, run_dir)
    if not (run_dir / rundir.META).exists():
        store.write_json(run_dir / rundir.META, {**run_metadata(cfg), "data": data_meta(ctx.data)})
    else:
        _check_data_matches(run_dir, ctx.data)
    return ctx


# ----------------------------------------------------------------------------- loop state


@dataclass
class Rounds:
    """The finished rounds (rows as labelled in rounds.csv, per-layer entropy, timings) and the
    masks the next round prunes from."""

    rows: list[RoundRow]
    entropy: list[dict[str, Any]]
    timings: list[dict[str, Any]]
    masks: Masks

    @property
    def last(self) -> RoundRow | None:
        return self.rows[-1] if self.rows else None


def resume_rounds(ctx: RunContext) -> Rounds:
    """The rounds already finished, from their checksummed files; the model gets the last one's weights."""
    done = rundir.read_finished(ctx.run_dir)
    masks = full_masks(ctx.weights)
    if done.rows:
        last = rundir.round_dir(ctx.run_dir, done.rows[-1].round)
        load_state(ctx.model, store.load_tensors(last / "state.safetensors"), last / "state.safetensors")
        saved = store.load_tensors(last / "masks.safetensors")
        masks = {k: saved[k].to(ctx.device) for k in ctx.weights}
    return Rounds(done.rows, done.entropy, done.timings, masks)


# ----------------------------------------------------------------------------- hooks


class Hook:
    """Runs alongside the rounds without changing their numbers; every method is a no-op here."""

    def round_start(self, round_idx: int) -> None:
        pass

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        pass

    def round_end(self, row: RoundRow) -> None:
        pass

    def close(self) -> None:
        pass


class RewindSnapshot(Hook):
    """late_rewind: the weights of epoch ``prune.rewind_epoch`` of round 0, which later rounds restart from."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        self.path = run_dir / "rewind.safetensors"

    def round_start(self, round_idx: int) -> None:
        if round_idx == 0 and self.epoch == 0:  # epoch 0 is the initialisation
            store.save_tensors(self.path, store.load_tensors(self.run_dir / "init.safetensors"))

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        if round_idx == 0 and log.epoch == self.epoch:
            store.save_tensors(self.path, state_dict_cpu(model))


class TensorBoard(Hook):
    """Optional TensorBoard scalars: per epoch (loss, accuracy, lr) and per round (every metric)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError:
            raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        step = round_idx * epochs + log.epoch
        for key in ("loss", "acc", "lr"):
            self.writer.add_scalar(f"epoch/{key}", getattr(log, key), step)

    def round_end(self, row: RoundRow) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "round":
                self.writer.add_scalar(f"round/{key}", value, row.round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class EpochProgress(Hook):
    """The caller's ``progress(round, epochs, log)`` after every epoch."""

    def __init__(self, fn: Callable[[int, int, EpochLog], None]):
        self.fn = fn

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        self.fn(round_idx, epochs, log)


class BestEpoch(Hook):
    """``train.select_epoch=best_val``: after every epoch, the validation accuracy; the weights of
    the best epoch so far (ties: the earlier) and its test accuracy are kept for the round's files.
    Evaluation runs in eval mode and draws no random numbers, so training is unchanged. Every
    rank evaluates (the prediction is sharded); the epoch checkpoint carries the best so far, so
    a resumed round keeps the same best epoch."""

    PREFIX = "best/"

    def __init__(self, ctx: RunContext):
        d = ctx.data
        self.ctx = ctx
        self.val, self.test = ctx.source(d.val_x, d.val_y), ctx.source(d.test_x, d.test_y)
        self.round_start(0)

    def round_start(self, round_idx: int) -> None:
        self.epoch: int | None = None
        self.val_acc = -1.0
        self.test_acc: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def epoch_end(self, round_idx: int, epochs: int, log: EpochLog, model: nn.Module) -> None:
        d = self.ctx.data
        acc = accuracy(_predict(self.ctx, self.val), d.val_y)
        if acc is not None and acc > self.val_acc:
            self.epoch, self.val_acc, self.state = log.epoch, acc, state_dict_cpu(model)
            self.test_acc = accuracy(_predict(self.ctx, self.test), d.test_y)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The best so far, as tensors for the epoch checkpoint's ``extra``."""
        if self.state is None:
            return {}
        meta = torch.tensor([float(self.epoch or 0), self.val_acc, -1.0 if self.test_acc is None else self.test_acc], dtype=torch.float64)
        return {f"{self.PREFIX}meta": meta, **{f"{self.PREFIX}state/{k}": v for k, v in self.state.items()}}

    def restore(self, extra: dict[str, torch.Tensor]) -> None:
        """The best so far from an epoch checkpoint (nothing when it holds none)."""
        meta = extra.get(f"{self.PREFIX}meta")
        if meta is None:
            return
        epoch, val_acc, test_acc = meta.tolist()
        self.epoch, self.val_acc, self.test_acc = int(epoch), float(val_acc), None if test_acc < 0 else float(test_acc)
        cut = len(f"{self.PREFIX}state/")
        self.state = {k[cut:]: v for k, v in extra.items() if k.startswith(f"{self.PREFIX}state/")}

    def columns(self) -> dict[str, Any]:
        """The round's best-epoch columns of rounds.csv."""
        return {"best_epoch": self.epoch, "best_val_acc": self.val_acc, "best_test_acc": self.test_acc}


def best_epoch_hook(hooks: list[Hook]) -> BestEpoch | None:
    return next((h for h in hooks if isinstance(h, BestEpoch)), None)


class RoundDone(Hook):
    """The caller's ``on_round(row)`` once a round is saved (the row as rounds.csv now has it)."""

    def __init__(self, fn: Callable[[RoundRow], None]):
        self.fn = fn

    def round_end(self, row: RoundRow) -> None:
        self.fn(row)


# ----------------------------------------------------------------------------- retraining modes


@dataclass(frozen=True)
class RetrainMode:
    """How rounds i >= 1 restart after pruning; registered by name in :data:`dsd2.registry.RETRAIN_MODES`
    (``prune.retrain``). Round 0 always trains the initialisation with the configured schedule.

    ``restart(ctx, round_idx)`` loads the round's starting weights into ``ctx.model`` (None: keep
    the trained weights; the masks are applied after it). ``schedule(cfg, base, lr_scale)`` turns
    round 0's :class:`~dsd2.train.Schedule` arguments into the round's (None: the same).
    ``hooks(ctx)``: hooks the mode needs (the late-rewind snapshot), run before the others.
    """

    restart: Callable[[RunContext, int], None] | None = None
    schedule: Callable[[RunConfig, dict[str, Any], float], dict[str, Any]] | None = None
    hooks: Callable[[RunContext], list[Hook]] | None = None


def _load_run_file(name: str) -> Callable[[RunContext, int], None]:
    def restart(ctx: RunContext, round_idx: int) -> None:
        path = ctx.run_dir / name
        load_state(ctx.model, store.load_tensors(path), path)

    return restart


def _fresh_init(ctx: RunContext, round_idx: int) -> None:
    fresh = make_model(ctx.cfg, ctx.data, round_seed(ctx.cfg.seed, round_idx, stream=3))
    load_state(ctx.model, fresh.state_dict(), "a fresh initialisation")


def _finetune_schedule(cfg: RunConfig, base: dict[str, Any], lr_scale: float) -> dict[str, Any]:
    p = cfg.prune
    return {**base, "epochs": p.finetune_epochs or cfg.train.epochs, "lr": p.finetune_lr * lr_scale, "kind": "constant"}


def _late_rewind_schedule(cfg: RunConfig, base: dict[str, Any], lr_scale: float) -> dict[str, Any]:
    return {**base, "start_epoch": cfg.prune.rewind_epoch}


def _rewind_snapshot(ctx: RunContext) -> list[Hook]:
    return [RewindSnapshot(ctx.run_dir, ctx.cfg.prune.rewind_epoch)]


# The built-in modes (names and descriptions in dsd2.registry.RETRAIN_MODES).
LR_REWIND = RetrainMode()  # keep the trained weights, restart the schedule (the reference)
FINETUNE = RetrainMode(schedule=_finetune_schedule)
LOTTERY = RetrainMode(restart=_load_run_file("init.safetensors"))
LATE_REWIND = RetrainMode(restart=_load_run_file("rewind.safetensors"), schedule=_late_rewind_schedule, hooks=_rewind_snapshot)
REINIT = RetrainMode(restart=_fresh_init)


def make_hooks(
    ctx: RunContext,
    *,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: Callable[[int, int, EpochLog], None] | None = None,
) -> list[Hook]:
    """The run's hooks, called in this order (the retraining mode's first: the late-rewind snapshot is
    on disk before anyone hears of its epoch)."""
    hooks: list[Hook] = []
    if ctx.cfg.train.select_epoch == "best_val":
        hooks.append(BestEpoch(ctx))  # on every rank: evaluation is sharded; first, so the others see the round's best
    if not distributed.is_main():
        return hooks  # the others write files or report progress: rank 0's job
    mode: RetrainMode = RETRAIN_MODES.get(ctx.cfg.prune.retrain)
    if mode.hooks is not None:
        hooks.extend(mode.hooks(ctx))
    if ctx.cfg.train.tensorboard:
        hooks.append(TensorBoard(ctx.run_dir))
    if progress is not None:
        hooks.append(EpochProgress(progress))
    if on_round is not None:
        hooks.append(RoundDone(on_round))
    return hooks


# ----------------------------------------------------------------------------- the steps of a round


def prune_step(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """Round i >= 1's masks by the run's pruning schedule (``prune.schedule``); round 0 prunes nothing."""
    if round_idx == 0:
        return masks
    schedule = PRUNING_SCHEDULES.get(ctx.cfg.prune.schedule)
    new = schedule(ctx, masks, round_idx)
    # every rank prunes its replica (identical weights, same seed); a difference means they drifted
    distributed.check_same(new, f"masks of round {round_idx}")
    return new


def _prune(ctx: RunContext, masks: Masks, round_idx: int, rate: float, density: float) -> Masks:
    """Remove ``rate`` of the alive weights of ``ctx.model`` by the configured method (ERK aims at ``density``)."""
    p = ctx.cfg.prune
    gen = torch.Generator().manual_seed(round_seed(ctx.cfg.seed, round_idx, stream=2))
    pair = composed(p.method, p.criterion, p.allocation)
    if pair is None:
        return next_masks(p.method, ctx.weights, masks, rate, gen)
    grads = gradient_source(ctx, round_idx) if needs_gradients(pair[0]) else None
    inputs = ScoreInputs(masks, gen, grads, ctx.model)
    return prune_with(*pair, ctx.weights, masks, rate, inputs=inputs, density=density)


def iterative_schedule(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """IMP: remove ``prune.rate`` of the weights round i-1 left (ERK aims at the geometric (1-rate)^i)."""
    rate = ctx.cfg.prune.rate
    return _prune(ctx, masks, round_idx, rate, (1.0 - rate) ** round_idx)


def target_sparsity(cfg: RunConfig, round_idx: int) -> float:
    """One-shot round i's target: ``prune.targets[i-1]``, or IMP's 1-(1-rate)^i when none are given."""
    p = cfg.prune
    if not p.targets:
        return 1.0 - (1.0 - p.rate) ** round_idx
    if round_idx > len(p.targets):
        raise UserError(f"round {round_idx} has no target: prune.targets lists {len(p.targets)}; lower prune.rounds")
    return p.targets[round_idx - 1]


def one_shot_schedule(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """He et al.'s one-shot baseline: load round 0's dense trained weights and prune them straight
    to round i's target sparsity; each round is an independent one-shot model (not round i-1's)."""
    path = rundir.round_dir(ctx.run_dir, 0) / "state.safetensors"
    load_state(ctx.model, store.load_tensors(path), path)  # the retraining mode may restart from elsewhere after
    target = target_sparsity(ctx.cfg, round_idx)
    return _prune(ctx, full_masks(ctx.weights), round_idx, target, 1.0 - target)


def gradual_schedule(ctx: RunContext, masks: Masks, round_idx: int) -> Masks:
    """Zhu & Gupta's gradual pruning: round i starts dense from the initialisation; :func:`gradual_step`
    prunes at the end of each epoch of its window while it trains."""
    path = ctx.run_dir / "init.safetensors"
    load_state(ctx.model, store.load_tensors(path), path)
    return full_masks(ctx.weights)


def gmp_sparsity(final: float, epoch: int, start: int, end: int) -> float:
    """Sparsity after epoch ``epoch``: s_f (1 - (1 - (t - t0)/(nΔt))^3) with Δt one epoch, s_i = 0,
    t = epoch + 1 counted from t0 = start, n = end - start + 1; 0 before the window, s_f after it."""
    if epoch < start:
        return 0.0
    n = end - start + 1
    done = min(epoch - start + 1, n) / n
    return final * (1.0 - (1.0 - done) ** 3)


def _gradual_window(cfg: RunConfig, epochs: int) -> tuple[int, int]:
    p = cfg.prune
    end = epochs - 1 if p.gradual_end is None else min(p.gradual_end, epochs - 1)
    return min(p.gradual_start, end), end


@torch.no_grad()
def gradual_step(ctx: RunContext, masks: Masks, round_idx: int, epoch: int, epochs: int) -> None:
    """Prune by magnitude (the configured method) to this epoch's sparsity on the cubic schedule,
    updating ``masks`` in place (train re-applies the same tensors after every step)."""
    start, end = _gradual_window(ctx.cfg, epochs)
    target = gmp_sparsity(target_sparsity(ctx.cfg, round_idx), epoch, start, end)
    total = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    remove = alive - round((1.0 - target) * total)
    if remove <= 0:
        return
    new = _prune(ctx, masks, round_idx, remove / alive, 1.0 - target)
    for name, m in masks.items():
        m.copy_(new[name])
    apply_masks(ctx.weights, masks)


def _gradual(ctx: RunContext, round_idx: int) -> bool:
    return round_idx > 0 and ctx.cfg.prune.schedule == "gradual"


def gradient_source(ctx: RunContext, round_idx: int) -> GradientSource:
    """The training-loss gradients the gradient criteria score with: cross-entropy on the noisy
    labels of the first ``prune.score_batches`` batches of a shuffled epoch drawn from the round's
    own seed (the same batches on every rank and on a resumed run), taken in eval mode on the
    model itself (not a DDP wrapper); SNIP reads the run's initial weights (init.safetensors)."""
    src, p = ctx.train_batches, ctx.cfg.prune

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = _generator(src.device, round_seed(ctx.cfg.seed, round_idx, stream=6))
        for k, (xb, idx) in enumerate(src.epoch(gen, ctx.cfg.train.batch_size)):
            if k >= p.score_batches:
                break
            yield xb, src.y[idx]

    def init_state() -> dict[str, torch.Tensor]:
        return store.load_tensors(ctx.run_dir / "init.safetensors")

    return GradientSource(ctx.model, ctx.weights, batches, init_state=init_state)


def reset_weights(ctx: RunContext, round_idx: int, masks: Masks) -> None:
    """The weights a round starts from: those the retraining mode restarts from, then masked."""
    mode: RetrainMode = RETRAIN_MODES.get(ctx.cfg.prune.retrain)
    if round_idx > 0 and mode.restart is not None:
        mode.restart(ctx, round_idx)
    apply_masks(*masked_tensors(ctx, masks))


def masked_tensors(ctx: RunContext, masks: Masks) -> tuple[dict[str, torch.Tensor], Masks]:
    """What the masks zero after every optimiser step: the pruned weights; with a structured
    allocation also the BatchNorm γ and β of the removed channels (a removed channel outputs 0)."""
    p = ctx.cfg.prune
    pair = composed(p.method, p.criterion, p.allocation)
    if pair is None or not PRUNING_ALLOCATIONS.metadata(pair[1]).get("structured"):
        return dict(ctx.weights), masks
    params, bn_masks = batchnorm_masks(ctx.model, masks)
    return {**ctx.weights, **params}, {**masks, **bn_masks}


def _epoch_checkpointer(ctx: RunContext, path: Path, gen: torch.Generator, total_epochs: int, best: BestEpoch | None = None):
    """Save a mid-round checkpoint after an epoch when the configured interval has passed."""
    interval = ctx.cfg.train.checkpoint_interval_s
    last = [time.monotonic()]

    def save(next_epoch: int, opt: torch.optim.Optimizer, logs: list[EpochLog]) -> None:
        if not distributed.is_main():
            return  # the replicas are identical: rank 0 saves, every rank resumes from it
        if next_epoch >= total_epochs or time.monotonic() - last[0] < interval:
            return  # the finished round itself is saved right after
        checkpoint.save_epoch_state(
            path,
            model=ctx.model,
            optimizer=opt,
            generator=gen,
            next_epoch=next_epoch,
            logs=[vars(x) for x in logs],
            extra={**(_adapter_state(ctx) or {}), **(best.checkpoint_state() if best is not None else {})},
        )
        last[0] = time.monotonic()

    return save


def train_round(ctx: RunContext, round_idx: int, masks: Masks, hooks: list[Hook]) -> tuple[list[EpochLog], float]:
    """Train one round, from its epoch checkpoint when a kill interrupted it; (epoch logs, lr factor)."""
    cfg = ctx.cfg
    lr_scale = lr_scale_for(ctx.run_dir, round_idx)
    schedule = schedule_for(cfg, round_idx, lr_scale)
    gen = _generator(ctx.device, round_seed(cfg.seed, round_idx, stream=1))
    for hook in hooks:
        hook.round_start(round_idx)
    partial = checkpoint.partial_path(ctx.run_dir, round_idx)
    resume_state = checkpoint.load_epoch_state(partial)
    if resume_state is not None:
        load_state(ctx.model, resume_state.model_state, partial)
    reset = getattr(ctx.objective, "reset", None)
    if reset is not None:  # feature distillation: the round's adapter from its seed, or as the checkpoint left it
        reset(round_seed(cfg.seed, round_idx, stream=7))
        if resume_state is not None:
            adapter = {k: v for k, v in resume_state.extra.items() if not k.startswith(BestEpoch.PREFIX)}
            ctx.objective.load_adapter_state(adapter)  # type: ignore[attr-defined]
    best = best_epoch_hook(hooks)
    if best is not None and resume_state is not None:
        best.restore(resume_state.extra)

    if resume_state is not None and _gradual(ctx, round_idx):
        # the masks pruned so far are the zeros of the checkpointed weights (re-zeroed after every step)
        for name, m in masks.items():
            m.copy_(ctx.weights[name] != 0)

    def epoch_end(log: EpochLog, model: nn.Module) -> None:
        if _gradual(ctx, round_idx):
            gradual_step(ctx, masks, round_idx, log.epoch - 1, schedule.epochs)  # log.epoch counts from 1
        for hook in hooks:
            hook.epoch_end(round_idx, schedule.epochs, log, model)

    masked, all_masks = masked_tensors(ctx, masks)
    try:
        logs = train(
            ctx.model,
            ctx.train_batches,
            schedule,
            batch_size=cfg.train.batch_size,
            generator=gen,
            masks=all_masks,
            weights=masked,
            objective=ctx.objective,
            amp=cfg.train.amp,
            on_epoch_end=epoch_end,
            resume=resume_state,
            checkpoint=_epoch_checkpointer(ctx, partial, gen, schedule.epochs, best),
            compile_model=cfg.train.compile,
        )
    except TrainingDiverged as err:
        raise TrainingDiverged(_divergence_advice(str(err), ctx.run_dir, lr_scale, resumed=resume_state is not None)) from None
    return logs, lr_scale


def _divergence_advice(message: str, run_dir: Path, lr_scale: float, *, resumed: bool) -> str:
    """What to do after a divergence, given the lr factor in use and where the round started."""
    head = message.split(". Finished rounds", 1)[0]
    advice = f"{head}. Finished rounds are kept. Retry with a lower lr: dsd2 resume {run_dir} --lr-scale {lr_scale / 10:g}"
    if resumed:
        advice += (
            " --restart-round (this attempt started from the round's epoch checkpoint, which may already hold diverged "
            "weights; --restart-round drops it and retrains the round from the last finished round)"
        )
    return advice


def _evaluate(ctx: RunContext) -> dict[str, Any]:
    d = ctx.data
    tb = ctx.train_batches
    pred = _predict(ctx, tb)
    flipped = ctx.labels.flipped
    keep = torch.ones(d.train_y.numel(), dtype=torch.bool)
    keep[flipped] = False
    out: dict[str, Any] = {
        "train_acc_noisy": accuracy(pred, ctx.labels.noisy),
        "train_acc_clean": accuracy(pred, d.train_y),
        "train_acc_flipped": accuracy(pred, ctx.labels.noisy, flipped),
        "flipped_acc_clean": accuracy(pred, d.train_y, flipped),
        "unflipped_acc": accuracy(pred, d.train_y, keep.nonzero().squeeze(1)),
    }
    for split, x, y in (("val", d.val_x, d.val_y), ("test", d.test_x, d.test_y)):
        out[f"{split}_acc"] = accuracy(_predict(ctx, ctx.source(x, y)), y)
    return out


def _predict(ctx: RunContext, source: Source) -> torch.Tensor:
    """Predicted classes of every row of ``source``, on the CPU. In a data-parallel job each rank
    predicts a contiguous slice and the slices are summed into the full vector, so every rank
    scores the same predictions with the one-process code."""
    bs, amp = ctx.cfg.train.eval_batch_size, ctx.cfg.train.amp
    w = distributed.world()
    if not w.distributed:
        return predict(ctx.model, source, batch_size=bs, amp=amp).cpu()
    n = source.num_rows
    lo, hi = distributed.shard_bounds(n, w.rank, w.size)
    full = torch.zeros(n, dtype=torch.long, device=ctx.device)
    if hi > lo:
        full[lo:hi] = predict(ctx.model, source, batch_size=bs, amp=amp, rows=(lo, hi))
    return distributed.all_reduce_sum(full).cpu()


def _measure_entropy(ctx: RunContext) -> tuple[float | None, list[dict[str, Any]]]:
    if not ctx.cfg.entropy.enabled:
        return None, []
    bs = ctx.cfg.entropy.batch_size
    # the clean (unaugmented, evaluation-transformed) training inputs, in row order
    if distributed.world().distributed:
        res = _sharded_entropy(ctx, bs)
    else:
        res = activation_entropy(ctx.model, ctx.train_batches.ordered(bs), batch_size=bs, device=ctx.device)
    rows = [{"layer": name, "entropy": h, "neurons": res.neurons[name]} for name, h in res.per_layer.items()]
    return res.weighted_mean, rows


def _sharded_entropy(ctx: RunContext, batch_size: int):
    """Entropy from ON counts summed over the ranks, each counting a contiguous slice of the
    rows: the counts (integers) are those of one process passing every row."""
    w, tb, model = distributed.world(), ctx.train_batches, ctx.model
    rows = distributed.shard_bounds(tb.num_rows, w.rank, w.size)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), OnCounter(model) as oc:
            for x in tb.ordered(batch_size, rows):
                model(x)
    finally:
        for m, training in modes:
            m.training = training
    if not oc.counts:  # no rectifier in the model (on every rank): the one-process error
        return activation_entropy(model, tb.ordered(batch_size), batch_size=batch_size, device=ctx.device)
    counts = {k: distributed.all_reduce_sum(v.clone()) for k, v in oc.counts.items()}
    seen = distributed.all_reduce_sum(torch.tensor(list(oc.samples.values()), dtype=torch.long, device=ctx.device))
    return entropy_from_counts(counts, dict(zip(oc.samples, seen.tolist())))


def _round_flops(ctx: RunContext, masks: Masks, epochs: int, round_idx: int) -> tuple[float, float, float]:
    """(measured dense, measured sparse-aware, paper convention) PFLOPs of one round (docs/protocol.md)."""
    tb = ctx.train_batches
    example = tb.example(2)
    step = step_flops(ctx.model, example, teacher=ctx.teacher, masks=masks, teacher_masks=ctx.teacher_masks)
    # cached teacher logits: one teacher pass over the data, charged to the round that made it
    # (round 0 for fixed teachers, each round for self-distillation, whose teacher changes)
    cached = ctx.teacher is not None and getattr(ctx.objective, "cached_logits", None) is not None
    passes = (1 if round_idx == ctx.teacher_cache_round else 0) if cached else None
    n = tb.num_rows
    dense, sparse = training_flops(step, n_examples=n, epochs=epochs, teacher_passes=passes)
    paper = paper_training_flops(step, n_examples=n, epochs=epochs, teacher_passes=passes)
    return to_pflops(dense), to_pflops(sparse), to_pflops(paper)


def measure(
    ctx: RunContext, round_idx: int, masks: Masks, logs: list[EpochLog], previous: RoundRow | None
) -> tuple[RoundRow, list[dict[str, Any]]]:
    """The round's row (accuracies, entropy, compute; phase None until the tables are written)
    and its per-layer entropy rows. ``previous``: the row of round i-1, for the cumulative cost."""
    metrics = _evaluate(ctx)
    entropy, layers = _measure_entropy(ctx)
    pf_dense, pf_sparse, pf_paper = _round_flops(ctx, masks, len(logs), round_idx)
    if previous is None:
        before: tuple[float, float, float | None] = (0.0, 0.0, 0.0)
    else:  # the paper column stays None after rounds written before it existed
        before = (previous.train_pflops_dense, previous.train_pflops_sparse, previous.train_pflops_paper)
    row = RoundRow(
        round=round_idx,
        sparsity=sparsity(masks),
        alive_weights=count_alive(masks),
        epochs=len(logs),
        train_loss=logs[-1].loss,
        **metrics,
        entropy=entropy,
        round_pflops_dense=pf_dense,
        round_pflops_sparse=pf_sparse,
        train_pflops_dense=before[0] + pf_dense,
        train_pflops_sparse=before[1] + pf_sparse,
        round_pflops_paper=pf_paper,
        train_pflops_paper=None if before[2] is None else before[2] + pf_paper,
    )
    return row, [{"round": round_idx, "sparsity": row.sparsity, **r} for r in layers]


def save_round(
    ctx: RunContext,
    masks: Masks,
    row: RoundRow,
    layer_rows: list[dict[str, Any]],
    timing: dict[str, Any],
    logs: list[EpochLog],
    best_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the round's folder, its manifest last (from then on the round counts as finished),
    and drop its epoch checkpoint. ``best_state``: the best-validation epoch's weights
    (``train.select_epoch=best_val``), checksummed in the manifest beside the others."""
    rd = rundir.round_dir(ctx.run_dir, row.round)
    rd.mkdir(parents=True, exist_ok=True)
    store.save_tensors(rd / "state.safetensors", state_dict_cpu(ctx.model))
    store.save_tensors(rd / "masks.safetensors", masks)
    adapter = _adapter_state(ctx)
    if adapter is not None:  # feature distillation: the round's trained adapter, beside (not in) the student's state
        store.save_tensors(rd / "adapter.safetensors", adapter)
    store.write_json(
        rd / rundir.METRICS,
        {"row": row.as_dict(), "entropy_layers": layer_rows, "timing": timing, "epochs": [vars(log) for log in logs]},
    )
    files = list(rundir.ROUND_FILES)
    if best_state is not None:
        store.save_tensors(rd / rundir.BEST_STATE, best_state)
        files.append(rundir.BEST_STATE)
    store.write_manifest(rd, files)
    checkpoint.partial_path(ctx.run_dir, row.round).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- tables and stopping


def label_rows(rows: list[RoundRow], *, finished: bool, n_eval: int | None = None) -> list[str]:
    """Phase of every round (docs/phases.md); ``finished``: every configured round was trained;
    ``n_eval``: samples behind the selection accuracy (sets the accuracy tolerance)."""
    if not rows:
        return []
    col = selection_column(rows)
    mem = [r.train_acc_flipped for r in rows]
    return label_phases(
        [r[col] for r in rows],
        memorisation=None if any(m is None for m in mem) else mem,
        fit=[r.unflipped_acc for r in rows],
        finished=finished,
        n_eval=n_eval,
    )


def _n_eval(ctx: RunContext) -> int:
    """Samples behind the selection column: validation, or test when there is no validation split."""
    return int(ctx.data.val_y.numel()) or int(ctx.data.test_y.numel())


def relabel(ctx: RunContext, rounds: Rounds) -> None:
    """Label the phases over the curve so far."""
    finished = len(rounds.rows) == ctx.cfg.prune.rounds + 1
    phases = label_rows(rounds.rows, finished=finished, n_eval=_n_eval(ctx))
    rounds.rows = [dataclasses.replace(r, phase=p) for r, p in zip(rounds.rows, phases)]


def write_tables(ctx: RunContext, rounds: Rounds) -> None:
    """Relabel the phases over the curve so far and rewrite rounds.csv, entropy.csv and timings.csv."""
    relabel(ctx, rounds)
    columns = rundir.round_columns(ctx.cfg.train.select_epoch == "best_val")
    store.write_csv(ctx.run_dir / rundir.ROUNDS_CSV, [r.as_dict() for r in rounds.rows], columns)
    store.write_csv(ctx.run_dir / rundir.ENTROPY_CSV, rounds.entropy, rundir.ENTROPY_COLUMNS)
    store.write_csv(ctx.run_dir / rundir.TIMINGS_CSV, rounds.timings, rundir.TIMING_COLUMNS)
    rundir.record_tables(ctx.run_dir)


def stop_decision(cfg: RunConfig, rows: list[RoundRow]):
    """The early-stop rule of ``cfg`` applied to the finished rows (None when no rule is set)."""
    if cfg.early_stop.rule == "none" or not rows:
        return None
    es = cfg.early_stop
    return decide(rows, es.rule, tolerance=es.tolerance, patience=es.patience, select=es.select)


def _write_early_stop(ctx: RunContext, rows: list[RoundRow]) -> None:
    decision = stop_decision(ctx.cfg, rows)
    if decision is not None:
        store.write_json(ctx.run_dir / "early_stop.json", {"rule": ctx.cfg.early_stop.rule, **_as_dict(decision)})


def _as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)


# ----------------------------------------------------------------------------- the loop


def run_round(ctx: RunContext, rounds: Rounds, round_idx: int, hooks: list[Hook]) -> None:
    """One round: prune → reset → train → measure → save; then the tables and the hooks."""
    t0 = time.perf_counter()
    masks = prune_step(ctx, rounds.masks, round_idx)
    if ctx.cfg.distill.self_distill and round_idx > 0:
        _teach_from_round_before(ctx, round_idx)
    reset_weights(ctx, round_idx, masks)
    logs, lr_scale = train_round(ctx, round_idx, masks, hooks)
    train_s = time.perf_counter() - t0
    row, layer_rows = measure(ctx, round_idx, masks, logs, rounds.last)
    best = best_epoch_hook(hooks)
    if best is not None:
        row = dataclasses.replace(row, **best.columns())
    timing = {
        "round": round_idx,
        "wall_s": time.perf_counter() - t0,
        "train_s": train_s,
        "device": str(ctx.device),
        "lr_scale": lr_scale,
        "threads": ctx.threads,
    }
    w = distributed.world()
    if w.distributed:
        timing["world_size"] = w.size  # metrics.json: which rounds ran how split
    if w.main:
        save_round(ctx, masks, row, layer_rows, timing, logs, best.state if best is not None else None)
    rounds.rows.append(row)
    rounds.entropy.extend(layer_rows)
    rounds.timings.append(timing)
    rounds.masks = masks
    _tables(ctx, rounds)
    for hook in hooks:
        hook.round_end(rounds.rows[-1])
    distributed.barrier()  # the round is on disk before any rank reads a file of it (late rewind, resume)


def _adapter_state(ctx: RunContext) -> dict[str, torch.Tensor] | None:
    state = getattr(ctx.objective, "adapter_state", None)
    return state() if state is not None else None


def _teach_from_round_before(ctx: RunContext, round_idx: int) -> None:
    """Self-distillation: round ``round_idx`` learns from round ``round_idx - 1`` as saved on disk
    (the same teacher whether the run was interrupted or not)."""
    close = getattr(ctx.objective, "close", None)
    if close is not None:  # the previous round's hint hooks on the student
        close()
    channels_last = ctx.train_batches.channels_last
    t = self_teaching(ctx.cfg, ctx.run_dir, round_idx, ctx.device, ctx.train_batches, channels_last, student=ctx.model)
    assert t.objective is not None
    ctx.objective, ctx.teacher, ctx.teacher_masks, ctx.teacher_cache_round = t.objective, t.teacher, t.masks, t.cache_round


def run(
    cfg: RunConfig,
    out: str | Path = "runs",
    *,
    run_dir: Path | None = None,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: Callable[[int, int, EpochLog], None] | None = None,
) -> Path:
    """Run (or resume) the IMP study of ``cfg``; return its run directory.

    ``on_round(row)`` is called after every round (the row is also a read-only mapping of column
    to value), ``progress(round, epochs, log)`` after every epoch.

    Under a launcher that starts several processes (``torchrun``: RANK/WORLD_SIZE set) the
    processes train this one run data-parallel (:mod:`dsd2.distributed`): rank 0 holds the
    lock and writes the run directory, the others read what it wrote; the callbacks run on
    rank 0 only."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg, out)
    with distributed.session(resolve_device(cfg.train.device).type) as world:
        if world.distributed:
            distributed.check_global_batch(cfg.train.batch_size, world.size)
        checked = distributed.on_main(lambda: _check_config_matches(run_dir, cfg))
        cfg = distributed.broadcast_object(checked) if world.distributed else checked  # type: ignore[assignment]
        with ExitStack() as held:
            ctx = distributed.on_main(lambda: _begin(cfg, run_dir, held))
            if ctx is None:  # another rank: rank 0 has written config, meta, labels and init
                ctx = start(cfg, run_dir)
            _rounds(ctx, on_round, progress)
    return run_dir


def _begin(cfg: RunConfig, run_dir: Path, held: ExitStack) -> RunContext:
    """Lock the run directory (``held`` keeps the lock), extend it when ``cfg`` asks more rounds,
    and start the run; a run that fails to start leaves no half-made directory."""
    fresh = not run_dir.exists()
    held.enter_context(store.run_lock(run_dir))
    if not fresh and (run_dir / rundir.META).is_file():
        saved = rundir.read_config(run_dir)
        if cfg.prune.rounds > saved.prune.rounds:
            _extend(run_dir, saved, cfg)
    try:
        ctx = start(cfg, run_dir)
    except BaseException:
        if fresh:  # a failed start (missing data, unknown model, no memory) leaves no half-made run
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if distributed.world().distributed:
        _record_world(run_dir, cfg)
    return ctx


def _record_world(run_dir: Path, cfg: RunConfig) -> None:
    """meta.json's "distributed": how the latest launch split the run (a resume may use another
    world size: the sample order does not depend on it; each round's metrics.json has its own)."""
    meta = store.read_json(run_dir / rundir.META)
    meta["distributed"] = distributed.describe(cfg.train.batch_size)
    store.write_json(run_dir / rundir.META, meta)


def _rounds(ctx: RunContext, on_round: Callable[[RoundRow], None] | None, progress: Callable[[int, int, EpochLog], None] | None) -> None:
    """The rounds still to train, until the last or the early-stop rule's stop."""
    cfg, main = ctx.cfg, distributed.is_main()
    rounds = resume_rounds(ctx)
    _tables(ctx, rounds)
    hooks = make_hooks(ctx, on_round=on_round, progress=progress)
    try:
        for i in range(len(rounds.rows), cfg.prune.rounds + 1):
            decision = stop_decision(cfg, rounds.rows)
            if decision is not None and decision.stop_round is not None:
                break
            run_round(ctx, rounds, i, hooks)
    finally:
        for hook in hooks:
            hook.close()
        ctx.close()
    if main:
        _write_early_stop(ctx, rounds.rows)
    distributed.barrier()  # every file is written when any rank returns


def _tables(ctx: RunContext, rounds: Rounds) -> None:
    """Rank 0 writes the tables; the other ranks label the phases the same way (the stop rule reads them)."""
    if distributed.is_main():
        write_tables(ctx, rounds)
    else:
        relabel(ctx, rounds)


def resume(run_dir: str | Path, **kwargs) -> Path:
    """Continue the run in ``run_dir`` with the config it recorded."""
    return run(rundir.read_config(run_dir), run_dir=Path(run_dir), **kwargs)
