"""Feature distillation (FitNets hints, Romero et al. 2015): the student's hint layer, mapped by a
learned adapter, regresses the teacher's hint layer (docs/distillation.md, "Feature distillation").

The adapter (1×1 conv for (B, C, H, W) features, Linear on the last dimension otherwise) is made
from the two layers' output shapes on an example batch, initialised from a seed the caller gives
per round, trained with the student (:meth:`HintObjective.parameters` joins the optimiser) and
never pruned. Forward hooks capture the layers' outputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsd2.distill.loss import kd_loss
from dsd2.errors import UserError


def find_layer(model: nn.Module, name: str, role: str) -> nn.Module:
    """The module ``name`` of ``model``, or a UserError listing the available names."""
    modules = dict(model.named_modules())
    modules.pop("", None)  # the model itself: its output is the logits, not a hint
    if name not in modules:
        raise UserError(f"distill.feature.{role}_layer={name!r} is not a module of the {role}; its modules: {', '.join(modules)}")
    return modules[name]


def _tensor(out: Any, name: str) -> Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise UserError(f"layer {name!r} does not output a tensor ({type(out).__name__}): choose another hint layer")
    return out


class _Capture:
    """Keeps the latest output of one module (a forward hook)."""

    def __init__(self, module: nn.Module, name: str):
        self.name = name
        self.out: Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        self.out = _tensor(out, self.name)

    def take(self) -> Tensor:
        out, self.out = self.out, None
        if out is None:
            raise UserError(f"layer {self.name!r} did not run in the forward pass: choose a hint layer the model calls")
        return out


def make_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], generator: torch.Generator) -> nn.Module:
    """1×1 conv (4-D features) or Linear on the last dimension (2-D, 3-D) from the student's
    feature shape to the teacher's; initialised as torch's defaults, from ``generator``."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t) or len(s) not in (2, 3, 4) or (len(s) == 4 and s[2:] != t[2:]) or (len(s) == 3 and s[1] != t[1]):
        raise UserError(
            f"hint features of shapes {s} (student) and {t} (teacher) cannot be matched by a 1x1 conv or a Linear: "
            "choose layers with the same spatial size (4-D) or token count (3-D)"
        )
    layer: nn.Conv2d | nn.Linear = nn.Conv2d(s[1], t[1], kernel_size=1) if len(s) == 4 else nn.Linear(s[-1], t[-1])
    with torch.no_grad():  # torch's default init, drawn from the round's generator rather than the global one
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(layer.weight[0].numel())
        assert layer.bias is not None
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class HintObjective:
    """``kd_loss(student, teacher) + beta · MSE(adapter(f_s), f_t)``: KD on the logits plus the hint
    regression of FitNets. The teacher runs on every batch (its hint features are not cached)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        student_layer: str,
        teacher_layer: str,
        beta: float,
        alpha: float,
        temperature: float,
        example: Tensor,
        seed: int,
        amp: bool = False,
    ):
        self.teacher = teacher.eval()
        self.alpha, self.temperature, self.beta, self.amp = alpha, temperature, float(beta), amp
        self.cached_logits = None  # the teacher runs every step (the compute accounting reads this)
        self._s = _Capture(find_layer(student, student_layer, "student"), student_layer)
        self._t = _Capture(find_layer(teacher, teacher_layer, "teacher"), teacher_layer)
        try:
            self.shapes = self._probe(student, example)
        except BaseException:
            self.close()
            raise
        self.device = example.device
        self.adapter = make_adapter(*self.shapes, torch.Generator().manual_seed(seed)).to(self.device)

    def reset(self, seed: int) -> None:
        """A fresh adapter from ``seed``: each round starts one from its own seed (so a resumed round
        gets the same), as its optimiser starts anew."""
        self.adapter = make_adapter(*self.shapes, torch.Generator().manual_seed(seed)).to(self.device)

    def _probe(self, student: nn.Module, example: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The hint layers' output shapes on ``example`` (eval mode, no grad: no statistic or RNG is touched)."""
        was = student.training
        try:
            student.eval()
            with torch.no_grad():
                student(example)
                self.teacher(example)
        finally:
            student.train(was)
        return tuple(self._s.take().shape), tuple(self._t.take().shape)

    def parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters: trained with the student's."""
        return list(self.adapter.parameters())

    def adapter_state(self) -> dict[str, Tensor]:
        return {k: v.detach().to("cpu").clone() for k, v in self.adapter.state_dict().items()}

    def load_adapter_state(self, state: dict[str, Tensor]) -> None:
        self.adapter.load_state_dict(state, strict=True)

    def close(self) -> None:
        """Remove the hooks (the student outlives this objective)."""
        self._s.handle.remove()
        self._t.handle.remove()

    def __call__(self, logits: Tensor, targets: Tensor, inputs: Tensor, index: Tensor | None = None) -> Tensor:
        from dsd2.train import autocast_for

        f_s = self._s.take()
        with torch.no_grad(), autocast_for(inputs.device, self.amp):
            teacher_logits = self.teacher(inputs)
        f_t = self._t.take().float()
        kd = kd_loss(logits, teacher_logits, targets, alpha=self.alpha, temperature=self.temperature)
        hint = F.mse_loss(self.adapter(f_s.float()), f_t)
        return kd + self.beta * hint
