"""Model inspection: prunable weights, parameter counts, MACs per example."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prunable_weights(model: nn.Module, *, include_classifier: bool = True) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Conv1d/Conv2d/Linear module, keyed by state-dict name.

    Ordered by module order (``model.named_modules()``), e.g. ``"features.0.weight"``.
    This is the reference's pruning set: classifier and 1x1 downsample convs included,
    biases and BatchNorm never. ``include_classifier=False`` drops the last ``nn.Linear``.
    The modules must hold a plain ``weight`` Parameter (no ``torch.nn.utils.prune`` or
    parametrization wrappers: the project keeps masks outside the model).
    """
    found: list[tuple[str, nn.Parameter]] = []
    last_linear: str | None = None
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = module._parameters.get("weight")
        if not isinstance(weight, nn.Parameter):
            raise TypeError(
                f"module {name!r} ({type(module).__name__}) has no plain 'weight' Parameter; "
                "remove torch.nn.utils.prune / parametrizations before calling prunable_weights"
            )
        key = f"{name}.weight" if name else "weight"
        found.append((key, weight))
        if isinstance(module, nn.Linear):
            last_linear = key
    return {k: w for k, w in found if include_classifier or k != last_linear}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (each shared Parameter counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def macs_per_example(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Dense multiply-accumulates for one example of shape ``input_shape`` (no batch dim).

    Measured with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) in eval mode on
    a batch of one; counts convolutions and matrix products (BatchNorm, ReLU, pooling and
    additions are not counted, as usual). Sparsity is not credited. The model's training
    mode is restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    try:
        ref = next(model.parameters())
        device, dtype = ref.device, ref.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
