"""Pruning masks: a criterion scores the weights, an allocation decides how many each layer loses; apply, sparsity.

Masks are plain bool tensors keyed by the state-dict name of the weight they cover. They are
re-applied after every optimiser step (``apply_masks``), which keeps pruned weights at exactly
zero without forward hooks or re-parametrisation, so a pruned model's ``state_dict`` is that of
the dense architecture with zeros in it.

Each round removes ``round(rate * alive)`` of the weights still alive (as ``torch.nn.utils.prune``
does), so after round i the sparsity is 1 - (1 - rate)^i up to one weight per round.

A pruning step is two composable choices (docs/pruning.md):

- a *criterion* (:data:`dsd2.registry.PRUNING_CRITERIA`) scores every weight, low = pruned first:
  ``criterion(weights, inputs: ScoreInputs) -> {name: float scores on the CPU}``: magnitude |w|,
  random, magnitude × gradient |w·g| and SNIP |w₀·g(w₀)|; the gradient ones read
  :class:`GradientSource` from ``inputs``;
- an *allocation* (:data:`dsd2.registry.PRUNING_ALLOCATIONS`) turns scores into the next masks:
  ``allocation(scores, masks, rate, density) -> masks``: one threshold over all layers (global),
  the same fraction of every layer (uniform), or Erdős–Rényi-Kernel layer densities (erk), which
  aims at the round's target ``density`` of the whole set; the structured ones remove whole
  output channels (channel, channel_uniform, channel_normalised) and keep ``min_channels`` of
  every layer, so the model is never cut in two.

The registered pruning *methods* (``prune.method``: ``method(weights, masks, rate, generator)``)
are the reference's pairs, bit-identical to their earlier one-piece implementations:
global_magnitude = magnitude + global, layerwise_magnitude = magnitude + uniform, random =
random + global.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from dsd2.config.choices import options_keyword
from dsd2.errors import UserError
from dsd2.registry import PRUNING_ALLOCATIONS, PRUNING_CRITERIA, PRUNING_METHODS

Masks = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


def full_masks(weights: Mapping[str, torch.Tensor]) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def count_alive(masks: Mapping[str, torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def count_total(masks: Mapping[str, torch.Tensor]) -> int:
    return int(sum(m.numel() for m in masks.values()))


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    total = count_total(masks)
    return 1.0 - count_alive(masks) / total if total else 0.0


def layer_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in masks.items()}


def _check(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"prune rate must be in (0, 1), got {rate}")
    if set(weights) != set(masks):
        raise ValueError(f"weights and masks cover different tensors: {sorted(set(weights) ^ set(masks))}")


def _drop_smallest(scores: torch.Tensor, alive: torch.Tensor, n_drop: int) -> torch.Tensor:
    """New flat mask: ``alive`` minus the ``n_drop`` alive entries of lowest score.

    Ties break by position (stable sort), so the result is deterministic.
    """
    new = alive.clone()
    if n_drop <= 0:
        return new
    alive_idx = alive.nonzero().squeeze(1)
    order = torch.sort(scores[alive_idx], stable=True).indices
    new[alive_idx[order[:n_drop]]] = False
    return new


def _unflatten(flat: torch.Tensor, names: list[str], like: Mapping[str, torch.Tensor]) -> Masks:
    out: Masks = {}
    start = 0
    for n in names:
        k = like[n].numel()
        out[n] = flat[start : start + k].view_as(like[n]).to(like[n].device)
        start += k
    return out


# ----------------------------------------------------------------------------- criteria


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
    return _unflatten(flat, names, {n: torch.empty(weights[n].shape) for n in names})


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


# ----------------------------------------------------------------------------- allocations


def global_allocation(
    scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, density: float | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` weights of lowest score over all layers together (one threshold)."""
    names = list(scores)
    flat_scores = torch.cat([scores[n].flatten() for n in names])
    alive = torch.cat([masks[n].flatten().cpu() for n in names])
    flat = _drop_smallest(flat_scores, alive, round(rate * int(alive.sum())))
    return _unflatten(flat, names, masks)


def uniform_allocation(
    scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, density: float | None = None
) -> Masks:
    """Remove ``round(rate * alive_l)`` weights of lowest score in every layer l separately."""
    return {n: _drop_per_layer(scores[n], masks[n], round(rate * int(masks[n].sum()))) for n in scores}


