"""Figures of the curves vs sparsity: accuracy, memorisation and activation entropy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dsd2.report.data import RunData, RunGroup
from dsd2.report.plotting import (
    add_legends,
    as_groups,
    format_sparsity,
    group_series,
    mpl_text,
    new_figure,
    phase_run,
    plot_series,
    series_color,
    setup_sparsity_axis,
    shade_phases,
    sparsity_to_x,
)


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
    groups = as_groups(runs)
    fig = new_figure()
    ax = fig.add_subplot()
    prun = phase_run(groups, phases_from)
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
            plot_series(ax, s, color=color, ls=ls, label=f"{g.label} — {what}", gid=f"{key}:{gi}", **kw)
    if mark_teachers:
        _mark_teachers(ax, groups)
    setup_sparsity_axis(ax, all_sp)
    ax.set_ylabel(ylabel)
    ax.set_title(mpl_text(title), fontsize=10)
    add_legends(ax, handles, title=f"phases ({prun.title}, seed {prun.seed})" if prun else None)
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
    groups = as_groups(runs)
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
    prun = phase_run(groups, phases_from)
    handles = shade_phases(ax, prun) if prun is not None else []
    all_sp: list[float] = []
    for gi, g in enumerate(groups):
        s = group_series(g, "entropy", scale=1.0)
        if s is None:
            continue
        all_sp.extend(s.sparsity)
        plot_series(ax, s, color=series_color(gi), ls="-", label=g.label, gid=f"entropy:{gi}")
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
