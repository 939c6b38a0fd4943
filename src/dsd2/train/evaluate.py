"""Batched evaluation: logits, predictions and accuracy over a :class:`~dsd2.train.sources.Source`."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .sources import Source


def autocast_for(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def logits_of(model: nn.Module, data: Source, *, batch_size: int, amp: bool = False, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Float32 logits for every row of ``data`` (or rows ``lo..hi-1``; unaugmented, eval mode), on the data's device."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for xb in data.ordered(batch_size) if rows is None else data.ordered(batch_size, rows):
            with autocast_for(data.device, amp):
                out.append(model(xb).float())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, 0, device=data.device)
    return torch.cat(out)


def predict(model: nn.Module, data: Source, *, batch_size: int, amp: bool = False, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Predicted classes (int64, on the data's device) for every row of ``data`` (or rows ``lo..hi-1``); eval mode."""
    logits = logits_of(model, data, batch_size=batch_size, amp=amp, rows=rows)
    if logits.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=data.device)
    return logits.argmax(1)


def accuracy(pred: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None) -> float | None:
    """Fraction correct, optionally over ``index`` only; None when there is nothing to score."""
    if index is not None:
        pred, labels = pred[index], labels[index]
    if labels.numel() == 0:
        return None
    return int((pred == labels).sum()) / labels.numel()  # exact fraction, not a float32 mean