def _drop_per_layer(score: torch.Tensor, mask: torch.Tensor, n_drop: int) -> torch.Tensor:
    flat = _drop_smallest(score.flatten(), mask.flatten().cpu(), n_drop)
    return flat.view_as(mask).to(mask.device)


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel layer densities (Evci et al. 2020, RigL) for an overall ``density``.

    Layer l's density is ε·(Σ dims)/(Π dims) (for a conv: (n_out + n_in + k_h + k_w)/(n_out·n_in·k_h·k_w),
    for a Linear Erdős–Rényi's (n_out + n_in)/(n_out·n_in)), ε chosen so the kept weights add up
    to ``density`` of the total. A layer whose density would pass 1 stays dense and ε is solved
    again over the others (as RigL's code does), until none does.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"ERK needs an overall density in (0, 1], got {density}")
    size = {n: _numel(s) for n, s in shapes.items()}
    raw = {n: sum(s) / size[n] for n, s in shapes.items()}
    keep = density * sum(size.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = keep - sum(size[n] for n in dense)
        divisor = sum(raw[n] * size[n] for n in rest)
        eps = budget / divisor if divisor else 0.0
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.add(max(over, key=lambda n: raw[n]))


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def erk_allocation(
    scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, density: float | None = None
) -> Masks:
    """Keep ``round(d_l · n_l)`` weights of highest score in layer l, d_l the ERK density for the
    round's overall target ``density`` (IMP passes (1 - rate)^round; None: (1 - rate) × the
    current density). ERK densities grow with the target, so from dense masks every round's
    masks nest in the previous ones; a layer already sparser than its share loses nothing."""
    if density is None:
        density = (1.0 - rate) * count_alive(masks) / max(count_total(masks), 1)
    target = erk_densities({n: tuple(m.shape) for n, m in masks.items()}, density)
    out: Masks = {}
    for n in scores:
        alive = int(masks[n].sum())
        out[n] = _drop_per_layer(scores[n], masks[n], alive - min(alive, round(target[n] * masks[n].numel())))
    return out


# ----------------------------------------------------------------------------- network slimming (structured)

BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)


def batchnorm_after(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Weight key → module name of the BatchNorm that normalises its output channels.

    By module order (registration order, which is call order in the built-in and torchvision
    models): the first BatchNorm after a Conv/Linear, before the next Conv/Linear, with one
    feature per output channel. Layers without one (the classifier) are absent.
    """
    links: dict[str, str] = {}
    last: str | None = None
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            last = key if key in weights else None
        elif isinstance(module, BATCHNORMS) and last is not None and module.num_features == weights[last].shape[0]:
            if module.affine:
                links[last] = name
            last = None
    return links


def slimming_scores(weights: Mapping[str, torch.Tensor], inputs: ScoreInputs) -> Scores:
    """Network slimming (Liu et al. 2017): every weight of output channel c scores |γ_c|, the scale
    of the BatchNorm after its layer; layers without a BatchNorm score +inf (never chosen)."""
    if inputs.model is None:
        raise ValueError("the slimming criterion reads BatchNorm scales: pass ScoreInputs(model=...)")
    links = batchnorm_after(inputs.model, weights)
    modules = dict(inputs.model.named_modules())
    out: Scores = {}
    for n, w in weights.items():
        if n not in links:
            out[n] = torch.full(w.shape, math.inf)
            continue
        gamma = modules[links[n]].weight.detach().abs().float().cpu()
        out[n] = gamma.view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone()
    return out


@dataclass
class _Channels:
    """One layer's output channels (rows of dim 0) as a structured allocation sees them: the mean
    score of each channel's alive weights, which channels are alive (any weight kept), and which
    may be removed (alive with a finite score: slimming scores layers without BatchNorm +inf)."""

    score: torch.Tensor
    alive: torch.Tensor
    eligible: torch.Tensor

    def removable(self, min_channels: int) -> int:
        """How many channels may still go: the layer keeps ``min_channels`` alive channels (or
        what it has, if fewer), so a channel allocation never empties a layer."""
        return max(0, min(int(self.eligible.sum()), int(self.alive.sum()) - min_channels))


def _channels(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, _Channels]:
    out: dict[str, _Channels] = {}
    for n in scores:
        m = masks[n].flatten(1).cpu() if masks[n].dim() > 1 else masks[n].view(-1, 1).cpu()
        sc = scores[n].reshape(m.shape)
        alive = m.any(1)
        mean = (sc * m).sum(1) / m.sum(1).clamp(min=1)
        finite = torch.isfinite(sc).all(1)
        out[n] = _Channels(torch.where(finite, mean, torch.zeros_like(mean)), alive, alive & finite)
    return out


def _drop_capped(scores: torch.Tensor, eligible: torch.Tensor, layer: torch.Tensor, caps: torch.Tensor, n_drop: int) -> torch.Tensor:
    """``eligible`` minus the ``n_drop`` eligible entries of lowest score such that no more than
    ``caps[l]`` go from layer l (``layer``: each entry's layer index); stable ties by position.

    Greedy in score order, which is the lowest-score choice under per-layer caps; when no cap
    binds it is exactly :func:`_drop_smallest` (the masks of the allocation before the floor)."""
    new = eligible.clone()
    if n_drop <= 0:
        return new
    idx = eligible.nonzero().squeeze(1)
    order = idx[torch.sort(scores[idx], stable=True).indices]
    # rank of each candidate within its own layer, in score order: group by layer (stable), count
    group = layer[order]
    by_layer = torch.sort(group, stable=True).indices
    counts = torch.bincount(group, minlength=len(caps))
    rank = torch.empty_like(group)
    rank[by_layer] = torch.arange(len(group)) - (torch.cumsum(counts, 0) - counts)[group[by_layer]]
    allowed = order[rank < caps[group]]
    new[allowed[:n_drop]] = False
    return new


class ChannelFloor(UserError):
    """Pruning asked to remove channels and the floor (prune.min_channels) left none removable:
    a run records it as the end of its curve (floor_stop.json) rather than failing."""


def _floor_blocked(requested: int, removed: int, min_channels: int) -> None:
    if requested > 0 and removed == 0:
        raise ChannelFloor(
            f"no channel can be removed: every pruned layer has at most prune.min_channels={min_channels} output channel(s) "
            "left. The finished rounds are the curve (`dsd2 export RUN_DIR --round best`, or --round N for one of them); for "
            "more rounds start a new run with a lower prune.min_channels or prune.rate, or fewer layers "
            "pruned (prune.include / prune.exclude)"
        )


def _rows_to_masks(masks: Mapping[str, torch.Tensor], channels: Mapping[str, _Channels], keep: Mapping[str, torch.Tensor]) -> Masks:
    """New masks: every row of ``masks`` whose channel is removed (eligible, not in ``keep``) emptied."""
    out: Masks = {}
    for n, ch in channels.items():
        rows = keep[n] | ~ch.eligible  # channels not eligible keep their mask
        shape = (-1,) + (1,) * (masks[n].dim() - 1)
        out[n] = masks[n] & rows.view(shape).to(masks[n].device)
    return out


def _global_channels(
    channels: Mapping[str, _Channels], masks: Mapping[str, torch.Tensor], rate: float, min_channels: int, normalise: bool
) -> Masks:
    names = list(channels)
    scores = [channels[n].score for n in names]
    if normalise:
        # each channel relative to its layer's mean alive-channel score: removes the layers' scale
        # (|w| at init ~ 1/sqrt(fan_in)) and does not depend on the layer's width
        scores = [_per_layer_normalised(channels[n]) for n in names]
    eligible = torch.cat([channels[n].eligible for n in names])
    layer = torch.cat([torch.full((channels[n].score.numel(),), i, dtype=torch.long) for i, n in enumerate(names)])
    caps = torch.tensor([channels[n].removable(min_channels) for n in names], dtype=torch.long)
    requested = round(rate * int(eligible.sum()))
    keep = _drop_capped(torch.cat(scores), eligible, layer, caps, requested)
    _floor_blocked(requested, int((eligible & ~keep).sum()), min_channels)
    return _rows_to_masks(masks, channels, dict(zip(names, keep.split([channels[n].score.numel() for n in names]))))


def _per_layer_normalised(ch: _Channels) -> torch.Tensor:
    mean = ch.score[ch.eligible].mean() if ch.eligible.any() else torch.tensor(0.0)
    return ch.score / mean if float(mean) > 0 else ch.score


def channel_allocation(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    density: float | None = None,
    *,
    min_channels: int = 1,
) -> Masks:
    """Structured: remove round(rate · alive channels) whole output channels (rows of dim 0) of
    lowest mean alive score over all layers (one ranking: network slimming's global |γ| threshold).
    A channel is alive while any of its weights is; one whose score is not finite is never removed
    (slimming: layers without BatchNorm). Every layer keeps ``min_channels`` alive channels: the
    lowest channels of a layer at its floor are passed over for the next ones elsewhere."""
    return _global_channels(_channels(scores, masks), masks, rate, min_channels, normalise=False)


def channel_normalised_allocation(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    density: float | None = None,
    *,
    min_channels: int = 1,
) -> Masks:
    """:func:`channel_allocation` on scores normalised per layer: each channel's mean score divided
    by the mean over its layer's alive channels, so a layer's scale (fan-in) does not decide which
    layer loses channels; the floor as there."""
    return _global_channels(_channels(scores, masks), masks, rate, min_channels, normalise=True)


def channel_uniform_allocation(
    scores: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    density: float | None = None,
    *,
    min_channels: int = 1,
) -> Masks:
    """Structured, per layer (Li et al. 2017, L1-norm filter pruning with ``magnitude``): every layer
    l loses round(rate · eligible channels_l) of its own channels of lowest mean score (the L1 norm
    over the filter's size: the same order within a layer), down to ``min_channels``."""
    channels = _channels(scores, masks)
    keep: dict[str, torch.Tensor] = {}
    requested = removed = 0
    for n, ch in channels.items():
        want = round(rate * int(ch.eligible.sum()))
        n_drop = min(want, ch.removable(min_channels))
        keep[n] = _drop_smallest(ch.score, ch.eligible, n_drop)
        requested, removed = requested + want, removed + n_drop
    _floor_blocked(requested, removed, min_channels)
    return _rows_to_masks(masks, channels, keep)


def check_layers_alive(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> None:
    """A structured allocation must leave every layer an output channel: a layer with none cuts the
    model in two (its output is constant, and training goes on). Raises UserError naming the layer."""
    for n, m in after.items():
        if alive_rows(m).any():
            continue
        if not alive_rows(before[n]).any():
            raise UserError(
                f"layer {n} has no output channel left in the masks this round starts from (made by a dsd2 without "
                "prune.min_channels): the model is cut in two. Start a new run of this config"
            )
        raise UserError(
            f"the allocation removed every output channel of layer {n}: the model would be cut in two. "
            "Use a built-in channel allocation (they keep prune.min_channels per layer) or fix the allocation"
        )


def batchnorm_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> tuple[dict[str, nn.Parameter], Masks]:
    """The scale γ and shift β of every BatchNorm channel after a layer, with masks that zero those
    whose output channel is removed, so a removed channel outputs exactly 0 (its conv output is 0,
    and BatchNorm would add β). Applied with the weight masks after every optimiser step."""
    links = batchnorm_after(model, masks)
    modules = dict(model.named_modules())
    params: dict[str, nn.Parameter] = {}
    out: Masks = {}
    for key, bn_name in links.items():
        alive = alive_rows(masks[key])
        bn = modules[bn_name]
        for part in ("weight", "bias"):
            param = getattr(bn, part)
            params[f"{bn_name}.{part}"] = param
            out[f"{bn_name}.{part}"] = alive.to(param.device)
    return params, out


def alive_rows(mask: torch.Tensor) -> torch.Tensor:
    """Per output channel (row of dim 0) of a weight mask: whether any of its weights is kept."""
    return mask.flatten(1).any(1) if mask.dim() > 1 else mask.bool()


def row_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of output channels (rows of dim 0) with no weight left, over every masked layer:
    what a structured allocation removes, whether or not a BatchNorm follows."""
    rows = [alive_rows(m) for m in masks.values()]
    total = sum(r.numel() for r in rows)
    return 1.0 - sum(int(r.sum()) for r in rows) / total if total else 0.0


def channel_sparsity(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of removed output channels over the layers that have a BatchNorm after them."""
    return row_sparsity({k: masks[k] for k in batchnorm_after(model, masks)})


def add_slimming_penalty(model: nn.Module, lam: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Network slimming's sparsity penalty λ·Σ|γ| on every BatchNorm scale, as its subgradient
    λ·sign(γ) added to γ's gradient by a tensor hook (what the authors' code does after backward):
    the training loop and the loss are untouched, and the logged loss is the task loss alone."""
    handles = []
    for module in model.modules():
        if isinstance(module, BATCHNORMS) and module.affine:
            gamma = cast(torch.Tensor, module.weight)
            handles.append(gamma.register_hook(lambda g, gamma=gamma: g + lam * torch.sign(gamma.detach())))
    return handles


# ----------------------------------------------------------------------------- methods and one step


def prune_with(
    criterion: str,
    allocation: str,
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    *,
    inputs: ScoreInputs | None = None,
    density: float | None = None,
    min_channels: int = 1,
    allocation_options: Mapping[str, Any] | None = None,
) -> Masks:
    """The next masks: scores of the registered ``criterion``, removed as the registered ``allocation`` says.

    An allocation registered with an options model gets ``allocation_options`` as the keyword ``options``.

    A structured allocation never leaves a layer without an output channel: the built-in ones keep
    ``min_channels`` per layer, and any structured allocation's result is checked (UserError)."""
    _check(weights, masks, rate)
    inputs = inputs if inputs is not None else ScoreInputs(masks)
    scores = PRUNING_CRITERIA.get(criterion)(weights, inputs)
    meta: Mapping[str, Any] = PRUNING_ALLOCATIONS.metadata(allocation)
    # the built-in channel allocations take the per-layer floor; a plugin's gets the plain call
    extra: dict[str, Any] = {"min_channels": min_channels} if meta.get("min_channels") else {}
    extra.update(options_keyword(PRUNING_ALLOCATIONS, allocation, allocation_options or {}))  # a plugin's own options
    new = PRUNING_ALLOCATIONS.get(allocation)(scores, masks, rate, density, **extra)
    if meta.get("structured"):
        check_layers_alive(masks, new)
    return new


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` weights of smallest |w| over all layers together (L1 unstructured).

    ``generator`` is unused (magnitude pruning draws nothing): the signature of every pruning method."""
    _check(weights, masks, rate)
    return global_allocation(magnitude_scores(weights), masks, rate)


def layerwise_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive_l)`` weights of smallest |w| in every layer l separately (``generator`` unused)."""
    _check(weights, masks, rate)
    return uniform_allocation(magnitude_scores(weights), masks, rate)


def random_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator | None = None
) -> Masks:
    """Remove ``round(rate * alive)`` alive weights chosen uniformly at random over all layers."""
    if generator is None:
        raise ValueError("random pruning needs a generator")
    _check(weights, masks, rate)
    return global_allocation(random_scores(weights, ScoreInputs(masks, generator)), masks, rate)


def next_masks(
    method: str,
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    rate: float,
    generator: torch.Generator | None = None,
) -> Masks:
    """The masks of the next round by the registered pruning method ``method``
    (:data:`dsd2.registry.PRUNING_METHODS`; an unknown name raises UnknownNameError, a ValueError)."""
    return PRUNING_METHODS.get(method)(weights, masks, rate, generator)


def composed(method: str, criterion: str | None, allocation: str | None) -> tuple[str, str] | None:
    """The (criterion, allocation) pair a run prunes with, or None to call ``method`` itself.

    Neither given: None (the method as registered, plugins' included). Otherwise the one not
    given comes from the method's registry metadata (``criterion`` / ``allocation``: the
    built-in methods have both); a method without it cannot be combined (UserError)."""
    if criterion is None and allocation is None:
        return None
    implied: Mapping[str, Any] = PRUNING_METHODS.metadata(method)
    crit = criterion if criterion is not None else implied.get("criterion")
    alloc = allocation if allocation is not None else implied.get("allocation")
    if crit is None or alloc is None:
        missing = "prune.criterion" if crit is None else "prune.allocation"
        raise UserError(f"pruning method {method!r} names no criterion and allocation of its own: give {missing} too")
    return crit, alloc


def needs_gradients(criterion: str) -> bool:
    """Whether the registered ``criterion`` reads the training-loss gradients (registry metadata)."""
    return bool(PRUNING_CRITERIA.metadata(criterion).get("gradients"))


@torch.no_grad()
def apply_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (call after every optimiser step)."""
    for name, w in weights.items():
        w.mul_(masks[name])
