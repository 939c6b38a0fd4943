"""One report for a whole sweep: the paper's analysis tables and figures, then every run.

Reads only the sweep's own files (``sweep.json``, ``summary_by_point.csv``) and the run
directories they list. For every grid key other than the seed it draws the best accuracy
(mean ± std over seeds) and the sparsity where it was reached against the key's values, one
line per combination of the other keys: best sparsity and accuracy vs noise, vs width, vs depth,
vs retraining mode, as in the paper's analyses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from matplotlib.figure import Figure

from dsd2 import rundir, store
from dsd2.errors import UserError
from dsd2.file_schemas import SweepInfo
from dsd2.report import figures as F
from dsd2.report import html as H
from dsd2.report.data import RunData, load_runs


def grid_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The grid parameters of summary_by_point.csv: the columns before ``n``."""
    keys = list(rows[0])
    return keys[: keys.index("n")] if "n" in keys else []


def metric_prefixes(rows: list[dict[str, Any]]) -> list[str]:
    """ "" for plain sweeps; "teacher_" and "student_" for pipeline sweeps."""
    return [c[: -len("best_acc_mean")] for c in rows[0] if c.endswith("best_acc_mean")]


def _as_number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def analysis_figure(rows: list[dict[str, Any]], key: str) -> Figure:
    """Best accuracy (left) and its sparsity (right) vs ``key``, mean ± std over seeds."""
    others = [k for k in grid_keys(rows) if k != key]
    values = []
    for r in rows:
        if r[key] not in values:
            values.append(r[key])
    numeric = all(_as_number(v) is not None for v in values)
    xs_of = (lambda v: _as_number(v)) if numeric else (lambda v: values.index(v))
    fig = F.new_figure(11.0, 4.2)
    ax_acc, ax_sp = fig.subplots(1, 2)
    lines: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        lines.setdefault(tuple(r[k] for k in others), []).append(r)
    i = 0
    for combo, group in lines.items():
        group = sorted(group, key=lambda r: cast(float, xs_of(r[key])))
        xs = [xs_of(r[key]) for r in group]
        for prefix in metric_prefixes(rows):
            label = ", ".join(f"{k}={v}" for k, v in zip(others, combo)) or "all"
            if prefix:
                label = f"{prefix.rstrip('_')} — {label}"
            color = F.series_color(i)
            i += 1
            for ax, metric, scale in ((ax_acc, "best_acc", 100.0), (ax_sp, "best_sparsity", 100.0)):
                mean = [(_as_number(r.get(f"{prefix}{metric}_mean")) or 0.0) * scale for r in group]
                std = [(_as_number(r.get(f"{prefix}{metric}_std")) or 0.0) * scale for r in group]
                (line,) = ax.plot(xs, mean, marker="o", color=color, label=F.mpl_text(label))
                line.set_gid(f"{prefix}{metric}:{label}")
                ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color, alpha=0.15, lw=0)
            dense = [(_as_number(r.get(f"{prefix}dense_acc_mean")) or 0.0) * 100.0 for r in group]
            ax_acc.plot(xs, dense, ls="--", marker="s", ms=3, color=color, alpha=0.7)
    for ax, ylabel in ((ax_acc, "best accuracy % (dashed: dense)"), (ax_sp, "sparsity % of the best round")):
        ax.set_xlabel(F.mpl_text(key))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not numeric:
            ax.set_xticks(range(len(values)), [F.mpl_text(str(v)) for v in values], rotation=20)
    ax_acc.legend(fontsize=7)
    fig.suptitle(F.mpl_text(f"Best fit vs {key} (mean ± std over seeds)"), fontsize=10)
    return fig


def point_label(params: dict[str, Any], default: str) -> str:
    """A grid point for people: ``noise.rate=0.2, model.depth=3`` (the seed left out: seeds are
    grouped into bands); ``default`` when the seed is the only grid key."""
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or default


