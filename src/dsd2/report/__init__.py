"""Figures and a self-contained HTML report of one or more run directories.

- :mod:`dsd2.report.data`: read run directories (:func:`load_run`), roles (vanilla, teacher,
  student) and :func:`group_runs` (runs differing only by seed).
- :mod:`dsd2.report.figures`: accuracy, memorisation, entropy and compute figures (matplotlib).
- :mod:`dsd2.report.html`: :func:`write_report` writes ``index.html`` with embedded figures.
"""

from dsd2.report.data import RunData, RunGroup, group_runs, load_run, load_runs
from dsd2.report.figures import (
    accuracy_figure,
    compute_figure,
    entropy_figure,
    format_sparsity,
    memorisation_figure,
    phase_spans,
    save_figure,
    sparsity_to_x,
)
from dsd2.report.html import esc, write_report

__all__ = [
    "RunData",
    "RunGroup",
    "accuracy_figure",
    "compute_figure",
    "entropy_figure",
    "esc",
    "format_sparsity",
    "group_runs",
    "load_run",
    "load_runs",
    "memorisation_figure",
    "phase_spans",
    "save_figure",
    "sparsity_to_x",
    "write_report",
]
