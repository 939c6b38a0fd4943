"""The compute figure: accuracy vs training compute of the vanilla run and the DSD² student,
with the rounds each early-stop strategy selects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from dsd2.report.data import RunData
from dsd2.report.plotting import as_run, format_sparsity, mpl_text, new_figure, series_color


def stacked_marker_sizes(points: Sequence[tuple[float, float]], base: float = 13.0, step: float = 3.5) -> list[float]:
    """Marker size of each point: the k-th point drawn on a spot an earlier one already holds is
    ``step`` smaller, so markers on one spot nest and every one stays visible (drawn above the
    larger ones). Spots compare at 4 significant digits (x) and 0.01 (y)."""
    seen: dict[tuple[str, float], int] = {}
    sizes = []
    for x, y in points:
        key = (f"{x:.4g}", round(y, 2))
        k = seen[key] = seen.get(key, -1) + 1
        sizes.append(max(base - step * k, 3.0))
    return sizes


def _stop_points(outcomes: Sequence[Any], compressed: Sequence[Any] | None) -> list[tuple[Any, str]]:
    """(outcome, legend tag) of each stop point: the outcomes, then those at the second stop
    setting (less its exhaustive row, the same point as the first's), tagged with the setting."""
    from dsd2 import compare

    points: list[tuple[Any, str]] = [(o, "") for o in outcomes]
    if compressed is not None:
        rule = compare.COMPRESS_RULE
        tag = f" [tolerance {100 * rule['tolerance']:g} pts, {rule['select']}]"
        points = [(o, "" if o.strategy == "vanilla, exhaustive" else " [tolerance 0, best]") for o in outcomes]
        points += [(o, tag) for o in compressed if o.strategy != "vanilla, exhaustive"]
    return points


def _plot_compute_curves(ax: Axes, v: RunData, s: RunData | None, unit: float) -> None:
    """Test accuracy vs cumulative training compute (in units) of the vanilla run and the student."""
    for run, color, what in ((v, series_color(0), "vanilla IMP"), (s, series_color(1), "DSD² student (teacher forward passes included)")):
        if run is None:
            continue
        rows = [r for r in run.rows if r.get("train_pflops_dense") is not None and r.get("test_acc") is not None]
        (line,) = ax.plot(
            [r["train_pflops_dense"] / unit for r in rows],
            [100.0 * r["test_acc"] for r in rows],
            color=color,
            marker="o",
            ms=3.5,
            lw=1.5,
            label=mpl_text(f"{what}: {run.title} (seed {run.seed})"),
        )
        line.set_gid("pflops:student" if run is s else "pflops:vanilla")


def _plot_stop_points(ax: Axes, points: list[tuple[Any, str]], unit: float) -> None:
    """The stop points, numbered and listed in the legend; several on one point nest (later ones
    smaller, on top) with their numbers side by side."""
    markers = ["D", "v", "P", "*", "X", "^", "s", "h"]
    xy = [(float(o.pflops_dense) / unit, 100.0 * float(o.test_acc)) for o, _ in points]
    sizes = stacked_marker_sizes(xy)
    at: dict[tuple[str, float], int] = {}
    for i, ((o, tag), (x, y), ms) in enumerate(zip(points, xy, sizes), start=1):
        collapsed = " — labelled Collapsed, not a recommended pick" if (o.phase or "").lower() == "collapsed" else ""
        key = (f"{x:.4g}", round(y, 2))
        k = at[key] = at.get(key, -1) + 1  # several strategies on one point: labels side by side
        (pt,) = ax.plot(
            [x],
            [y],
            ls="none",
            marker=markers[(i - 1) % len(markers)],
            ms=ms,
            mec="black",
            mew=0.8,
            color=series_color(i + 1),
            mfc=to_rgba(series_color(i + 1), 0.6),  # translucent: the curve under the point shows through
            zorder=5 + 0.1 * i,  # later (smaller) markers above the earlier ones on the same spot
            label=mpl_text(
                f"{i}. {o.strategy}{tag}: round {o.selected_round} ({format_sparsity(o.sparsity)}% sparse), "
                f"{y:.1f}%, {x:.2f} units = {o.pflops_dense:.4g} PFLOPs{collapsed}"
            ),
        )
        pt.set_gid(f"strategy:{i}")
        ax.annotate(str(i), (x, y), xytext=(7 + 9 * k, 6), textcoords="offset points", fontsize=8, weight="bold")


def _compute_axes(ax: Axes, unit: float) -> None:
    """Axis labels in units, measured PFLOPs on the top axis, title and grid."""
    ax.set_xlabel("cumulative training compute (units: dense training runs of the vanilla model; KD includes the teacher's forwards)")

    def to_pflops(u: Any) -> Any:
        return u * unit  # matplotlib passes arrays

    def to_units(p: Any) -> Any:
        return p / unit

    top = ax.secondary_xaxis("top", functions=(to_pflops, to_units))
    top.set_xlabel("measured PFLOPs", fontsize=8)
    top.tick_params(labelsize=7)
    top.xaxis.set_major_formatter(lambda p, _: f"{p:.3g}")  # no "1e-7" offset text over the corner
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs training compute, with the early-stop points", fontsize=10)
    ax.grid(True, alpha=0.3, lw=0.5)


def compute_figure(
    vanilla: str | Path | RunData,
    student: str | Path | RunData | None = None,
    outcomes: Sequence[Any] | None = None,
    compressed: Sequence[Any] | None = None,
) -> Figure:
    """Test accuracy vs cumulative training compute of the vanilla run and the DSD² student, with
    the early-stop points of :func:`dsd2.compare.strategy_table` numbered and listed in the legend
    (Figure 1, right).

    The x axis is in units, one dense training run of the vanilla model (its round 0; the strategy
    table's unit, docs/protocol.md), with the measured PFLOPs (sparsity not credited) on the top
    axis. Strategies that select the same point nest there (later ones smaller, on top).

    ``compressed``: the outcomes at a second stop setting (the report passes
    :data:`dsd2.compare.COMPRESS_RULE`'s), numbered after the first and tagged with the setting in
    the legend; its exhaustive row, the same point as the first's, is left out. A pick in a round
    labelled Collapsed says so in the legend. Marker faces are translucent: the curve under a
    stop point stays visible."""
    from dsd2 import compare

    v = as_run(vanilla)
    s = as_run(student) if student is not None else None
    if outcomes is None:
        outcomes = compare.strategy_table(v.path, s.path if s is not None else None)
    unit = float(v.rows[0]["round_pflops_dense"]) or 1.0
    points = _stop_points(outcomes, compressed)
    fig = new_figure(10.0, 6.0 + 0.15 * max(0, len(points) - 5))  # room for the longer legend
    ax = fig.add_subplot()
    _plot_compute_curves(ax, v, s, unit)
    _plot_stop_points(ax, points, unit)
    _compute_axes(ax, unit)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7, frameon=False, ncol=1)
    return fig
