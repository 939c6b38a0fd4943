"""Structured pruning that pays: remove pruned output channels physically.

A channel-pruned network (network slimming, or any criterion with ``prune.allocation=channel``)
still has its dense shapes: the removed channels are rows of zeros, and dense kernels spend the
same time on them. :func:`shrink` returns a smaller model with the same function: each removed
output channel of a Conv/Linear layer goes, with its BatchNorm entries and the matching input
channels of the layer that consumes it.

Where a channel may go is read from the model's graph (``torch.fx``), not from per-architecture
code: from a producer (Conv1d/2d, Linear) through channel-wise operations only (BatchNorm,
activations, pooling, dropout, a flatten) to exactly one consumer (Conv or Linear). A producer
whose output feeds anything else (a residual addition, a concatenation, two consumers) is kept
whole, and the report says so: removing a channel there would need every branch to agree.

A removed row does not always output zero: a bias or a BatchNorm shift makes it a constant. The
value each candidate channel takes at the consumer's input is observed on a probe batch; a row
with no weights left outputs the same constant for every input, so a channel that is zero there
is removed exactly, and one with a constant ``v`` is folded into a Linear consumer's bias (``b +
W[:, c] · v``, exact). A constant before a padded convolution is not uniform at the borders, so
such a channel is kept and counted. The shrunk model is then checked against the masked one.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dsd2.errors import UserError

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
CHANNELWISE_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
CHANNELWISE_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.nn.functional.max_pool2d, torch.sigmoid}
FLATTENS = {torch.flatten}
# Agreement required between the masked and the shrunk model on the probe batch.
TOLERANCE = 1e-4


@dataclass
class Link:
    """One producer → consumer edge whose channels can be removed."""

    producer: str  # module name
    consumer: str
    batchnorms: list[str] = field(default_factory=list)
    flattened: bool = False  # a flatten between them: the consumer's inputs are channel-major blocks


@dataclass
class ShrinkReport:
    """What :func:`shrink` did, per producer layer (module name → counts), and what it kept."""

    layers: dict[str, dict[str, Any]]
    kept_whole: dict[str, str]  # producer → why its zero channels stay
    params_before: int
    params_after: int
    max_abs_diff: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "kept_whole": self.kept_whole,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "max_abs_diff": self.max_abs_diff,
        }


def _is_flatten(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in FLATTENS:
        return True
    if node.op == "call_module" and isinstance(modules[str(node.target)], nn.Flatten):
        return True
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape") and _flat_args(node)


def _flat_args(node: torch.fx.Node) -> bool:
    """``x.flatten(1)`` or ``x.view(x.size(0), -1)``-like: (batch, everything else)."""
    if node.target == "flatten":
        return bool(len(node.args) >= 2 and node.args[1] == 1)
    return bool(len(node.args) == 3 and node.args[2] == -1)


def _channelwise(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], CHANNELWISE_MODULES)
    if node.op == "call_function":
        return node.target in CHANNELWISE_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh")


def find_links(model: nn.Module) -> tuple[list[Link], dict[str, str]]:
    """Producer → consumer edges along channel-wise operations; and the producers kept whole, with why."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises many types on dynamic control flow
        raise UserError(
            f"structured export traces the model with torch.fx, which failed for {type(model).__name__}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; export without --structured"
        ) from None
    modules = dict(model.named_modules())
    links, kept = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], PRODUCERS):
            continue
        name, cur = str(node.target), node
        bns: list[str] = []
        flattened = False
        why = None
        while True:
            users = list(cur.users)
            if len(users) != 1:
                why = f"its output feeds {len(users)} operations" if users else "its output is the model's"
                break
            nxt = users[0]
            if nxt.op == "call_module" and isinstance(modules[str(nxt.target)], PRODUCERS):
                if flattened and not isinstance(modules[str(nxt.target)], nn.Linear):
                    why = "a flatten leads to a non-Linear layer"
                elif getattr(modules[str(nxt.target)], "groups", 1) != 1 or getattr(modules[name], "groups", 1) != 1:
                    why = "grouped convolution"
                break
            if _is_flatten(nxt, modules):
                flattened = True
            elif _channelwise(nxt, modules):
                if nxt.op == "call_module" and isinstance(modules[str(nxt.target)], (nn.BatchNorm1d, nn.BatchNorm2d)):
                    bns.append(str(nxt.target))
            elif nxt.op == "call_function" and nxt.target in (operator.add, torch.add, torch.cat):
                why = "a residual addition or concatenation follows"
                break
            else:
                why = f"{nxt.op} {getattr(nxt.target, '__name__', nxt.target)} follows"
                break
            cur = nxt
        if why is None:
            links.append(Link(name, str(users[0].target), bns, flattened))
        else:
            kept[name] = why
    return links, kept


