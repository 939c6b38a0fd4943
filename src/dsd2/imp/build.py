"""Building a run without writing to its directory: seeds, data, noisy labels, the model and its
initial weights, batches and teaching, as one :class:`Built` value (:func:`build`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import distributed, rundir, store
from dsd2.config import RunConfig, options_of
from dsd2.data import DataSplits, ImageLoader, load_dataset
from dsd2.data.image_folder import resolve_workers
from dsd2.distill.setup import Teaching, run_teaching
from dsd2.errors import UserError
from dsd2.imp.execution import resolve_device, set_threads
from dsd2.layer_defaults import structured_allocation as structured
from dsd2.models import build_model, prunable_weights
from dsd2.noise import FeatureSource, NoisyLabels, add_probe, apply_label_noise
from dsd2.prune import add_slimming_penalty
from dsd2.registry import NOISE_MODELS
from dsd2.rundir import load_state
from dsd2.threads import Share
from dsd2.train import Objective, SoftTargets, Source, cross_entropy, make_source


def round_seed(seed: int, round_idx: int, stream: int = 0) -> int:
    """Independent, reproducible seed per (run seed, round, purpose)."""
    return (seed * 1_000_003 + round_idx * 7_919 + stream * 104_729) % (2**63 - 1)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


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


def structured_allocation(cfg: RunConfig) -> bool:
    """Whether the run removes whole output channels (``prune.allocation=channel`` or a method made of
    it): :func:`dsd2.layer_defaults.structured_allocation`, the one test the config's defaults use too."""
    p = cfg.prune
    return structured(p.method, p.criterion, p.allocation)


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class Built:
    """A run as :func:`build` makes it, before anything is written to its directory."""

    device: torch.device
    data: DataSplits
    labels: NoisyLabels
    model: nn.Module
    init_state: dict[str, torch.Tensor]  # the model's initial weights, as init.safetensors holds them
    weights: dict[str, nn.Parameter]
    train_batches: Source
    objective: Objective
    teaching: Teaching | None
    threads: int
    images: ImageLoader | None


def initial_model(cfg: RunConfig, data: DataSplits, run_dir: Path, device: torch.device) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The run's model at its initialisation (the weights of init.safetensors when the run has one)
    and those weights on the CPU."""
    model = make_model(cfg, data, init_seed(cfg)).to(device)
    path = rundir.init_path(run_dir)
    if path.exists():
        load_state(model, store.load_tensors(path), path)
    return model, state_dict_cpu(model)


def build(cfg: RunConfig, run_dir: Path, share: Share = Share()) -> Built:
    """Data, noisy labels, model, batches, teaching and threads of the run; writes no file (it reads
    the run directory's init.safetensors and the teachers it recorded, when there are)."""
    device = distributed.local_device(resolve_device(cfg.train.device))
    data = build_data(cfg)
    labels = noisy_labels(cfg, data)
    _check_batch_fits(cfg, data, device)
    model, init_state = initial_model(cfg, data, run_dir, device)
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
    if teaching is not None:
        objective = teaching.objective or cross_entropy
    loader_workers = images.workers if images is not None else 0
    teacher = teaching.teacher if teaching is not None else None
    threads = set_threads(cfg, device, model, train_batches, teacher, loader_workers=loader_workers, share=share)
    return Built(device, data, labels, model, init_state, weights, train_batches, objective, teaching, threads, images)
