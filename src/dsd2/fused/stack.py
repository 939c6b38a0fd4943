"""K copies of one architecture as one module: the runs are folded into the channel dimension.

Every activation of the fused module is ``[B, K*C, ...]``: run k owns channels ``k*C .. (k+1)*C-1``
(a flattened activation ``[B, K*F]`` likewise). Then

- a Conv2d becomes one grouped convolution (``groups = K * groups``): each run's filters see only
  its own input channels;
- a Linear becomes one batched matmul (``[B, K*I] -> [K, B, I] @ [K, I, O] -> [B, K*O]``);
- a BatchNorm over ``K*C`` channels is exactly K per-run BatchNorms (statistics are per channel),
  running statistics included;
- ReLU, pooling, flatten (``start_dim=1``), residual adds and dropout-free containers need nothing.

Any other module, or a forward that mixes channels across runs (a reshape with a fixed channel
count, a concatenation, attention, LayerNorm over channels), cannot be fused: :func:`stack` refuses
unknown modules, and :func:`check` compares the fused module's outputs with the K models' own on a
probe batch, so a forward that mixes runs is caught before training. Chosen over ``torch.func`` (``stack_module_state`` + ``vmap`` over ``functional_call``),
which measured within noise of it on 2 shared CPU cores (``benchmarks/fused.py``, docs/fused.md),
because the fused model is plain modules: BatchNorm statistics, the optimiser, the masks and
epoch checkpoints act on ordinary parameters.

A stacked tensor ``t`` holds run k's copy of a parameter or buffer of shape ``s`` at
``t.reshape(K, *s)[k]`` (:func:`load`, :func:`unload`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NotFusable(Exception):
    """The models cannot be trained as one fused module; the message says why (one line)."""


class StackedLinear(nn.Module):
    """K Linear layers ``I -> O`` on a ``[B, K*I]`` input; weight ``[K, O, I]``, bias ``[K, O]``."""

    def __init__(self, k: int, like: nn.Linear) -> None:
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.empty(k, *like.weight.shape, dtype=like.weight.dtype, device=like.weight.device))
        self.bias = (
            None if like.bias is None else nn.Parameter(torch.empty(k, *like.bias.shape, dtype=like.bias.dtype, device=like.bias.device))
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise NotFusable(f"a Linear layer gets a {x.dim()}-D input; only [batch, features] inputs can be fused")
        b = x.shape[0]
        xs = x.view(b, self.k, -1).transpose(0, 1)  # [K, B, I]
        if torch.is_grad_enabled() and self.weight.requires_grad and _weight_grad_as_autograd(xs, self.weight.shape[1]):
            out = _StackedMatmul.apply(xs, self.weight, self.bias)
        else:
            out = _stacked_matmul(xs, self.weight, self.bias)
        return out.transpose(0, 1).reshape(b, -1)


def _stacked_matmul(xs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``xs @ weightᵀ + bias`` run by run: [K, B, I] × [K, O, I] → [K, B, O]."""
    w = weight.transpose(1, 2)  # [K, I, O]
    return torch.bmm(xs, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), xs, w)


# (K, B, I, O, dtype, threads) -> whether gᵀ @ xs equals autograd's (xsᵀ @ g)ᵀ bit for bit
_SAME_WEIGHT_GRAD: dict[tuple, bool] = {}


def _weight_grad_as_autograd(xs: Tensor, out_features: int) -> bool:
    """Whether :class:`_StackedMatmul`'s weight gradient is bit-identical to autograd's for
    this shape (CPU, fp32, no autocast), found once per shape by computing both on random
    inputs laid out as in training. MKL picks its kernel by shape: for the large layers the two
    forms sum the batch in the same order; for small ones (a 10-class output layer) they do not,
    and those keep autograd's form, so the fused numbers are the same as before either way."""
    if xs.device.type != "cpu" or xs.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    k, b, i = xs.shape
    key = (k, b, i, out_features, torch.get_num_threads())
    if key not in _SAME_WEIGHT_GRAD:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, k, i, generator=gen).transpose(0, 1)  # [K, B, I], strided as in forward
        g = torch.randn(b, k, out_features, generator=gen).transpose(0, 1)  # the output's gradient, likewise
        _SAME_WEIGHT_GRAD[key] = torch.equal(torch.bmm(g.transpose(1, 2), x), torch.bmm(x.transpose(1, 2), g).transpose(1, 2))
    return _SAME_WEIGHT_GRAD[key]


