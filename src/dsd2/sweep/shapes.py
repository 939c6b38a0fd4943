"""What a cell's model and data look like without loading data or allocating memory.

Validation (:mod:`.spec`) and the cost estimate (:mod:`.cost`) both build models on the meta
device, so they share the dataset facts (from the dataset registry's metadata: classes, input
shape, set sizes, which a user-registered dataset gives to ``register_dataset``) and one cache of
meta models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dsd2.config import RunConfig
from dsd2.errors import UserError

_META_CACHE: dict[str, Any] = {}

# What the meta model needs, and what the cost estimate needs on top.
MODEL_FACTS = ("num_classes", "input_shape")
COST_FACTS = ("num_classes", "input_shape", "train_size")


def dataset_key(cfg: RunConfig) -> str:
    """The dataset's registered name (``Fashion-MNIST`` → ``fashion_mnist``); UserError if unknown."""
    from dsd2.data import DATASETS

    return DATASETS.canonical(cfg.dataset.name)


def dataset_info(cfg: RunConfig, needed: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """The registry's metadata of ``cfg``'s dataset; UserError naming what is missing of ``needed``."""
    from dsd2.data import DATASETS

    key = DATASETS.canonical(cfg.dataset.name)
    info: dict[str, Any] = dict(DATASETS.metadata(key))
    facts = info.pop("facts", None)
    if facts is not None:  # facts that depend on the config (image_folder: counted from its files, nothing decoded)
        try:
            info.update({k: v for k, v in facts(cfg.dataset.model_dump(mode="json")).items() if v is not None})
        except UserError as err:
            if needed:
                raise UserError(f"dataset {key!r}: the cost estimate needs its {', '.join(needed)}: {err}") from None
            return info  # validation builds no meta model then
    missing = [k for k in needed if info.get(k) is None]
    if missing:
        example = "num_classes=10, input_shape=(3, 32, 32), train_size=50000, test_size=10000"
        raise UserError(
            f"dataset {key!r} was registered without {', '.join(missing)}, which the sweep's cost estimate needs "
            f"(nothing is loaded to find them): give them to register_dataset({key!r}, ...), e.g. {example}"
        )
    return info


def has_model_facts(cfg: RunConfig) -> bool:
    """Whether the dataset's registry entry says enough to build the model on the meta device."""
    info = dataset_info(cfg)
    return all(info.get(k) is not None for k in MODEL_FACTS)


def model_key(cfg: RunConfig) -> str:
    """One string per (dataset, model, options): the key of the meta-model and FLOP caches (an image
    folder's classes and input size depend on its root and image_size)."""
    d = cfg.dataset
    return json.dumps([d.name, d.root, d.image_size, cfg.model.model_dump(mode="json")], sort_keys=True)


def input_shape(cfg: RunConfig) -> tuple[int, ...]:
    """Shape of one example of ``cfg``'s dataset (``(C, H, W)`` or ``(L,)``)."""
    return tuple(dataset_info(cfg, MODEL_FACTS)["input_shape"])


def model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    info = dataset_info(cfg, MODEL_FACTS)
    shape = tuple(info["input_shape"])
    return {"num_classes": info["num_classes"], "in_channels": shape[0] if len(shape) == 3 else 1, "input_size": shape[-1]}


def meta_model(cfg: RunConfig):
    """The model of ``cfg`` built on the meta device (cached per model + dataset)."""
    key = model_key(cfg)
    if key not in _META_CACHE:
        import torch

        from dsd2.models import build_model

        with torch.device("meta"):
            _META_CACHE[key] = build_model(cfg.model.name, **model_kwargs(cfg), **cfg.model.options)
    return _META_CACHE[key]