def _dead_rows(weight: torch.Tensor) -> torch.Tensor:
    return ~(weight.flatten(1) != 0).any(1)


def _consumer_inputs(model: nn.Module, probe: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda m, args, n=n: seen.__setitem__(n, args[0].detach())) for n in names]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return seen


def _input_columns(channels: torch.Tensor, block: int) -> torch.Tensor:
    """The consumer's input columns of ``channels``: each channel's block of ``block`` features
    (1 without a flatten between producer and consumer)."""
    return (channels[:, None] * block + torch.arange(block)).flatten()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _resized(m: Any, *, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> Any:
    """A copy of a Conv/Linear/BatchNorm keeping output rows ``out_idx`` and input columns ``in_idx``."""
    new = copy.deepcopy(m)
    with torch.no_grad():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert out_idx is not None
            for attr in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, attr)
                if t is not None:
                    setattr(new, attr, type(t)(t[out_idx].clone()) if isinstance(t, nn.Parameter) else t[out_idx].clone())
            new.num_features = int(out_idx.numel())
            return new
        w = m.weight
        if out_idx is not None:
            w = w[out_idx]
            if m.bias is not None:
                new.bias = nn.Parameter(m.bias[out_idx].clone())
        if in_idx is not None:
            w = w[:, in_idx]
        new.weight = nn.Parameter(w.clone())
    if isinstance(m, nn.Linear):
        new.out_features, new.in_features = new.weight.shape[0], new.weight.shape[1]
    else:
        new.out_channels, new.in_channels = new.weight.shape[0], new.weight.shape[1]
    return new


def shrink(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, ShrinkReport]:
    """A smaller copy of ``model`` (masks folded in: removed weights are zeros) with the removed
    channels gone; ``probe``: a batch of inputs of the model's shape (values do not matter)."""
    model = model.eval()
    links, kept = find_links(model)
    modules = dict(model.named_modules())
    inputs = _consumer_inputs(model, probe, [link.consumer for link in links])
    small = copy.deepcopy(model)
    layers: dict[str, dict[str, Any]] = {}
    for link in links:
        layer = _shrink_link(small, link, modules, inputs[link.consumer], kept)
        if layer is not None:
            layers[link.producer] = layer
    diff = _probe_diff(model, small, probe)
    report = ShrinkReport(
        layers=layers,
        kept_whole={k: v for k, v in kept.items() if bool(_dead_rows(modules[k].weight).any())},
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in small.parameters()),
        max_abs_diff=diff,
    )
    return small.eval(), report


def _shrink_link(
    small: nn.Module, link: Link, modules: dict[str, nn.Module], x: torch.Tensor, kept: dict[str, str]
) -> dict[str, Any] | None:
    """Remove from ``small`` the channels of ``link``'s producer that are dead and whose output
    (``x``: the consumer's input on the probe) is zero, or constant before a Linear (folded into
    its bias); the layer's report entry, or None when none can go (the reason in ``kept``)."""
    prod: Any = modules[link.producer]
    cons: Any = modules[link.consumer]
    n_out = prod.weight.shape[0]
    dead = _dead_rows(prod.weight)
    reason = _not_channelwise(link, cons, x, n_out)
    if reason is not None:
        kept[link.producer] = reason
        return None
    block = x.shape[1] // n_out if link.flattened else 1
    per_channel = x.reshape(x.shape[0], n_out, -1)  # (batch, channel, positions or its flattened block)
    lo, hi = per_channel.amin(dim=(0, 2)), per_channel.amax(dim=(0, 2))
    constant = lo == hi
    zero = constant & (hi == 0)
    foldable = constant & isinstance(cons, nn.Linear)
    remove = dead & (zero | foldable)
    stuck = int((dead & ~remove).sum())
    if not bool(remove.any()):
        if stuck:
            kept[link.producer] = f"{stuck} removed channel(s) output a constant before a convolution"
        return None
    keep_idx = (~remove).nonzero().squeeze(1)
    if keep_idx.numel() == 0:
        keep_idx = torch.zeros(1, dtype=torch.long)  # a layer keeps one channel: shapes stay valid
        remove = torch.ones_like(remove)
        remove[0] = False
    _remove_channels(small, link, modules, keep_idx, remove, block, per_channel)
    return {"channels": n_out, "kept": int(keep_idx.numel()), "kept_dead_constant": stuck}