class _StackedMatmul(torch.autograd.Function):
    """:func:`_stacked_matmul` whose backward gives the weight's gradient in the weight's own
    layout ``[K, O, I]`` as ``gᵀ @ xs``. Autograd's own backward computes it as ``xsᵀ @ g`` (a
    ``[K, I, O]`` result, transposed, then copied into the weight's layout by AccumulateGrad):
    on CPU that strided bmm and the transposing copy took a third of LeNet-300-100's fused step
    (docs/fused.md, "Profile"). Used only where the two forms agree bit for bit
    (:func:`_weight_grad_as_autograd`); the input's and the bias's gradients are computed as
    autograd computes them."""

    @staticmethod
    def forward(ctx, xs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(xs, weight)
        ctx.has_bias = bias is not None
        return _stacked_matmul(xs, weight, bias)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        xs, weight = ctx.saved_tensors
        gx = torch.bmm(g, weight) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), xs) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class StackedConv2d(nn.Module):
    """K Conv2d layers as one grouped convolution; weight ``[K*O, C/g, kh, kw]``, bias ``[K*O]``."""

    def __init__(self, k: int, like: nn.Conv2d) -> None:
        super().__init__()
        if like.padding_mode != "zeros":
            raise NotFusable(f"Conv2d with padding_mode={like.padding_mode!r}")
        w = like.weight
        self.weight = nn.Parameter(torch.empty(k * w.shape[0], *w.shape[1:], dtype=w.dtype, device=w.device))
        self.bias = None if like.bias is None else nn.Parameter(torch.empty(k * like.bias.shape[0], dtype=w.dtype, device=w.device))
        self.stride, self.padding, self.dilation = like.stride, like.padding, like.dilation
        self.groups = k * like.groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _stacked_batchnorm(k: int, like: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    cls = type(like)
    return cls(
        k * like.num_features, eps=like.eps, momentum=like.momentum, affine=like.affine, track_running_stats=like.track_running_stats
    ).to(device=like.running_mean.device if like.running_mean is not None else None)


# modules that act per channel (or per element): they work on the folded layout unchanged
PER_CHANNEL = (
    nn.ReLU,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.Sequential,
    nn.ModuleList,
)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _replacement(k: int, module: nn.Module) -> nn.Module | None:
    """The fused stand-in of a leaf module (None: keep it as it is)."""
    if type(module) is nn.Linear:
        return StackedLinear(k, module)
    if type(module) is nn.Conv2d:
        return StackedConv2d(k, module)
    if type(module) in BATCHNORMS:
        return _stacked_batchnorm(k, module)  # type: ignore[arg-type]
    if isinstance(module, nn.Flatten) and module.start_dim != 1:
        raise NotFusable(f"Flatten(start_dim={module.start_dim}) (only start_dim=1 keeps the runs apart)")
    if isinstance(module, nn.Dropout) and module.p == 0:
        return None
    if isinstance(module, PER_CHANNEL):
        return None
    if not list(module.children()) and (
        any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    ):
        raise NotFusable(f"layer {type(module).__name__} has no fused form")
    if isinstance(module, nn.Dropout):
        raise NotFusable("dropout draws from the global RNG in another order when fused")
    if not list(module.children()) and type(module).__module__.startswith("torch.nn"):
        raise NotFusable(f"layer {type(module).__name__} has no fused form")
    return None  # a user container (its forward is checked by the probe)


def check_same_architecture(models: Sequence[nn.Module]) -> None:
    ref = {k: (tuple(v.shape), v.dtype) for k, v in models[0].state_dict().items()}
    for i, m in enumerate(models[1:], 1):
        other = {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}
        if other != ref or type(m) is not type(models[0]):
            raise NotFusable(f"run {i}'s model differs from run 0's (architecture, shapes or dtypes)")


def stack(models: Sequence[nn.Module]) -> nn.Module:
    """A module computing all ``models`` at once in the folded layout, holding their weights
    (:func:`load` them in); the models are not changed."""
    if len(models) < 1:
        raise ValueError("stack needs at least one model")
    check_same_architecture(models)
    k = len(models)
    fused = copy.deepcopy(models[0])
    for name, module in list(fused.named_modules()):
        if name == "":
            if _replacement(k, module) is not None:
                raise NotFusable(f"the model itself is a single {type(module).__name__}")
            continue
        new = _replacement(k, module)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            parent = fused.get_submodule(parent_name) if parent_name else fused
            setattr(parent, child, new)
    if _channels_last(models[0]):  # the models' layout (train.channels_last) for the fused convolutions too
        fused = fused.to(memory_format=torch.channels_last)
    with torch.no_grad():
        load(fused, models)
    fused.train(models[0].training)
    return fused


def _channels_last(model: nn.Module) -> bool:
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())


