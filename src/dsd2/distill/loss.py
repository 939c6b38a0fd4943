"""Hinton knowledge-distillation loss as used by DSD² (docs/protocol.md, "Distillation")."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dsd2.errors import UserError

__all__ = ["kd_loss", "kd_loss_to", "mixture_log_probs"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.8,
    temperature: float = 10.0,
) -> Tensor:
    """``alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, targets)``.

    ``alpha`` weights the *distillation* (KL) term, as in the DSD² paper and reference code
    (α = 0.8, T = 10).  Beware: torchdistill's ``alpha`` weights the cross-entropy term
    instead, i.e. its α corresponds to ``1 - alpha`` here.

    The KL divergence is averaged per sample (``batchmean``: summed over classes, divided by
    the batch size); CE is the mean cross-entropy with the (possibly noisy) hard ``targets``.
    The teacher logits are detached, so gradients flow to the student only.  Everything is
    computed in float32 (also under autocast; float64 inputs stay float64).

    Raises :class:`~dsd2.errors.UserError` for ``alpha`` outside [0, 1], ``temperature <= 0``
    or mismatched logit shapes.
    """
    alpha, temperature = _checked(alpha, temperature)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise UserError(
            f"student and teacher logits must both be (batch, classes), got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    with _float32(student_logits) as dtype:
        log_p_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
        return _kd(student_logits.to(dtype), log_p_t, targets, alpha, temperature)


def kd_loss_to(
    student_logits: Tensor,
    teacher_log_probs: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.8,
    temperature: float = 10.0,
) -> Tensor:
    """:func:`kd_loss` against a target given as log-probabilities at temperature ``temperature``
    (e.g. :func:`mixture_log_probs` of several teachers): the same KL and CE terms and weights."""
    alpha, temperature = _checked(alpha, temperature)
    if student_logits.shape != teacher_log_probs.shape or student_logits.dim() != 2:
        raise UserError(
            f"student logits and teacher log-probabilities must both be (batch, classes), got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_log_probs.shape)}"
        )
    with _float32(student_logits) as dtype:
        return _kd(student_logits.to(dtype), teacher_log_probs.detach().to(dtype), targets, alpha, temperature)


def mixture_log_probs(teacher_logits: list[Tensor], weights: list[float], temperature: float) -> Tensor:
    """``log Σ_k w_k · softmax(z_k / T)``: the log of the weighted average of the teachers'
    softened probabilities (docs/distillation.md, "Several teachers"). ``weights`` are normalised
    to sum 1. Computed with logsumexp, in float32 at least."""
    if len(teacher_logits) != len(weights) or not teacher_logits:
        raise UserError(f"{len(teacher_logits)} teacher logit tensors for {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise UserError(f"teacher weights must be > 0, got {weights}")
    _checked(0.0, temperature)
    total = float(sum(weights))
    dtype = torch.promote_types(teacher_logits[0].dtype, torch.float32)
    logs = [math.log(w / total) + F.log_softmax(z.detach().to(dtype) / temperature, dim=1) for w, z in zip(weights, teacher_logits)]
    return torch.logsumexp(torch.stack(logs), dim=0)


def _checked(alpha: float, temperature: float) -> tuple[float, float]:
    alpha = float(alpha)
    temperature = float(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"KD alpha must be in [0, 1] (weight of the distillation term), got {alpha}")
    if not temperature > 0.0:
        raise UserError(f"KD temperature must be > 0, got {temperature}")
    return alpha, temperature


@contextlib.contextmanager
def _float32(student_logits: Tensor) -> Iterator[torch.dtype]:
    """Autocast off (where it exists); yields the computation dtype (float32, or float64 inputs' float64)."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    device_type = student_logits.device.type
    guard = (
        torch.autocast(device_type=device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else contextlib.nullcontext()
    )
    with guard:
        yield dtype


def _kd(s: Tensor, log_p_t: Tensor, targets: Tensor, alpha: float, temperature: float) -> Tensor:
    log_p_s = F.log_softmax(s / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(s, targets)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce
