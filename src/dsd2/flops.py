"""Compute accounting of training runs (docs/protocol.md, "Compute"; the paper's Figure 1 right).

Counting convention.  FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`:
one multiply-add = **2 FLOPs** (a Linear forward on a batch of B is ``2·B·in·out``; a conv is
``2·B·Cout·Hout·Wout·Cin·k·k``; biases, BatchNorm, ReLU, pooling and the optimiser step count
0).  The backward of a Conv/Linear costs one forward-equivalent per gradient it computes:
grad-weight always (when the weight requires grad) and grad-input unless the input needs no
gradient (the first layer), so a training step is ≈ 3× the forward, slightly less.

The paper counts MACs as the FLOP unit and a training step as 3 × forward MACs
(1 unit for VGG-like(5,5) on CIFAR-10 ≈ 3 × 67.2 M × 50,000 × 160 ≈ 1.6 PFLOPs):
:func:`paper_run_flops` reproduces that number from a :class:`StepFlops`.  The paper's
*units* (cost / one dense training run) are ratios, so they do not depend on the convention:
use :func:`paper_units`.

Per-layer attribution (for the sparse-aware cost).  Each Conv/Linear layer gets forward pre-
and post-hooks that read the live counter total, so its forward FLOPs are exact (summed over
calls when a layer is reused).  Its backward FLOPs are ``forward × (#gradients computed)``:
for the matmuls of a Linear backward FlopCounterMode's formulas give exactly one forward's
FLOPs per gradient, and so do they for ``aten.convolution_backward`` of ungrouped convs (checked
in the tests).  For grouped convs FlopCounterMode's grad-weight formula ignores ``groups`` and
overcounts ``groups``-fold: :func:`flop_counter` registers a corrected formula (one forward per
gradient) so the per-layer split stays exact.  We do not use
``get_flop_counts()``'s per-module breakdown because its backward attribution is wrong for
modules called more than once.  Everything not in a Conv/Linear ("non-prunable", e.g. a
matmul in a custom forward, attention products) is the counter total minus the layers' sum and is
never scaled.  Attention: :func:`flop_counter` also counts CPU's fused attention kernel (as
FlopCounterMode counts the CUDA ones), and eval-mode counts run under
:func:`dsd2.models.analysis.attention_counted` so that ``nn.MultiheadAttention`` does not take
its uncounted fused inference kernel.

Sparse-aware cost: ``sparse = Σ_l density_l · flops_l + non-prunable`` for forward and
backward, with ``density_l`` the fraction of nonzero entries of the layer's weight mask (an
ideal sparse kernel that skips masked weights in the forward, grad-input and grad-weight).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from dsd2.errors import UserError
from dsd2.models.analysis import ATTENTION_FLOP_FORMULAS, attention_counted

__all__ = [
    "LayerFlops",
    "StepFlops",
    "flop_counter",
    "paper_run_flops",
    "paper_units",
    "step_flops",
    "to_pflops",
    "training_flops",
]

_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """One forward-equivalent per gradient computed (grad-input, grad-weight).

    Replaces FlopCounterMode's formula, whose grad-weight count ignores ``groups`` (it is
    ``groups`` times too large for grouped convs); for ungrouped convs both agree.
    """
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=bool(transposed))
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """The FlopCounterMode used here (no display; grouped-conv backward corrected; CPU's fused
    attention counted as the CUDA kernels are, so transformers cost the same on every device)."""
    return FlopCounterMode(
        display=False,
        custom_mapping={
            torch.ops.aten.convolution_backward: _conv_backward_flop,
            **ATTENTION_FLOP_FORMULAS,
        },
    )


@dataclass(frozen=True)
class LayerFlops:
    """FLOPs of one Conv/Linear layer on the batch (fwd, bwd) and its weight density."""

    fwd: int
    bwd: int
    density: float


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step on a batch of ``batch_size`` examples.

    Per batch: ``dense_fwd``, ``dense_bwd`` (student forward and backward, exact counter
    totals), ``teacher_fwd`` (teacher forward only, 0 without a teacher), and the sparse-aware
    ``sparse_fwd``, ``sparse_bwd``, ``teacher_fwd_sparse``.  ``layers``: per Conv/Linear of the
    student (qualified name → :class:`LayerFlops`); ``teacher_layers`` likewise.
    The ``*_per_example`` properties divide by ``batch_size``.
    """

    batch_size: int
    dense_fwd: int
    dense_bwd: int
    teacher_fwd: int
    sparse_fwd: float
    sparse_bwd: float
    teacher_fwd_sparse: float
    layers: dict[str, LayerFlops] = field(default_factory=dict)
    teacher_layers: dict[str, LayerFlops] = field(default_factory=dict)

    @property
    def dense_step(self) -> int:
        """Dense FLOPs of one step (student fwd + bwd + teacher fwd) on the batch."""
        return self.dense_fwd + self.dense_bwd + self.teacher_fwd

    @property
    def sparse_step(self) -> float:
        return self.sparse_fwd + self.sparse_bwd + self.teacher_fwd_sparse

    @property
    def dense_per_example(self) -> float:
        return self.dense_step / self.batch_size

    @property
    def sparse_per_example(self) -> float:
        return self.sparse_step / self.batch_size

    @property
    def fwd_per_example(self) -> float:
        """Dense student forward FLOPs per example (2 × MACs)."""
        return self.dense_fwd / self.batch_size

    @property
    def teacher_fwd_per_example(self) -> float:
        return self.teacher_fwd / self.batch_size


