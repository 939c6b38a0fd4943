"""Pruning criteria: score every weight, low = pruned first (magnitude, random, magnitude x
gradient, SNIP), and what they may read (:class:`ScoreInputs`, :class:`GradientSource`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .masks import Scores, apply_masks, unflatten


class GradientSource:
    """Gradients of the training loss for the gradient criteria, computed on demand.

    ``batches()`` yields ``(inputs, labels)``: the same batches every call (the caller seeds
    them). The gradient is the mean over those batches of the gradient of each batch's mean loss,
    taken in eval mode (dropout is off: deterministic) with ``torch.autograd.grad`` (the
    parameters' ``.grad`` are left alone). ``batchnorm``: ``"running"`` normalises with the
    BatchNorm running statistics (eval mode); ``"batch"`` puts the BatchNorm layers alone in
    training mode, so each batch is normalised with its own statistics, as a network in training
    mode is; their running statistics are put back afterwards. ``init_state`` (a state dict of the
    initial weights) is needed by SNIP only: :meth:`at_init` loads it, masks it, takes the
    gradient there and puts the model's state back.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, nn.Parameter],
        batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        init_state: Callable[[], Mapping[str, torch.Tensor]] | None = None,
        batchnorm: str = "running",
    ) -> None:
        if batchnorm not in ("running", "batch"):
            raise ValueError(f"batchnorm must be 'running' or 'batch', got {batchnorm!r}")
        self.model, self.weights, self.batches, self.init_state = model, weights, batches, init_state
        self.batchnorm = batchnorm
        self.loss = loss or (lambda logits, y: nn.functional.cross_entropy(logits.float(), y))

    def gradients(self) -> Scores:
        """Mean gradient of the loss w.r.t. every weight, at the model's current state (CPU, float)."""
        names = list(self.weights)
        params = [self.weights[n] for n in names]
        total: list[torch.Tensor] | None = None
        count = 0
        was_training = self.model.training
        self.model.eval()
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if self.batchnorm == "batch" else []
        kept = [{k: b.detach().clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
        for m in norms:
            m.train()  # batch statistics; the forward updates the running ones, put back below
        try:
            for x, y in self.batches():
                grads = torch.autograd.grad(self.loss(self.model(x), y), params)
                total = [g.detach().float() for g in grads] if total is None else [t + g.float() for t, g in zip(total, grads)]
                count += 1
        finally:
            with torch.no_grad():
                for m, buffers in zip(norms, kept):
                    for k, b in m.named_buffers(recurse=False):
                        b.copy_(buffers[k])
            self.model.train(was_training)
        if total is None:
            raise ValueError("the gradient criteria need at least one batch of training data")
        return {n: (t / count).cpu() for n, t in zip(names, total)}

    def at_current(self) -> tuple[Scores, Scores]:
        """(weights, gradients) at the model's current (trained, masked) weights."""
        # a copy: at_init puts the trained weights back into these very tensors
        return {n: w.detach().float().cpu().clone() for n, w in self.weights.items()}, self.gradients()

    def at_init(self, masks: Mapping[str, torch.Tensor]) -> tuple[Scores, Scores]:
        """(weights, gradients) at the initial weights under ``masks``; the model's state is restored after."""
        if self.init_state is None:
            raise ValueError("SNIP needs the initial weights: give GradientSource an init_state")
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(dict(self.init_state()))
            apply_masks(self.weights, masks)
            return self.at_current()
        finally:
            self.model.load_state_dict(saved)


@dataclass
class ScoreInputs:
    """What a criterion may read besides the weights: the current masks, the round's generator
    (random), the training-loss gradients (magnitude_gradient, snip), the model (slimming
    reads its BatchNorm scales) and a plugin criterion's own options (``prune.criterion_options``,
    validated against the options model it was registered with, defaults filled in)."""

    masks: Mapping[str, torch.Tensor]
    generator: torch.Generator | None = None
    gradients: GradientSource | None = None
    model: nn.Module | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def magnitude_scores(weights: Mapping[str, torch.Tensor], inputs: ScoreInputs | None = None) -> Scores:
    """|w| (L1 unstructured)."""
    return {n: w.detach().abs().float().cpu() for n, w in weights.items()}


def random_scores(weights: Mapping[str, torch.Tensor], inputs: ScoreInputs) -> Scores:
    """Uniform random scores from the round's generator: one draw over all layers in order (so the
    masks of ``prune.method=random`` are those it always drew)."""
    if inputs.generator is None:
        raise ValueError("random pruning needs a generator")
    names = list(weights)
    flat = torch.rand(sum(weights[n].numel() for n in names), generator=inputs.generator)
    return unflatten(flat, names, {n: torch.empty(weights[n].shape) for n in names})


def _needs_gradients(inputs: ScoreInputs, criterion: str) -> GradientSource:
    if inputs.gradients is None:
        raise ValueError(f"the {criterion} criterion needs training-loss gradients: pass ScoreInputs(gradients=GradientSource(...))")
    return inputs.gradients


def magnitude_gradient_scores(weights: Mapping[str, torch.Tensor], inputs: ScoreInputs) -> Scores:
    """|w·∂L/∂w| at the current (trained) weights: the first-order estimate of the loss change
    when w is removed."""
    w, g = _needs_gradients(inputs, "magnitude_gradient").at_current()
    return {n: (w[n] * g[n]).abs() for n in weights}


def snip_scores(weights: Mapping[str, torch.Tensor], inputs: ScoreInputs) -> Scores:
    """SNIP's connection sensitivity |w₀·∂L/∂w(w₀)| at the initial weights w₀ under the current
    mask (recomputed each round, so the already pruned weights shape the gradient)."""
    w0, g = _needs_gradients(inputs, "snip").at_init(inputs.masks)
    return {n: (w0[n] * g[n]).abs() for n in weights}
