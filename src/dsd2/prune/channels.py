"""Structured pruning: network slimming's BatchNorm scores and penalty, the channel allocations
(whole output channels, every layer keeping ``min_channels``), and the masks of the BatchNorm
channels after a removed one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from dsd2.errors import UserError

from .criteria import ScoreInputs
from .masks import Masks, Scores, drop_smallest

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
    binds it is exactly :func:`drop_smallest` (the masks of the allocation before the floor)."""
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
    """A pruning round would remove no channel, because the floor (prune.min_channels) left none
    removable or because the rate rounds to no channel in every layer: a run records it as the end
    of its curve (floor_stop.json) rather than failing, or training the same masks again (a round
    that removes nothing is not a new sparsity, and its retrained accuracy looks like a recovery)."""


class NoChannelAtThisRate(ChannelFloor):
    """The rate rounds to no channel in every layer. An iterative round ends the curve here; a
    gradual step (a small part of a round's pruning) just removes nothing this epoch."""


def _floor_blocked(requested: int, removed: int, min_channels: int) -> None:
    if requested == 0:
        raise NoChannelAtThisRate(
            "no channel would be removed: every pruned layer is so narrow that prune.rate times its alive channels rounds "
            "to 0, so the next round would retrain the same masks. The finished rounds are the curve (`dsd2 export RUN_DIR "
            "--round best`, or --round N for one of them); for more rounds start a new run with a higher prune.rate or a "
            "global channel allocation (prune.allocation=channel)"
        )
    if removed == 0:
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
        keep[n] = drop_smallest(ch.score, ch.eligible, n_drop)
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