def _densities(model: nn.Module, masks: dict[str, Tensor] | None) -> dict[str, float]:
    """Qualified layer name → density, for each Conv/Linear of ``model``.

    ``masks`` keys may be a module name (``"features.0"``) or its weight's parameter name
    (``"features.0.weight"``).  With ``masks=None``, ``weight_mask`` buffers
    (``torch.nn.utils.prune``) are used where present; other layers count as dense.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    out = {name: 1.0 for name in layers}
    if masks is None:
        for name, m in layers.items():
            mask = getattr(m, "weight_mask", None)
            if isinstance(mask, Tensor) and mask.numel():
                out[name] = float(mask.count_nonzero().item()) / mask.numel()
        return out
    for key, mask in masks.items():
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        if name not in layers:
            raise UserError(f"mask {key!r} matches no Conv/Linear layer of the model (layers: {', '.join(layers) or 'none'})")
        mask = torch.as_tensor(mask)
        if mask.numel() != layers[name].weight.numel():
            raise UserError(f"mask {key!r} has {mask.numel()} entries, the weight has {layers[name].weight.numel()}")
        out[name] = float(mask.count_nonzero().item()) / mask.numel()
    return out


class _LayerTracker:
    """Hooks on every Conv/Linear recording its exact forward FLOPs and gradient count."""

    def __init__(self, model: nn.Module, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.fwd: dict[str, int] = {}
        self.bwd: dict[str, int] = {}
        self._start: dict[str, list[int]] = {}
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, _PRUNABLE):
                self.fwd[name] = 0
                self.bwd[name] = 0
                self._start[name] = []
                self._handles.append(m.register_forward_pre_hook(self._pre(name)))
                self._handles.append(m.register_forward_hook(self._post(name), always_call=True))

    def _pre(self, name):
        def hook(module, args):
            self._start[name].append(self.counter.get_total_flops())

        return hook

    def _post(self, name):
        def hook(module, args, output):
            if not self._start[name]:
                return
            f = self.counter.get_total_flops() - self._start[name].pop()
            self.fwd[name] += f
            if torch.is_grad_enabled():
                x = args[0] if args else None
                grads = int(isinstance(x, Tensor) and x.requires_grad)
                grads += int(module.weight.requires_grad)
                self.bwd[name] += f * grads

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _first_tensor(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, Tensor):
                return o
    raise UserError(f"model output must be a tensor (or contain one), got {type(out).__name__}")


@contextlib.contextmanager
def _preserved(model: nn.Module):
    """Restore modes, gradients, buffers (e.g. BatchNorm statistics) and the CPU RNG state."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        for p in params:
            p.grad = None
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _split(total: int, per_layer: dict[str, int], dens: dict[str, float]) -> float:
    layers_sum = sum(per_layer.values())
    rest = max(0, total - layers_sum)
    return rest + sum(dens[name] * f for name, f in per_layer.items())


def _teacher_flops(teacher: nn.Module, batch: Tensor, masks) -> tuple[int, float, dict]:
    dens = _densities(teacher, masks)
    with _preserved(teacher):
        teacher.eval()
        with torch.no_grad(), attention_counted(), flop_counter() as fc:
            tracker = _LayerTracker(teacher, fc)
            try:
                teacher(batch)
            finally:
                tracker.remove()
    total = fc.get_total_flops()
    layers = {n: LayerFlops(tracker.fwd[n], 0, dens[n]) for n in tracker.fwd}
    return total, _split(total, tracker.fwd, dens), layers