def _summary_table(rows: list[dict[str, Any]]) -> str:
    keys = grid_keys(rows)
    shown = ("best_acc", "best_sparsity", "best_test_acc", "dense_acc", "dip_depth")
    means = [c for c in rows[0] if c.endswith("_mean") and any(c.endswith(f"{m}_mean") for m in shown)]

    def cell(r: dict[str, Any], col: str) -> str:
        mean, std = _as_number(r.get(col)), _as_number(r.get(col[: -len("_mean")] + "_std"))
        if mean is None:
            return ""
        # a no-break space keeps "± std" together when the cell wraps under the mean
        return f"{100 * mean:.2f}" + (f" ±\u00a0{100 * std:.2f}" if std is not None else "")

    # spaces, not underscores: headers wrap between words, so the table fits the page
    headers = [*keys, "seeds", *[c[: -len("_mean")].replace("_", " ") + " %" for c in means]]
    body = [[*(r[k] for k in keys), r.get("seeds", ""), *(cell(r, c) for c in means)] for r in rows]
    return H.html_table(headers, body, cls="sweep-summary", text_cols=range(len(keys) + 1), wrap_cols=range(len(keys) + 1, len(headers)))


def _read_sweep(sweep_dir: Path) -> dict[str, Any]:
    if not (sweep_dir / "sweep.json").is_file():
        raise UserError(f"{sweep_dir} is not a sweep folder (no sweep.json): give out/<sweep name> of a `dsd2 sweep` run")
    return cast(dict[str, Any], store.read_json_dict(sweep_dir / "sweep.json", SweepInfo, hint="run the sweep again to rewrite it"))


def _cell_dir(sweep_dir: Path, recorded: Any) -> Path | None:
    """A cell's run folder: the one sweep.json records (absolute), or, when the sweep's --out folder
    was moved since, the run of that name next to the sweep folder, where `dsd2 sweep` puts it."""
    if not recorded or not isinstance(recorded, str):
        return None
    if Path(recorded).is_dir():
        return Path(recorded)
    here = sweep_dir.parent / Path(recorded).name
    return here if rundir.config_path(here).is_file() else None


def sweep_runs(sweep_dir: str | Path) -> list[RunData]:
    """The finished runs of a sweep (teachers too), each labelled with its grid point
    (:func:`point_label`) for legends and headings instead of its internal cell name."""
    sweep_dir = Path(sweep_dir)
    info = _read_sweep(sweep_dir)
    name = str(info.get("spec", {}).get("name", sweep_dir.name))
    run_dirs: list[Path] = []
    labels: dict[Path, str] = {}
    for cell in info.get("cells", []):
        if cell.get("status") in ("finished", "skipped"):
            for key in ("teacher_dir", "run_dir"):
                d = _cell_dir(sweep_dir, cell.get(key))
                if d is not None and d not in run_dirs:
                    run_dirs.append(d)
                    params = cell.get("params")
                    labels[d] = point_label(params if isinstance(params, dict) else {}, name)
    if not run_dirs:
        raise UserError(f"sweep {sweep_dir.name} has no finished cell yet: run `dsd2 sweep` first")
    runs = load_runs(run_dirs)
    for run in runs:
        run.display = labels.get(run.path)
    return runs


def write_sweep_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, title: str | None = None) -> Path:
    """``out_dir/index.html`` (default ``<sweep_dir>/report``): analysis figures and tables of the
    sweep, then the usual report of all its finished runs (seeds grouped into bands)."""
    sweep_dir = Path(sweep_dir)
    info = _read_sweep(sweep_dir)
    by_point = store.read_csv(sweep_dir / "summary_by_point.csv") if (sweep_dir / "summary_by_point.csv").is_file() else []
    runs = sweep_runs(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"

    def page_for(folder: Path) -> str:
        fig_dir = folder / "figures"
        written: list[Path] = []
        parts = [f"<p>{len(info.get('cells', []))} cells: {H.esc(info.get('counts', {}))}</p>"]
        if by_point:
            parts.append(_summary_table(by_point))
            for key in [k for k in grid_keys(by_point) if len({r[k] for r in by_point}) > 1]:
                parts.append(H.figure_block(analysis_figure(by_point, key), fig_dir, f"sweep_{key}", f"Best fit vs {key}", written))
        failed = [c for c in info.get("cells", []) if c.get("status") == "failed"]
        if failed:
            parts.append(
                "<h3>Failed cells</h3>"
                + H.html_table(["cell", "error"], [[c["name"], c.get("error") or ""] for c in failed], text_cols=(0, 1))
            )
        page, _ = H.build_report(
            runs,
            folder,
            title=title or f"dsd2 sweep {info.get('spec', {}).get('name', sweep_dir.name)}",
            extra_sections=[("Sweep analysis (mean ± std over seeds)", "".join(parts))],
        )
        return page

    return H.publish_report(out, page_for, chosen=out_dir is not None)
