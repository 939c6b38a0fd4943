"""Knowledge distillation (DSD²): the KD loss; teacher loading lives in a sibling module."""

from dsd2.distill.loss import kd_loss

__all__ = ["kd_loss"]
