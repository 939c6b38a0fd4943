"""Activation entropy of ReLU layers (docs/protocol.md, "Activation entropy").

For every ReLU output element ``j`` of a layer (in conv layers each channel × h × w position
is one "neuron") we estimate ``p_j = P_x[a_j(x) > 0]`` over a given input set and take the
binary entropy ``H_j = -p log2 p - (1-p) log2 (1-p)`` with ``p`` clamped to
``[eps, 1 - eps]`` (``eps = 1e-5``).  The layer entropy is the mean of ``H_j`` over the layer's
neurons.  ``H_j = 0`` means the neuron is always on (linear) or always off (dead).

Estimator.  ``p_j`` is the *dataset-level* frequency: ON events are counted over the whole
input set (``(a > 0).sum(0)`` per batch, accumulated in int64 on the device) and divided by
the number of inputs.  This is *not* the mean of per-batch entropies (what the reference code
intended) nor the entropy of the first batch (what it actually computed); the
result does not depend on the batch size.  The cost is one forward pass over the set.

Layers.  ReLUs are found in two ways:

* ``nn.ReLU`` modules, via forward hooks.  The layer is named by the module's qualified name;
  a module instance called several times in one forward pass gives ``name``, ``name#1``, …
  in call order (torchvision's ResNet blocks call one ``relu`` module two or three times:
  ``layer1.0.relu`` and ``layer1.0.relu#1`` are the block's two activations).
* functional ReLUs inside ``forward`` (``F.relu``, ``F.relu(inplace=True)``, ``F.relu_``,
  ``torch.relu``, ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_``), via a
  :class:`torch.overrides.TorchFunctionMode`.  They are named after the innermost module being
  executed plus ``:relu`` (``block1:relu``, ``block1:relu#1``, …; ``:relu`` for the root
  module).  Calls made *inside* a counted activation module (``nn.ReLU``'s forward calls
  ``F.relu``) are skipped, so nothing is counted twice.

For in-place ReLUs the output is read right after the op.  Names are stable across calls on the
same model (same forward → same call order → same keys), and the returned mappings are ordered
by first call.

Other rectifiers.  GELU, SiLU (swish), Mish, Hardswish, ELU, CELU, SELU, LeakyReLU and ReLU6
(:data:`RECTIFIER_MODULES`; functional ``F.gelu``, ``F.silu``, ``F.mish``, ``F.hardswish``,
``F.elu``, ``F.celu``, ``F.selu``, ``F.leaky_relu``, ``F.relu6`` and their in-place forms, named
``…:gelu``, ``…:silu``, …) are counted the same way: a neuron is ON when the activation's output
is > 0, which for all of them is exactly when its pre-activation is > 0 (they keep the sign of
their input), so ON is the same event as for a ReLU at that place — the side of the kink the
neuron is on.  Their outputs below zero are not exactly 0, so "OFF" means the (soft) gate is
closed rather than that the output vanishes.  Gates and saturating activations (Sigmoid,
Hardsigmoid, Tanh, Softplus in squeeze-excitation blocks or attention) and PReLU (whose learned
slope may be negative) are not layers; a model with none of the above has no entropy
(:func:`activation_entropy` raises a UserError).

How layers are combined into one network curve is not known from the paper:
:func:`activation_entropy` reports per-layer values, the neuron-weighted mean (= mean of
``H_j`` over all neurons of all layers) and the plain mean over layers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from dsd2.errors import UserError

__all__ = [
    "DEFAULT_EPS",
    "RECTIFIER_MODULES",
    "EntropyResult",
    "OnCounter",
    "activation_entropy",
    "binary_entropy",
    "entropy_from_counts",
    "entropy_summary",
    "layer_entropies",
    "layer_neuron_counts",
]

DEFAULT_EPS = 1e-5

# Activation modules whose outputs are counted (forward hooks): output > 0 exactly when the input is > 0.
RECTIFIER_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)

# Functions intercepted by the function mode, and the suffix of the layers they make
# (F.relu_ is torch.relu_, F.selu_ torch.selu_, F.celu_ torch.celu_).
_ACTIVATION_FUNCS: dict[Callable, str] = {
    **dict.fromkeys((F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_), "relu"),
    F.relu6: "relu6",
    **dict.fromkeys((F.leaky_relu, F.leaky_relu_), "leaky_relu"),
    **dict.fromkeys((F.elu, F.elu_), "elu"),
    **dict.fromkeys((F.celu, F.celu_), "celu"),
    **dict.fromkeys((F.selu, F.selu_), "selu"),
    F.gelu: "gelu",
    F.silu: "silu",
    F.mish: "mish",
    F.hardswish: "hardswish",
}


def binary_entropy(p: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Binary entropy in bits of Bernoulli probabilities ``p`` (elementwise).

    ``p`` is clamped to ``[eps, 1 - eps]`` first, so ``H(0) = H(1) = H(eps)`` (≈1.8e-4 bits for
    ``eps = 1e-5``) instead of 0 or NaN; ``H(0.5) = 1`` exactly.  Integer inputs are promoted
    to float64.
    """
    if not 0.0 <= eps < 0.5:
        raise UserError(f"eps must be in [0, 0.5), got {eps}")
    if not torch.is_floating_point(p):
        p = p.to(torch.float64)
    p = p.clamp(eps, 1.0 - eps)
    q = 1.0 - p
    # xlogy gives 0·log 0 = 0, which only matters when eps == 0.
    return -(torch.xlogy(p, p) + torch.xlogy(q, q)) / torch.log(torch.tensor(2.0, dtype=p.dtype))


