"""What every figure shares: the sparsity axis, a group's mean ± std series, the phase shading,
colours, legends and a new (pyplot-free) figure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dsd2.report.data import RunData, RunGroup, group_runs, load_runs

PHASE_COLORS = {"light": "#9ecae1", "critical": "#fc9272", "sweet": "#a1d99b", "collapsed": "#bdbdbd", "undetermined": "#f0f0f0"}
PHASE_ORDER = ("light", "critical", "sweet", "collapsed")
ROLE_ORDER = {"vanilla": 0, "teacher": 1, "student": 2}
_MIN_REMAINING = 1e-9


# ----------------------------------------------------------------------------- helpers


def sparsity_to_x(s: float) -> float:
    """The plotting coordinate of a sparsity: ``-log10(1 - s)`` (0 for the dense net)."""
    return -math.log10(max(1.0 - float(s), _MIN_REMAINING))


def format_sparsity(s: float) -> str:
    """Sparsity in % with enough decimals to tell the late IMP rounds apart (89.3, 99.62, 99.95, 99.995)."""
    pct = 100.0 * float(s)
    remaining = 100.0 - pct
    if remaining >= 1.0:
        decimals = 1
    elif remaining >= 0.01:
        decimals = 2
    else:
        decimals = math.ceil(-math.log10(max(remaining, 1e-12)))
    text = f"{pct:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def mpl_text(text: Any) -> str:
    """Plain text for matplotlib: no mathtext from a ``$`` in a path or name."""
    return str(text).replace("$", r"\$")


def as_groups(runs: Any) -> list[RunGroup]:
    if isinstance(runs, (str, Path, RunData)):
        runs = [runs]
    runs = list(runs)
    if runs and all(isinstance(r, RunGroup) for r in runs):
        groups = runs
    else:
        groups = group_runs(load_runs(runs))
    return sorted(groups, key=lambda g: ROLE_ORDER.get(g.role, 0))  # stable: input order within a role


def as_run(run: str | Path | RunData) -> RunData:
    return run if isinstance(run, RunData) else load_runs([run])[0]


def _common_rounds(group: RunGroup) -> int:
    return min(len(r.rows) for r in group.runs)


def _std(values: Sequence[float], mean: float) -> float:
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass
class Series:
    """One metric of a group along its rounds: x, mean and (for several seeds) std."""

    x: list[float]
    sparsity: list[float]
    mean: list[float]
    std: list[float] | None
    n: int


def group_series(group: RunGroup, key: str, scale: float = 100.0) -> Series | None:
    """Mean (and std over seeds) of column ``key`` on the rounds every run of the group has."""
    n = _common_rounds(group)
    first = group.runs[0]
    if not any(r.has(key) for r in group.runs):
        return None
    sp = [float(first.rows[i]["sparsity"]) for i in range(n)]
    means: list[float] = []
    stds: list[float] = []
    for i in range(n):
        vals = [float(r.rows[i][key]) * scale for r in group.runs if r.rows[i].get(key) is not None]
        if not vals:
            means.append(float("nan"))
            stds.append(float("nan"))
            continue
        m = sum(vals) / len(vals)
        means.append(m)
        stds.append(_std(vals, m))
    return Series([sparsity_to_x(s) for s in sp], sp, means, stds if len(group.runs) > 1 else None, len(group.runs))


def series_color(i: int) -> str:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
    return cycle[i % len(cycle)]


def plot_series(ax: Axes, s: Series, *, color: str, ls: str, label: str, gid: str, marker: str = "o") -> Line2D:
    (line,) = ax.plot(s.x, s.mean, color=color, ls=ls, marker=marker, ms=3.5, lw=1.6, label=mpl_text(label))
    line.set_gid(gid)
    if s.std is not None:
        lo = [m - d for m, d in zip(s.mean, s.std)]
        hi = [m + d for m, d in zip(s.mean, s.std)]
        band = ax.fill_between(s.x, lo, hi, color=color, alpha=0.18, lw=0, label="_nolegend_")
        band.set_gid("band:" + gid)
    return line


def setup_sparsity_axis(ax: Axes, sparsities: Iterable[float], *, max_ticks: int = 10) -> list[float]:
    """Ticks at the given IMP sparsities (thinned to about ``max_ticks``), labelled in %."""
    sp = sorted({round(float(s), 12) for s in sparsities})
    xs = [sparsity_to_x(s) for s in sp]
    ticks: list[float] = []
    labels: list[str] = []
    if xs:
        span = max(xs[-1] - xs[0], 1e-9)
        gap = span / max(max_ticks - 1, 1) * 0.95
        last = None
        for s, x in zip(sp, xs):
            if last is None or x - last >= gap:
                ticks.append(x)
                labels.append(format_sparsity(s))
                last = x
        if ticks[-1] != xs[-1]:  # always label the sparsest round
            if xs[-1] - ticks[-1] < gap and len(ticks) > 1:
                ticks.pop()
                labels.pop()
            ticks.append(xs[-1])
            labels.append(format_sparsity(sp[-1]))
        if len(xs) > 1:
            steps = [b - a for a, b in zip(xs, xs[1:])]
            pad = min(steps) / 2 if steps else 0.1
            ax.set_xlim(xs[0] - pad, xs[-1] + pad)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("sparsity (%)  —  log axis of the remaining weights")
    ax.grid(True, alpha=0.3, lw=0.5)
    return ticks


def phase_spans(run: RunData) -> list[tuple[str, float, float]]:
    """Contiguous phase segments of a run as ``(phase, x_from, x_to)`` on the sparsity axis.

    A round owns the x-range between the midpoints to its neighbours; the first and last rounds
    extend by half their step outwards.
    """
    xs = [sparsity_to_x(r["sparsity"]) for r in run.rows]
    phases = [r.get("phase") for r in run.rows]
    if not xs or all(p is None for p in phases):
        return []
    n = len(xs)
    if n == 1:
        edges = [xs[0] - 0.1, xs[0] + 0.1]
    else:
        mids = [(a + b) / 2 for a, b in zip(xs, xs[1:])]
        edges = [xs[0] - (xs[1] - xs[0]) / 2, *mids, xs[-1] + (xs[-1] - xs[-2]) / 2]
    spans: list[tuple[str, float, float]] = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and phases[j + 1] == phases[i]:
            j += 1
        if phases[i] is not None:
            spans.append((str(phases[i]), edges[i], edges[j + 1]))
        i = j + 1
    return spans


def shade_phases(ax: Axes, run: RunData) -> list[Patch]:
    """Background spans of the run's phases; returns legend handles (one per phase present)."""
    seen: dict[str, Patch] = {}
    for phase, x0, x1 in phase_spans(run):
        color = PHASE_COLORS.get(phase, "#eeeeee")
        span = ax.axvspan(x0, x1, color=color, alpha=0.35, lw=0, zorder=0)
        span.set_gid(f"phase:{phase}")
        if phase not in seen:
            seen[phase] = Patch(facecolor=color, alpha=0.6, label=phase)
    order = {p: i for i, p in enumerate(PHASE_ORDER)}
    return [seen[p] for p in sorted(seen, key=lambda p: order.get(p, 99))]


def phase_run(groups: Sequence[RunGroup], phases_from: RunData | None) -> RunData | None:
    if phases_from is not None:
        return phases_from
    for role in ("teacher", "vanilla"):
        for g in groups:
            if g.role == role:
                for r in g.runs:
                    if r.role == role and r.has("phase"):
                        return r
    return None


def add_legends(ax: Axes, phase_handles: list[Patch], *, title: str | None, run_title: str = "runs") -> None:
    """Runs legend and phases legend to the right of the axes (outside, laid out by the figure)."""
    fig = ax.get_figure()
    assert fig is not None  # every axes here is drawn on a figure
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title=run_title, title_fontsize=8, frameon=False)
    if phase_handles:
        fig.legend(
            handles=phase_handles,
            loc="outside right lower",
            fontsize=7,
            title=mpl_text(title or "phases"),
            title_fontsize=8,
            frameon=False,
        )


def new_figure(w: float = 10.0, h: float = 4.8) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig
