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
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dsd2 import store
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


def _as_groups(runs: Any) -> list[RunGroup]:
    if isinstance(runs, (str, Path, RunData)):
        runs = [runs]
    runs = list(runs)
    if runs and all(isinstance(r, RunGroup) for r in runs):
        groups = runs
    else:
        groups = group_runs(load_runs(runs))
    return sorted(groups, key=lambda g: ROLE_ORDER.get(g.role, 0))  # stable: input order within a role


def _as_run(run: str | Path | RunData) -> RunData:
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


def _plot_series(ax: Axes, s: Series, *, color: str, ls: str, label: str, gid: str, marker: str = "o") -> Line2D:
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


def _phase_run(groups: Sequence[RunGroup], phases_from: RunData | None) -> RunData | None:
    if phases_from is not None:
        return phases_from
    for role in ("teacher", "vanilla"):
        for g in groups:
            if g.role == role:
                for r in g.runs:
                    if r.role == role and r.has("phase"):
                        return r
    return None


def _add_legends(ax: Axes, phase_handles: list[Patch], *, title: str | None, run_title: str = "runs") -> None:
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


# ----------------------------------------------------------------------------- figures


def _curves_figure(
    runs: Any,
    series: Sequence[tuple[str, str, str, str | None]],
    *,
    ylabel: str,
    title: str,
    phases_from: RunData | None,
    mark_teachers: bool = False,
) -> Figure:
    """Curves vs sparsity for every group (``series``: column, linestyle, label, marker), the
    vanilla run's phases shaded behind them."""
    groups = _as_groups(runs)
    fig = new_figure()
    ax = fig.add_subplot()
    prun = _phase_run(groups, phases_from)
    handles = shade_phases(ax, prun) if prun is not None else []
    all_sp: list[float] = []
    for gi, g in enumerate(groups):
        color = series_color(gi)
        for key, ls, what, marker in series:
            s = group_series(g, key)
            if s is None:
                continue
            all_sp.extend(s.sparsity)
            kw = {"marker": marker} if marker else {}
            _plot_series(ax, s, color=color, ls=ls, label=f"{g.label} — {what}", gid=f"{key}:{gi}", **kw)
    if mark_teachers:
        _mark_teachers(ax, groups)
    setup_sparsity_axis(ax, all_sp)
    ax.set_ylabel(ylabel)
    ax.set_title(mpl_text(title), fontsize=10)
    _add_legends(ax, handles, title=f"phases ({prun.title}, seed {prun.seed})" if prun else None)
    return fig


def accuracy_figure(runs: Any, *, phases_from: RunData | None = None, title: str | None = None) -> Figure:
    """Test (solid) and validation (dashed) accuracy vs sparsity, seeds as mean ± std bands.

    The phases of the vanilla run (the teacher when present; or ``phases_from``) shade the
    background. A student's teacher point (its ``teacher.json`` round) is starred when the
    teacher run is among the inputs.
    """
    return _curves_figure(
        runs,
        [("test_acc", "-", "test", "o"), ("val_acc", "--", "val", "s")],
        ylabel="accuracy (%)",
        title=title or "Accuracy vs sparsity (solid: test, dashed: validation)",
        phases_from=phases_from,
        mark_teachers=True,
    )


def _mark_teachers(ax: Axes, groups: Sequence[RunGroup]) -> None:
    runs = [r for g in groups for r in g.runs]
    marked: set[tuple[str, int]] = set()
    for st in runs:
        if not st.teacher:
            continue
        from dsd2.report.data import teacher_of

        t = teacher_of(st, runs)
        rnd = st.teacher.get("round")
        if t is None or not isinstance(rnd, int) or rnd >= len(t.rows):
            continue
        key = (str(t.path), rnd)
        if key in marked:
            continue
        marked.add(key)
        row = t.rows[rnd]
        if row.get("test_acc") is None:
            continue
        x, y = sparsity_to_x(row["sparsity"]), 100.0 * row["test_acc"]
        # the label goes to the legend: text next to the star would sit on the curves
        (pt,) = ax.plot(
            [x],
            [y],
            marker="*",
            ms=13,
            color="gold",
            mec="black",
            mew=0.8,
            ls="none",
            zorder=5,
            label=f"teacher point: round {rnd} ({format_sparsity(row['sparsity'])}% sparse)",
        )
        pt.set_gid(f"teacher:{rnd}")


def memorisation_figure(runs: Any, *, phases_from: RunData | None = None, title: str | None = None) -> Figure:
    """Train accuracy on the noisy labels (solid) and on the flipped samples w.r.t. their noisy
    labels, i.e. memorisation of the noise (dashed), vs sparsity; with a memorisation probe
    (noise.probe) also the probe samples w.r.t. their flipped labels (dotted)."""
    return _curves_figure(
        runs,
        [
            ("train_acc_noisy", "-", "noisy train", None),
            ("train_acc_flipped", "--", "flipped (memorised)", None),
            ("train_acc_probe", ":", "probe (memorised)", None),
        ],
        ylabel="train accuracy (%)",
        # two lines: one did not fit the axes' width and was cut at the figure's left edge
        title=title or "Fit of the noisy labels (solid) and memorisation\nof the flipped (dashed) or probe (dotted) samples",
        phases_from=phases_from,
    )


