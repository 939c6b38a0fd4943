"""What a cell's model and data look like without loading data or allocating memory.

Validation (:mod:`.spec`) and the cost estimate (:mod:`.cost`) both build models on the meta
device, so they share this table of dataset shapes and one cache of meta models.
"""

from __future__ import annotations

import json
from typing import Any

from dsd2.config import RunConfig

# Per dataset: input shape of one example, classes, original train-set size, default validation size.
DATASET_SHAPES: dict[str, dict[str, Any]] = {
    "cifar10": {"shape": (3, 32, 32), "classes": 10, "train": 50000, "val": 5000},
    "cifar100": {"shape": (3, 32, 32), "classes": 100, "train": 50000, "val": 5000},
    "fashion_mnist": {"shape": (1, 28, 28), "classes": 10, "train": 60000, "val": 5000},
    "mnist1d": {"shape": (40,), "classes": 10, "train": 4000, "val": 500},
}

_META_CACHE: dict[str, Any] = {}


def dataset_key(cfg: RunConfig) -> str:
    """The dataset's registry name as the config spells it, normalised (``Fashion-MNIST`` → ``fashion_mnist``)."""
    return cfg.dataset.name.strip().lower().replace("-", "_")


def model_key(cfg: RunConfig) -> str:
    """One string per (dataset, model, options): the key of the meta-model and FLOP caches."""
    return json.dumps([cfg.dataset.name, cfg.model.model_dump(mode="json")], sort_keys=True)


def model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    info = DATASET_SHAPES[dataset_key(cfg)]
    shape = info["shape"]
    return {"num_classes": info["classes"], "in_channels": shape[0] if len(shape) == 3 else 1, "input_size": shape[-1]}


def meta_model(cfg: RunConfig):
    """The model of ``cfg`` built on the meta device (cached per model + dataset)."""
    key = model_key(cfg)
    if key not in _META_CACHE:
        import torch

        from dsd2.models import build_model

        with torch.device("meta"):
            _META_CACHE[key] = build_model(cfg.model.name, **model_kwargs(cfg), **cfg.model.options)
    return _META_CACHE[key]
