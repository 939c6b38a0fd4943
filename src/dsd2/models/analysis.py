"""Model inspection: prunable weights, parameter counts, MACs per example."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from dsd2.errors import UserError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prunable_weights(
    model: nn.Module,
    *,
    include_classifier: bool = True,
    exclude_first_conv: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Conv1d/Conv2d/Linear module, keyed by state-dict name.

    Ordered by module order (``model.named_modules()``), e.g. ``"features.0.weight"``.
    This is the reference's pruning set: classifier and 1x1 downsample convs included,
    biases and BatchNorm never (nor weights held outside such modules, e.g. the packed
    ``in_proj_weight`` of ``nn.MultiheadAttention``). ``include_classifier=False`` drops the
    classifier (:func:`classifier_layers`); ``exclude_first_conv=True`` drops the first
    convolution (:func:`first_conv`; nothing when the model has none). Then ``include`` (fnmatch
    patterns; empty: all) keeps the weights some pattern matches and ``exclude`` drops those some
    pattern matches (:func:`select_layers`). Subclasses count
    (timm's and torchvision's layers are Conv2d/Linear subclasses).
    The modules must hold a plain ``weight`` Parameter (no ``torch.nn.utils.prune`` or
    parametrization wrappers: the project keeps masks outside the model).
    """
    found: list[tuple[str, nn.Parameter]] = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = module._parameters.get("weight")
        if not isinstance(weight, nn.Parameter):
            raise TypeError(
                f"module {name!r} ({type(module).__name__}) has no plain 'weight' Parameter; "
                "remove torch.nn.utils.prune / parametrizations before calling prunable_weights"
            )
        found.append((_weight_key(name), weight))
    drop: set[str] = set()
    if not include_classifier:
        drop.update(_weight_key(n) for n in classifier_layers(model))
    if exclude_first_conv:
        first = first_conv(model)
        if first is not None:
            drop.add(_weight_key(first))
    kept = {k: w for k, w in found if k not in drop}
    if not include and not exclude:
        return kept
    names = select_layers([k for k, _ in found], list(kept), include, exclude)
    return {k: kept[k] for k in names}


def select_layers(every: Sequence[str], candidates: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The ``candidates`` (weight keys) kept by the ``include`` and ``exclude`` fnmatch patterns.

    A pattern matches a key (``features.0.weight``) or its module name (``features.0``), case
    sensitive: ``*.downsample.*``, ``layer4.*``, ``fc``. A pattern that matches none of ``every``
    prunable weight is a typo: UserError naming the first few layers; so is a selection that
    leaves nothing to prune.
    """

    def hit(pattern: str, key: str) -> bool:
        return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key.removesuffix(".weight"), pattern)

    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(hit(pattern, k) for k in every):
                shown = ", ".join(every[:8]) + (f", … ({len(every)} in all)" if len(every) > 8 else "")
                raise UserError(f"prune.{kind} pattern {pattern!r} matches no prunable layer; the layers are: {shown}")
    kept = [k for k in candidates if (not include or any(hit(p, k) for p in include)) and not any(hit(p, k) for p in exclude)]
    if not kept:
        raise UserError(f"prune.include={list(include)} and prune.exclude={list(exclude)} leave no layer to prune")
    return kept


def _weight_key(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def classifier_layers(model: nn.Module) -> list[str]:
    """Qualified names of the classifier's Conv/Linear layer(s).

    A model with ``get_classifier()`` (timm) names them (two for a distilled ViT; the last layer
    of a head that is not one itself); otherwise the
    last ``nn.Linear`` in module order is the classifier (torchvision's ``fc``, ``classifier.6``,
    ``heads.head``; the built-in models' last layer), and a model without any Linear has its last
    convolution as classifier (torchvision's SqueezeNet: ``classifier.1``).
    """
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            heads = get_classifier()
        except Exception:
            heads = None
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        ids: set[int] = set()
        for head in heads:  # a head that is not a layer itself (LeViT's NormLinear): its last layer
            if isinstance(head, nn.Module):
                layers = [m for m in head.modules() if isinstance(m, PRUNABLE_TYPES)]
                if layers:
                    ids.add(id(layers[-1]))
        named = [n for n, m in modules if id(m) in ids]
        if named:
            return named
    linears = [n for n, m in modules if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1:]
    return [n for n, _ in modules][-1:]


def first_conv(model: nn.Module) -> str | None:
    """Qualified name of the first Conv1d/Conv2d in module order (the stem of torchvision's and
    timm's classifiers: registration order is call order for all of torchvision's), or None."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return name
    return None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (each shared Parameter counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def macs_per_example(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Dense multiply-accumulates for one example of shape ``input_shape`` (no batch dim).

    Measured with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) in eval mode on
    a batch of one; counts convolutions and matrix products, attention included (BatchNorm, ReLU,
    pooling and additions are not counted, as usual). Sparsity is not credited. The model's training
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
        counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)
        with torch.no_grad(), attention_counted(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


# ----------------------------------------------------------------------------- counting attention


@contextlib.contextmanager
def attention_counted() -> Iterator[None]:
    """Inside: ``nn.MultiheadAttention`` takes its decomposed path in evaluation mode too.

    Its fused inference kernel (``aten._native_multi_head_attention``, used in eval mode without
    grad, e.g. by torchvision's ViT) has no FlopCounterMode formula, so its projections and
    attention products would count 0 FLOPs; the decomposed path computes the same function with
    counted matmuls. Used around every eval-mode count (teacher forward, MACs per example).
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """CPU's fused attention kernel: its two matrix products (FlopCounterMode has formulas for the
    CUDA kernels and counts the decomposed path's matmuls, but not this kernel)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(
    grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# custom_mapping of FlopCounterMode: attention costs the same on the CPU as on CUDA (dsd2.flops adds
# it to its counter; macs_per_example uses it).
ATTENTION_FLOP_FORMULAS: dict[Any, Any] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
}
