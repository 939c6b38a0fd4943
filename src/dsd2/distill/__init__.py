"""Knowledge distillation (DSD²): the KD loss, teacher selection/loading and the KD objective."""

from dsd2.distill.loss import kd_loss, kd_loss_to, mixture_log_probs
from dsd2.distill.teacher import KDObjective, TeacherEnsemble, load_teacher, load_teachers, select_teacher_round

__all__ = [
    "KDObjective",
    "TeacherEnsemble",
    "kd_loss",
    "kd_loss_to",
    "load_teacher",
    "load_teachers",
    "mixture_log_probs",
    "select_teacher_round",
]