def _per_run(t: Tensor, k: int, shape: torch.Size) -> Tensor:
    return t.reshape(k, *shape)


@torch.no_grad()
def load(fused: nn.Module, models: Sequence[nn.Module]) -> None:
    """Copy every parameter and buffer of the K ``models`` into ``fused``."""
    states = [m.state_dict() for m in models]
    for name, t in fused.state_dict().items():
        if name.endswith("num_batches_tracked"):
            t.copy_(states[0][name])  # one counter: the runs take the same steps
            continue
        t.copy_(torch.stack([s[name] for s in states]).reshape(t.shape))


@torch.no_grad()
def unload(fused: nn.Module, models: Sequence[nn.Module]) -> None:
    """Copy run k's slice of every parameter and buffer of ``fused`` into ``models[k]``."""
    k = len(models)
    fstate = fused.state_dict()
    for i, m in enumerate(models):
        for name, t in m.state_dict().items():
            src = fstate[name]
            t.copy_(src if name.endswith("num_batches_tracked") else _per_run(src, k, t.shape)[i])


def fold(inputs: Sequence[Tensor]) -> Tensor:
    """K per-run batches ``[B, C, ...]`` as one folded input ``[B, K*C, ...]``."""
    x = torch.stack(list(inputs), 1)
    x = x.flatten(1, 2)
    if (
        x.dim() == 4
        and inputs[0].dim() == 4
        and inputs[0].is_contiguous(memory_format=torch.channels_last)
        and not inputs[0].is_contiguous()
    ):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def unfold(out: Tensor, k: int) -> Tensor:
    """The folded output ``[B, K*C]`` as per-run outputs ``[K, B, C]``."""
    return out.view(out.shape[0], k, -1).transpose(0, 1)


@torch.no_grad()
def check(fused: nn.Module, models: Sequence[nn.Module], example: Sequence[Tensor], *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Refuse (:class:`NotFusable`) a fused module whose eval-mode outputs on ``example`` (one
    input batch per run) differ from the models' own: its forward mixes the runs."""
    modes = [(m, m.training) for m in [fused, *models]]
    try:
        for m, _ in modes:
            m.eval()
        try:
            got = unfold(fused(fold(example)), len(models))
        except NotFusable:
            raise
        except RuntimeError as err:
            raise NotFusable(f"the model's forward does not run folded ({str(err).splitlines()[0][:120]})") from None
        for i, (m, x) in enumerate(zip(models, example)):
            want = m(x)
            if got[i].shape != want.shape or not torch.allclose(got[i], want, rtol=rtol, atol=atol):
                raise NotFusable("the model's forward mixes the runs (its fused outputs differ from the separate ones)")
    finally:
        for m, training in modes:
            m.train(training)