def _not_channelwise(link: Link, cons: Any, x: torch.Tensor, n_out: int) -> str | None:
    """Why the producer's channels are not dimension 1 (or blocks of it) of the consumer's input ``x``; None when they are."""
    if x.dim() < 2 or (isinstance(cons, nn.Linear) and x.dim() != 2) or (not link.flattened and x.shape[1] != n_out):
        return "its channels are not dimension 1 of the consumer's input (e.g. tokens)"
    block = x.shape[1] // n_out if link.flattened else 1
    if link.flattened and x.shape[1] != n_out * block:
        return "the flatten does not map channels to blocks of the consumer's inputs"
    return None


def _remove_channels(
    small: nn.Module,
    link: Link,
    modules: dict[str, nn.Module],
    keep_idx: torch.Tensor,
    remove: torch.Tensor,
    block: int,
    per_channel: torch.Tensor,
) -> None:
    """Resize ``link``'s producer, consumer and batchnorms in ``small`` to the ``keep_idx`` channels;
    a Linear consumer's bias takes the constant the removed channels fed it."""
    cons: Any = modules[link.consumer]
    new_cons = _resized(cons, in_idx=_input_columns(keep_idx, block))
    if isinstance(cons, nn.Linear):  # its input is (batch, features): per_channel[0] is one example's, blocks in order
        gone_cols = _input_columns(remove.nonzero().squeeze(1), block)
        with torch.no_grad():
            shift = cons.weight[:, gone_cols] @ per_channel[0].reshape(-1)[gone_cols]
            if new_cons.bias is None:
                new_cons.bias = nn.Parameter(shift.clone())
            else:
                new_cons.bias += shift
    _set(small, link.consumer, new_cons)
    _set(small, link.producer, _resized(small.get_submodule(link.producer), out_idx=keep_idx))
    for bn in link.batchnorms:
        _set(small, bn, _resized(modules[bn], out_idx=keep_idx))


def _probe_diff(model: nn.Module, small: nn.Module, probe: torch.Tensor) -> float:
    """The largest difference of ``small``'s outputs from ``model``'s on ``probe``; refused beyond the tolerance."""
    with torch.no_grad():
        want = model(probe)
        diff = float((want - small(probe)).abs().max())
    if not diff <= TOLERANCE * max(1.0, float(want.abs().max())):
        raise UserError(f"the shrunk model differs from the masked one by {diff:.3g} on the probe batch: export without --structured")
    return diff


def module_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shape of every weight of a Conv/Linear/BatchNorm (what :func:`rebuild` needs)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (*PRODUCERS, nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight is not None:
            out[name] = list(m.weight.shape)
    return out


def rebuild(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize the layers of a freshly built ``model`` to ``shapes`` (a shrunk export's), in place:
    the weights are then loaded from the export (``strict=True`` checks every shape)."""
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        m = modules.get(name)
        if m is None or list(m.weight.shape) == shape:
            if m is None:
                raise UserError(f"the export resizes layer {name!r}, which the model does not have: export it again")
            continue
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = _resized(m, out_idx=torch.arange(shape[0]))
        else:
            new = _resized(m, out_idx=torch.arange(shape[0]), in_idx=torch.arange(shape[1]))
        _set(model, name, new)
    return model


def inference_macs(model: nn.Module, probe: torch.Tensor) -> dict[str, dict[str, int]]:
    """Per Conv/Linear layer, multiply-accumulates of one example's forward pass: ``dense`` (what
    dense kernels compute) and ``nonzero`` (the products with a non-zero weight, what a sparse
    kernel would need). Dense kernels do the dense count whatever the zeros."""
    out: dict[str, dict[str, int]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, PRODUCERS):

            def hook(mod: Any, args: Any, result: torch.Tensor, name: str = name) -> None:
                w: torch.Tensor = mod.weight
                positions = result[0].numel() // w.shape[0]  # output positions (pixels, tokens) per example
                out[name] = {"dense": positions * w.numel(), "nonzero": positions * int((w != 0).sum())}

            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(probe[:1])
    finally:
        for h in handles:
            h.remove()
    return out