@dataclass
class EntropyResult:
    """Activation entropy of a network over an input set.

    ``per_layer``: layer name → mean over its neurons of ``H_j`` (bits), in call order.
    ``neurons``: layer name → number of neurons (elements of one example's ReLU output).
    ``weighted_mean``: neuron-weighted mean of the layer entropies (= mean of ``H_j`` over all
    neurons).  ``layer_mean``: plain mean over layers.  ``samples``: layer name → number of
    inputs seen (equal for all layers unless a ReLU is called conditionally).
    """

    per_layer: OrderedDict[str, float]
    neurons: OrderedDict[str, int]
    weighted_mean: float
    layer_mean: float
    samples: OrderedDict[str, int] = field(default_factory=OrderedDict)


class _ReluFunctionMode(TorchFunctionMode):
    """Intercepts functional ReLUs and hands their outputs to the counter."""

    def __init__(self, counter: OnCounter) -> None:
        super().__init__()
        self._counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        suffix = _ACTIVATION_FUNCS.get(func)
        if suffix is not None:
            self._counter._on_functional_activation(out, suffix)
        return out


class OnCounter:
    """Context manager counting, per ReLU neuron, the inputs on which it is ON (``a > 0``).

    ::

        with OnCounter(model) as oc:
            for x in batches:
                model(x)
        oc.counts   # OrderedDict name -> int64 tensor (shape of one example's ReLU output)
        oc.samples  # OrderedDict name -> number of inputs seen

    On entry it registers forward hooks on every ``nn.ReLU`` module (and the other
    :data:`RECTIFIER_MODULES`), name-stack hooks on every submodule and (``functional=True``) a
    TorchFunctionMode catching functional ReLUs (and GELUs, SiLUs, ...); on exit
    (also on exception) everything is removed.  It does not touch the model's mode or grad
    state: :func:`activation_entropy` does that.  Counts accumulate over any number of
    forward passes of ``model`` (the root module must be called, not a submodule).
    """

    def __init__(self, model: nn.Module, *, functional: bool = True) -> None:
        self.model = model
        self.functional = functional
        self.counts: OrderedDict[str, Tensor] = OrderedDict()
        self.samples: OrderedDict[str, int] = OrderedDict()
        self._handles: list = []
        self._mode: _ReluFunctionMode | None = None
        self._stack: list[tuple[str, nn.Module]] = []
        self._calls: dict[str, int] = {}
        self._active = False

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> OnCounter:
        if self._active:
            raise RuntimeError("OnCounter is not re-entrant")
        try:
            self._register()
            if self.functional:
                self._mode = _ReluFunctionMode(self)
                self._mode.__enter__()
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._active = False
        try:
            if self._mode is not None:
                self._mode.__exit__(exc_type, exc, tb)
        finally:
            self._mode = None
            self._remove()

    def _register(self) -> None:
        add = self._handles.append
        # Reset per-pass call indices and the module stack at every root forward.
        add(self.model.register_forward_pre_hook(self._root_pre_hook, prepend=True))
        for name, module in self.model.named_modules():
            if self.functional:
                add(module.register_forward_pre_hook(self._make_push(name, module)))
                add(module.register_forward_hook(self._pop, always_call=True))
            if isinstance(module, RECTIFIER_MODULES):
                add(module.register_forward_hook(self._make_relu_hook(name)))

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()

    # -- hooks ---------------------------------------------------------------------------
    def _root_pre_hook(self, module, args) -> None:
        self._calls.clear()
        self._stack.clear()

    def _make_push(self, name: str, module: nn.Module):
        def push(mod, args):
            self._stack.append((name, module))

        return push

    def _pop(self, module, args, output) -> None:
        if self._stack:
            self._stack.pop()

    def _make_relu_hook(self, name: str):
        def hook(module, args, output):
            self._record(name, output)

        return hook

    def _on_functional_activation(self, out, suffix: str) -> None:
        if not self._stack:
            # Not inside a forward of the model (e.g. user code between batches).
            return
        name, module = self._stack[-1]
        if isinstance(module, RECTIFIER_MODULES):
            return  # counted by the module hook
        self._record(f"{name}:{suffix}", out)

    def _record(self, base: str, output) -> None:
        k = self._calls.get(base, 0)
        self._calls[base] = k + 1
        if not isinstance(output, Tensor) or output.dim() == 0:
            return
        name = base if k == 0 else f"{base}#{k}"
        with torch.no_grad():
            on = (output.detach() > 0).sum(0, dtype=torch.int64)
        prev = self.counts.get(name)
        if prev is None:
            self.counts[name] = on
            self.samples[name] = int(output.shape[0])
        else:
            if prev.shape != on.shape:
                raise UserError(
                    f"ReLU layer {name!r}: activation shape changed between batches "
                    f"({tuple(prev.shape)} vs {tuple(on.shape)}); use inputs of one size"
                )
            prev += on
            self.samples[name] += int(output.shape[0])

    # -- results -------------------------------------------------------------------------
    def probabilities(self) -> OrderedDict[str, Tensor]:
        """Layer name → float64 tensor of ``p_j`` (ON frequency per neuron)."""
        return OrderedDict((name, c.to(torch.float64) / self.samples[name]) for name, c in self.counts.items())

    def result(self, eps: float = DEFAULT_EPS) -> EntropyResult:
        return entropy_from_counts(self.counts, self.samples, eps=eps)


