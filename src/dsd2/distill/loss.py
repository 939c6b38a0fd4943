"""Hinton knowledge-distillation loss as used by DSD² (docs/protocol.md, "Distillation")."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from dsd2.errors import UserError

__all__ = ["kd_loss"]


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
    alpha = float(alpha)
    temperature = float(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"KD alpha must be in [0, 1] (weight of the distillation term), got {alpha}")
    if not temperature > 0.0:
        raise UserError(f"KD temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise UserError(
            f"student and teacher logits must both be (batch, classes), got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    device_type = student_logits.device.type
    guard = (
        torch.autocast(device_type=device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else contextlib.nullcontext()
    )
    with guard:
        s = student_logits.to(dtype)
        t = teacher_logits.detach().to(dtype)
        log_p_s = F.log_softmax(s / temperature, dim=1)
        log_p_t = F.log_softmax(t / temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        ce = F.cross_entropy(s, targets)
        return alpha * temperature**2 * kl + (1.0 - alpha) * ce