def step_flops(
    model: nn.Module,
    example_batch: Tensor,
    *,
    teacher: nn.Module | None = None,
    masks: dict[str, Tensor] | None = None,
    teacher_masks: dict[str, Tensor] | None = None,
) -> StepFlops:
    """Count the FLOPs of one training step of ``model`` on ``example_batch``.

    The model runs in train mode, forward and a real backward of ``output.sum()`` inside a
    :class:`FlopCounterMode`; the teacher (optional) runs forward only, in eval mode, without
    grad, on the same batch.  ``masks`` / ``teacher_masks``: weight masks per layer (see
    :func:`_densities`) for the sparse-aware counts.  The models' state is left unchanged:
    modes, ``.grad`` of every parameter, buffers (BatchNorm running stats) and the RNG state
    are restored.
    """
    if not isinstance(example_batch, Tensor) or example_batch.dim() == 0:
        raise UserError("example_batch must be a tensor of shape (B, ...)")
    bsz = int(example_batch.shape[0])
    if bsz < 1:
        raise UserError("example_batch is empty")
    dens = _densities(model, masks)
    with _preserved(model):
        model.train()
        with flop_counter() as fc:
            tracker = _LayerTracker(model, fc)
            try:
                out = _first_tensor(model(example_batch))
                fwd_total = fc.get_total_flops()
                if out.requires_grad:
                    out.float().sum().backward()
            finally:
                tracker.remove()
        bwd_total = fc.get_total_flops() - fwd_total
    if not out.requires_grad:
        tracker.bwd = {n: 0 for n in tracker.bwd}
    layers = {n: LayerFlops(tracker.fwd[n], tracker.bwd[n], dens[n]) for n in tracker.fwd}
    sparse_fwd = _split(fwd_total, tracker.fwd, dens)
    sparse_bwd = _split(bwd_total, tracker.bwd, dens)

    t_total, t_sparse, t_layers = 0, 0.0, dict[str, LayerFlops]()
    if teacher is not None:
        t_total, t_sparse, t_layers = _teacher_flops(teacher, example_batch, teacher_masks)
    return StepFlops(
        batch_size=bsz,
        dense_fwd=int(fwd_total),
        dense_bwd=int(bwd_total),
        teacher_fwd=int(t_total),
        sparse_fwd=float(sparse_fwd),
        sparse_bwd=float(sparse_bwd),
        teacher_fwd_sparse=float(t_sparse),
        layers=layers,
        teacher_layers=t_layers,
    )


def training_flops(step: StepFlops, *, n_examples: int, epochs: int, teacher_passes: int | None = None) -> tuple[float, float]:
    """``(dense_total, sparse_total)`` FLOPs of training on ``n_examples`` for ``epochs``.

    Per-example step FLOPs (student forward + backward + teacher forward) × examples × epochs.
    ``teacher_passes``: how many times the teacher saw the examples when that is not once per
    epoch (its logits cached from one pass over unaugmented data: 1 for the round that computed
    them, 0 for the others).
    """
    if n_examples < 0 or epochs < 0:
        raise UserError("n_examples and epochs must be >= 0")
    k = n_examples * epochs
    dense, sparse = step.dense_per_example * k, step.sparse_per_example * k
    if teacher_passes is not None:
        t_dense = step.teacher_fwd_per_example
        t_sparse = step.teacher_fwd_sparse / step.batch_size
        dense += t_dense * n_examples * (teacher_passes - epochs)
        sparse += t_sparse * n_examples * (teacher_passes - epochs)
    return dense, sparse


def paper_run_flops(step: StepFlops, *, n_examples: int, epochs: int) -> float:
    """One run in the paper's convention: 3 × forward MACs × examples × epochs.

    Forward MACs = ``step.fwd_per_example / 2``.  For VGG-like(5,5) on CIFAR-10 (67.2 M MACs,
    50,000 examples, 160 epochs) this is ≈ 1.6e15.
    """
    return 3.0 * (step.fwd_per_example / 2.0) * n_examples * epochs


def paper_training_flops(step: StepFlops, *, n_examples: int, epochs: int, teacher_passes: int | None = None) -> float:
    """Training FLOPs in the paper's convention: 3 × forward MACs × examples × epochs for the
    student, plus, for KD, the teacher's forward MACs × examples × its passes (``epochs``, or
    ``teacher_passes`` when its logits are cached). Sparsity is not credited."""
    passes = epochs if teacher_passes is None else teacher_passes
    return paper_run_flops(step, n_examples=n_examples, epochs=epochs) + (step.teacher_fwd_per_example / 2.0) * n_examples * passes


def to_pflops(x: float) -> float:
    """FLOPs → PFLOPs (1e15)."""
    return float(x) / 1e15


def paper_units(flops: float, one_run_flops: float) -> float:
    """Cost in units of one full dense training run (Figure 1 right)."""
    if not one_run_flops > 0:
        raise UserError(f"one_run_flops must be > 0, got {one_run_flops}")
    return float(flops) / float(one_run_flops)
