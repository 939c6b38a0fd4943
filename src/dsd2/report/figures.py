"""Figures of a study (matplotlib, Agg; no pyplot state): each function returns a Figure.

Sparsity axis
-------------
IMP removes a fixed fraction of the remaining weights per round, so the interesting range
(90 % … 99.9 %) is squeezed at the right of a linear axis. Every sparsity figure plots
``x = -log10(1 - sparsity)`` (a log axis of the *remaining* weights, decreasing to the right)
and labels the ticks with the sparsity in % at the IMP rounds (thinned so labels do not
collide): 0, 20, 48.8, 73.8, 89.3, 96.5, 98.8, 99.6 … for a 20 % rate.

Seeds
-----
Runs that differ only by seed (:func:`dsd2.report.data.group_runs`) are drawn as the mean over
seeds with a ± std band (population std, ``ddof=0``), on the rounds all of them finished.
A single run is drawn as it is. Accuracies are in %.

Artists carry a ``gid`` so tests and tools can find them: ``"<metric>:<group index>"`` for
curves, ``"band:<metric>:<group index>"`` for std bands, ``"phase:<name>"`` for phase spans,
``"strategy:<index>"`` for the early-stop points of the compute figure.

The figures live in :mod:`~dsd2.report.curves` (vs sparsity) and :mod:`~dsd2.report.compute`,
on the shared pieces of :mod:`~dsd2.report.plotting`; :mod:`~dsd2.report.saving` writes them.
"""

import matplotlib

matplotlib.use("Agg", force=False)  # before any figure module imports matplotlib's parts

from dsd2.report.compute import compute_figure, stacked_marker_sizes
from dsd2.report.curves import accuracy_figure, entropy_figure, layer_labels, memorisation_figure
from dsd2.report.plotting import (
    PHASE_COLORS,
    PHASE_ORDER,
    ROLE_ORDER,
    Series,
    format_sparsity,
    group_series,
    mpl_text,
    new_figure,
    phase_spans,
    series_color,
    setup_sparsity_axis,
    shade_phases,
    sparsity_to_x,
)
from dsd2.report.saving import figure_png, save_figure, write_public

__all__ = [
    "PHASE_COLORS",
    "PHASE_ORDER",
    "ROLE_ORDER",
    "Series",
    "accuracy_figure",
    "compute_figure",
    "entropy_figure",
    "figure_png",
    "format_sparsity",
    "group_series",
    "layer_labels",
    "memorisation_figure",
    "mpl_text",
    "new_figure",
    "phase_spans",
    "save_figure",
    "series_color",
    "setup_sparsity_axis",
    "shade_phases",
    "sparsity_to_x",
    "stacked_marker_sizes",
    "write_public",
]