def layer_neuron_counts(counts: OnCounter | dict[str, Tensor]) -> OrderedDict[str, int]:
    """Layer name → number of neurons, from an :class:`OnCounter` or its ``counts``."""
    if isinstance(counts, OnCounter):
        counts = counts.counts
    return OrderedDict((name, int(c.numel())) for name, c in counts.items())


def entropy_summary(per_layer: dict[str, float], neurons: dict[str, int]) -> tuple[float, float]:
    """``(weighted_mean, layer_mean)``: neuron-weighted and plain means of layer entropies."""
    if not per_layer:
        return float("nan"), float("nan")
    total = sum(neurons[k] for k in per_layer)
    weighted = sum(per_layer[k] * neurons[k] for k in per_layer) / total
    plain = sum(per_layer.values()) / len(per_layer)
    return float(weighted), float(plain)


def entropy_from_counts(counts: dict[str, Tensor], samples: dict[str, int], *, eps: float = DEFAULT_EPS) -> EntropyResult:
    """Entropy result from ON counts per neuron and the number of inputs per layer."""
    per_layer: OrderedDict[str, float] = OrderedDict()
    for name, c in counts.items():
        n = samples[name]
        if n <= 0:
            raise UserError(f"layer {name!r} saw no inputs")
        p = c.to(torch.float64) / n
        per_layer[name] = float(binary_entropy(p, eps).mean().item())
    neurons = layer_neuron_counts(counts)
    weighted, plain = entropy_summary(per_layer, neurons)
    return EntropyResult(
        per_layer=per_layer,
        neurons=neurons,
        weighted_mean=weighted,
        layer_mean=plain,
        samples=OrderedDict((k, int(samples[k])) for k in counts),
    )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _iter_batches(inputs, batch_size: int) -> Iterable[Tensor]:
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise UserError("activation entropy needs a non-empty batch of inputs (N, ...)")
        for i in range(0, inputs.shape[0], batch_size):
            yield inputs[i : i + batch_size]
        return
    # Any iterable of tensors or of (x, ...) tuples, e.g. a DataLoader.
    for item in inputs:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor):
            raise UserError(f"expected tensors as inputs, got {type(x).__name__}")
        yield x


def activation_entropy(
    model: nn.Module,
    inputs: Tensor | Iterable,
    *,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    eps: float = DEFAULT_EPS,
    functional: bool = True,
) -> EntropyResult:
    """Activation entropy of every ReLU layer of ``model`` over ``inputs``.

    ``inputs``: a tensor ``(N, ...)`` split into batches of ``batch_size``, or an iterable of
    batches (tensors or ``(x, ...)`` tuples).  Each batch is moved to ``device`` (default: the
    model's device), passed through ``transform`` if given (e.g. uint8 → normalised float),
    and fed to the model in eval mode under ``torch.no_grad``.  The train/eval mode of every
    submodule is restored afterwards.  The result does not depend on the batch size.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else _model_device(model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), OnCounter(model, functional=functional) as oc:
            for x in _iter_batches(inputs, batch_size):
                x = x.to(dev, non_blocking=True)
                if transform is not None:
                    x = transform(x)
                model(x)
    finally:
        for m, training in modes:
            m.training = training
    if not oc.counts:
        raise UserError(
            "no ReLU activations were seen: the model has no nn.ReLU / functional relu, nor another rectifier "
            "(GELU, SiLU, Mish, Hardswish, ELU, CELU, SELU, LeakyReLU, ReLU6; other activations are not counted), "
            "or no inputs were given. Set entropy.enabled=false to run such a model without the entropy measure"
        )
    return oc.result(eps)


def layer_entropies(
    model: nn.Module,
    inputs: Tensor | Iterable,
    *,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> OrderedDict[str, float]:
    """Ordered mapping ReLU layer name → layer entropy (see :func:`activation_entropy`)."""
    return activation_entropy(model, inputs, batch_size=batch_size, device=device, transform=transform).per_layer
