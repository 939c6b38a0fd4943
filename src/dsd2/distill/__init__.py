"""Knowledge distillation (DSD²): the KD loss, teacher selection/loading and the KD objective."""

from dsd2.distill.loss import kd_loss
from dsd2.distill.teacher import KDObjective, load_teacher, select_teacher_round

__all__ = ["KDObjective", "kd_loss", "load_teacher", "select_teacher_round"]
