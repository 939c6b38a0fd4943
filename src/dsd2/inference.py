"""Predicting with an exported model: the input preparation ``model.json`` describes, done for you.

An export records the input shape and the normalisation the model was trained with;
:func:`exported_transform` turns raw inputs into what the model takes (uint8 pixels are scaled
to [0, 1] as in training, then normalised per channel), and :func:`predict` runs the model on
them in batches and names the classes. ``model.json`` is read only through
:func:`dsd2.exporting.read_info` (checksums checked) and the model through
:func:`dsd2.exporting.load_exported`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2.data.augment import normalize
from dsd2.errors import UserError
from dsd2.exporting import load_exported, read_info


def _as_tensor(images: Any) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    try:
        import numpy as np

        return torch.as_tensor(np.asarray(images))
    except (TypeError, ValueError) as err:
        if isinstance(images, (list, tuple)) and "inhomogeneous" in str(err):  # numpy's word for ragged shapes
            raise UserError(
                f"images of different sizes ({len(images)} given): resize and crop each to the model's input_shape first "
                "(model.json; image-folder runs were evaluated on Resize(image_size / 0.875) + CenterCrop(image_size))"
            ) from None
        raise UserError(f"images must be a tensor or an array (N x C x H x W, or one image), got {type(images).__name__}: {err}") from None


def to_model_layout(x: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """``x`` as a batch of ``input_shape`` samples: one sample gains the batch axis, channels-last
    images (H x W x C, as PIL and numpy give them) are made channels-first, grey images without a
    channel axis gain it. Anything else is refused with the shape expected."""
    shape = tuple(int(s) for s in input_shape)
    if tuple(x.shape[-len(shape) :]) == shape and x.ndim in (len(shape), len(shape) + 1):
        return x if x.ndim == len(shape) + 1 else x.unsqueeze(0)
    if len(shape) == 3:
        c, h, w = shape
        if x.ndim in (3, 4) and tuple(x.shape[-3:]) == (h, w, c):  # channels-last
            x = x.movedim(-1, -3)
            return x if x.ndim == 4 else x.unsqueeze(0)
        if c == 1 and x.ndim in (2, 3) and tuple(x.shape[-2:]) == (h, w):  # grey, no channel axis
            x = x.unsqueeze(-3)
            return x if x.ndim == 4 else x.unsqueeze(0)
    wanted = " x ".join(map(str, shape))
    raise UserError(
        f"images of shape {tuple(x.shape)} do not fit the model's input {wanted}: give N x {wanted} "
        "(or one image; channels-last is accepted), resized and cropped to that size first"
    )


def exported_transform(
    export_dir: str | Path, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Callable[[Any], torch.Tensor]:
    """The function that prepares raw inputs for the model exported in ``export_dir``.

    It takes a tensor or array of images (uint8 pixels, or floats already in [0, 1]) or of
    feature vectors, one sample or a batch, and returns the normalised float batch the model
    takes. ``mean``/``std`` replace the recorded normalisation (needed when ``model.json``
    records none)."""
    info = read_info(export_dir)
    mean = list(mean) if mean is not None else info.get("mean")
    std = list(std) if std is not None else info.get("std")
    if mean is None or std is None:
        raise UserError(f"{export_dir}/model.json records no normalisation (normalisation_source null): pass mean= and std=")
    shape = list(info["input_shape"])

    def transform(images: Any) -> torch.Tensor:
        x = to_model_layout(_as_tensor(images), shape)
        if x.dtype != torch.uint8 and not x.is_floating_point():
            x = x.float()
        return normalize(x, mean, std).contiguous()

    return transform


@dataclass(frozen=True)
class Predictions:
    """The model's answers for a batch: ``logits`` (N x K), ``probabilities`` (softmax),
    ``labels`` (class indices) and ``names`` (the class names, when the dataset has them)."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    labels: torch.Tensor
    names: list[str] | None


def predict(
    export_dir: str | Path,
    images: Any,
    *,
    model: nn.Module | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Predictions:
    """Classify ``images`` with the model exported in ``export_dir`` (loaded once per call, or
    pass ``model=dsd2.load_exported(dir)`` to reuse one), preparing them as
    :func:`exported_transform` does."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    transform = exported_transform(export_dir)
    info = read_info(export_dir)
    net = model if model is not None else load_exported(export_dir, device)
    x = transform(images)
    dev = next((p.device for p in net.parameters()), torch.device(device))
    with torch.inference_mode():
        logits = torch.cat([net(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, x.shape[0], batch_size)])
    labels = logits.argmax(dim=1)
    classes = info.get("class_names")
    names = [str(classes[i]) for i in labels.tolist()] if classes else None
    return Predictions(logits, logits.softmax(dim=1), labels, names)