def layer_labels(run: RunData, layers: dict[str, int | None]) -> dict[str, str]:
    """Legend text for each measured activation (``layer`` of entropy.csv, with its neuron
    count): the name, the Conv/Linear layer whose output it follows and its size, e.g.
    ``layers.1: after Conv2d layers.0, 4,704 units``. The model is built on the meta device
    (no memory, no weights) to find that layer; where it cannot be (a plugin not imported), the
    name and size alone."""
    import torch
    from torch import nn

    previous: dict[str, str] = {}
    try:
        from dsd2.models import build_model

        model_cfg = dict(run.config.get("model") or {})
        if any(model_cfg.get(k) for k in ("weights", "pretrained")):
            raise ValueError("a pretrained model: building it could download weights")  # plain names instead
        data = run.meta.get("data") or {}
        with torch.device("meta"):
            model = build_model(
                str(model_cfg.pop("name")),
                num_classes=int(data["num_classes"]),
                in_channels=int(data["in_channels"]),
                input_size=int(data["input_size"]),
                **model_cfg,
            )
        last = None
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                last = f"{type(module).__name__} {name}"
            elif name in layers and last is not None:
                previous[name] = last
    except Exception:  # the labels are a courtesy: any failure leaves the plain names
        previous = {}
    out = {}
    for layer, neurons in layers.items():
        parts = [f"after {previous[layer]}"] if layer in previous else []
        if neurons:
            parts.append(f"{neurons:,} units")
        out[layer] = f"{layer}: {', '.join(parts)}" if parts else layer
    return out


def entropy_figure(runs: Any, *, phases_from: RunData | None = None) -> Figure | None:
    """Mean activation entropy (neuron-weighted, bits) of every group, then the per-layer
    entropies of the first run of each group. None when no run measured entropy."""
    groups = _as_groups(runs)
    with_layers = [(gi, g) for gi, g in enumerate(groups) if g.runs[0].entropy_rows]
    has_mean = any(r.has("entropy") for g in groups for r in g.runs)
    if not has_mean and not with_layers:
        return None
    n = 1 + len(with_layers)
    ncols = min(2, n)
    nrows = math.ceil(n / ncols)
    fig = new_figure(6.2 * ncols, 4.2 * nrows)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    ax = axes[0]
    prun = _phase_run(groups, phases_from)
    handles = shade_phases(ax, prun) if prun is not None else []
    all_sp: list[float] = []
    for gi, g in enumerate(groups):
        s = group_series(g, "entropy", scale=1.0)
        if s is None:
            continue
        all_sp.extend(s.sparsity)
        _plot_series(ax, s, color=series_color(gi), ls="-", label=g.label, gid=f"entropy:{gi}")
    setup_sparsity_axis(ax, all_sp or [r["sparsity"] for g in groups for r in g.runs[0].rows])
    ax.set_ylabel("mean entropy (bits)")
    ax.set_title("Neuron-weighted mean activation entropy", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="best", handles=[*ax.get_legend_handles_labels()[0], *handles])
    for (gi, g), ax in zip(with_layers, axes[1:]):
        run = g.runs[0]
        layers: dict[str, list[tuple[float, float]]] = {}
        neurons: dict[str, int | None] = {}
        for row in run.entropy_rows:
            if row.get("entropy") is None or row.get("sparsity") is None:
                continue
            layers.setdefault(str(row["layer"]), []).append((float(row["sparsity"]), float(row["entropy"])))
            count = row.get("neurons")
            neurons[str(row["layer"])] = int(count) if isinstance(count, (int, float)) and not isinstance(count, bool) else None
        labels = layer_labels(run, neurons)
        cmap = matplotlib.colormaps["viridis"]
        sp: list[float] = []
        for li, (layer, pts) in enumerate(layers.items()):
            pts.sort()
            sp.extend(p[0] for p in pts)
            c = cmap(li / max(len(layers) - 1, 1) * 0.9)
            (line,) = ax.plot(
                [sparsity_to_x(p[0]) for p in pts], [p[1] for p in pts], color=c, lw=1.1, marker=".", ms=3, label=mpl_text(labels[layer])
            )
            line.set_gid(f"layer:{gi}:{layer}")
        if run.has("entropy"):
            (line,) = ax.plot(
                [sparsity_to_x(r["sparsity"]) for r in run.rows if r.get("entropy") is not None],
                [r["entropy"] for r in run.rows if r.get("entropy") is not None],
                color="black",
                lw=2.2,
                label="mean",
            )
            line.set_gid(f"layer-mean:{gi}")
        setup_sparsity_axis(ax, sp or [r["sparsity"] for r in run.rows])
        ax.set_ylabel("entropy (bits)")
        ax.set_title(mpl_text(f"Per-layer entropy — {run.label}"), fontsize=9)
        ax.legend(fontsize=6, frameon=False, ncol=2 if len(layers) > 8 else 1, loc="best")
    return fig


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

    v = _as_run(vanilla)
    s = _as_run(student) if student is not None else None
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


# ----------------------------------------------------------------------------- output


def write_public(path: Path, data: bytes) -> None:
    """Atomic write, then readable by all (temp files are created 0600): reports are shared."""
    store.atomic_write_bytes(path, data)
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "svg")) -> dict[str, Path]:
    """Write ``<stem>.<fmt>`` for every format atomically; return the paths by format."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for fmt in formats:
        buf = io.BytesIO()
        if fmt == "svg":
            with matplotlib.rc_context({"svg.hashsalt": "dsd2"}):
                fig.savefig(buf, format="svg", metadata={"Date": None})
        elif fmt == "pdf":
            fig.savefig(buf, format="pdf", metadata={"CreationDate": None, "ModDate": None})
        else:
            fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else None)
        path = out / f"{stem}.{fmt}"
        write_public(path, buf.getvalue())
        paths[fmt] = path
    return paths
