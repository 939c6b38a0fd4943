"""Refuse a training batch whose activations cannot fit the machine, before allocating it.

``train.batch_size`` is bounded in the config, but what a batch costs depends on the model and
the image size: 65,536 CIFAR images through a ResNet-18 keep hundreds of GB of activations, and
the kernel kills the process (no message, and other work on the machine suffers). The model's
activations per example are counted by a forward pass on the meta device (shapes only, no memory,
no compute); a batch needing more than the memory there is is one clear error naming the setting.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dsd2.errors import UserError

# Training keeps every activation for the backward pass and holds their gradients while it runs.
TRAIN_FACTOR = 2.0


def activation_bytes_per_example(model: nn.Module, example_shape: tuple[int, ...]) -> int:
    """Bytes of the float32 outputs of every leaf module for one example (``model`` on the meta device)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((2, *example_shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total * 4 // 2)


def available_bytes(device: torch.device | str) -> int | None:
    """Memory a batch may use: the GPU's, or this machine's RAM within its cgroup limit (None: unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.get_device_properties(device).total_memory)
        except (RuntimeError, AssertionError):
            return None
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            have = min(have, int(limit))
    except OSError:
        pass
    return int(have)


def check_batch_fits(model: nn.Module, example_shape: tuple[int, ...], batch_size: int, device: torch.device | str) -> None:
    """UserError when ``batch_size`` examples of ``example_shape`` through ``model`` (built on the
    meta device) need more memory to train than ``device`` has. A model the meta device cannot run
    (some plugins) is not checked."""
    try:
        per = activation_bytes_per_example(model, example_shape)
    except Exception:  # a model that cannot run on the meta device: no estimate, no refusal
        return
    have = available_bytes(device)
    need = TRAIN_FACTOR * per * batch_size
    if have is not None and need > have:
        largest = max(1, int(have / (TRAIN_FACTOR * per)))
        raise UserError(
            f"train.batch_size={batch_size} needs about {need / 1e9:.0f} GB of activations to train this model on "
            f"{'x'.join(map(str, example_shape))} inputs, more than the {have / 1e9:.0f} GB of the {torch.device(device).type} "
            f"device: lower train.batch_size (at most about {largest} here) or the image size"
        )
