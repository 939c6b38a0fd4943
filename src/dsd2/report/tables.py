"""The report's tables about runs: the summary, the selection per run, and each run's section
(its rounds, label noise, resolved config and meta.json)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsd2.compare import phase_basis_note
from dsd2.errors import UserError
from dsd2.report import figures as F
from dsd2.report.data import RunData, RunGroup
from dsd2.report.markup import PERCENT_COLUMNS, esc, fmt_cell, html_table


def config_value(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _model_text(run: RunData) -> str:
    model = run.config.get("model") or {}
    if not isinstance(model, dict):
        return str(model)
    opts = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    return f"{model.get('name', '?')}" + (f" ({opts})" if opts else "")


def _noise_text(run: RunData) -> str:
    kind, rate = config_value(run.config, "noise", "kind"), config_value(run.config, "noise", "rate")
    if kind in (None, "none"):
        return "none"
    if kind == "transition":  # noise.rate is not used: the matrix sets the rate (noise.json has the realised one)
        return "transition matrix"
    return f"{kind}, ε = {100 * float(rate):g}%" if isinstance(rate, (int, float)) else str(kind)


def _wall_time(run: RunData) -> str:
    total = sum(float(t["wall_s"]) for t in run.timings if isinstance(t.get("wall_s"), (int, float)))
    if not run.timings:
        return ""
    return f"{total:.1f} s" if total < 120 else f"{total / 60:.1f} min"


def _best_round(run: RunData) -> tuple[str, int]:
    from dsd2.compare import selection_column

    col = selection_column(run.rows)
    vals = [(r.get(col), i) for i, r in enumerate(run.rows) if r.get(col) is not None]
    if not vals:
        return col, len(run.rows) - 1
    return col, max(vals)[1]


SUMMARY_HEADERS = [
    "run",
    "directory",
    "model",
    "data",
    "rounds",
    "final sparsity %",
    "best test acc %",
    "best round",
    "teacher",
    "train PFLOPs (measured)",
    "wall time",
]


def summary(runs: Sequence[RunData], groups: Sequence[RunGroup]) -> str:
    """What the study holds (runs, data, models, pruning) in a list, then one table row per run."""
    out = ["<ul>", *_study_lines(runs, groups), "</ul>"]
    rows = [_summary_row(r) for r in runs]
    # 11 columns whose text wraps (headers too): the table fits a 1280 px window instead of scrolling
    out.append(
        html_table(
            SUMMARY_HEADERS,
            rows,
            cls="runs",
            text_cols=(0, 1, 2, 3, 7, 8),
        )
    )
    return "".join(out)


def _study_lines(runs: Sequence[RunData], groups: Sequence[RunGroup]) -> list[str]:
    """The summary's list items: groups, datasets and noise, models, pruning settings."""
    datasets = sorted({str(config_value(r.config, "dataset", "name")) for r in runs})
    models = sorted({_model_text(r) for r in runs})
    noises = sorted({_noise_text(r) for r in runs})
    lines = [
        f"<li>{len(runs)} run(s) in {len(groups)} group(s) (runs differing only by seed form a group).</li>",
        f"<li>Dataset: {esc(', '.join(datasets))}; label noise: {esc('; '.join(noises))}.</li>",
        f"<li>Models: {esc('; '.join(models))}.</li>",
    ]
    p = {
        (config_value(r.config, "prune", "method"), config_value(r.config, "prune", "rate"), config_value(r.config, "prune", "retrain"))
        for r in runs
    }
    lines.append(
        "<li>Pruning: "
        + esc(
            "; ".join(
                f"{m}, {100 * float(rt):g}% of the remaining weights per round, retrain = {re}"
                for m, rt, re in sorted(p, key=str)
                if isinstance(rt, (int, float))
            )
        )
        + ".</li>"
    )
    return lines


def _summary_row(r: RunData) -> list[Any]:
    """One run's row of the summary table (:data:`SUMMARY_HEADERS`)."""
    col, best = _best_round(r)
    br = r.rows[best]
    teacher = ""
    if r.teacher:
        teacher = f"{Path(str(r.teacher.get('run_dir', '?'))).name} round {r.teacher.get('round')} ({r.teacher.get('choice')})"
    last = r.rows[-1]
    return [
        r.label,
        r.path.name,
        _model_text(r),
        f"{config_value(r.config, 'dataset', 'name')}; noise {_noise_text(r)}",
        len(r.rows),
        F.format_sparsity(last["sparsity"]),
        f"{100 * br['test_acc']:.2f}" if br.get("test_acc") is not None else "",
        f"{best} ({F.format_sparsity(br['sparsity'])}%, on {col})",
        teacher,
        fmt_cell("pflops", last.get("train_pflops_dense")),
        _wall_time(r),
    ]


def selection_table(runs: Sequence[RunData]) -> str:
    """Per run: the best round, what the plain and entropy early-stop rules select, and costs."""
    rows = [_selection_row(r) for r in runs]
    return html_table(
        [
            "run",
            "selected on",
            "best round",
            "sparsity %",
            "selection acc %",
            "test acc %",
            "plain early stop (offline)",
            "entropy early stop (offline)",
            "in-run early stop",
            "total PFLOPs (measured)",
            "total PFLOPs (sparse-aware)",
        ],
        rows,
        cls="selection",
        text_cols=(0, 1, 6, 7, 8),
    )


def _selection_row(r: RunData) -> list[Any]:
    """One run's row of the selection table."""
    from dsd2 import compare

    col, best = _best_round(r)
    cells: list[Any] = [
        r.label,
        col,
        best,
        F.format_sparsity(r.rows[best]["sparsity"]),
        fmt_cell(col, r.rows[best].get(col)),
        fmt_cell("test_acc", r.rows[best].get("test_acc")),
    ]
    for rule in ("plain", "entropy"):
        try:
            d = compare.decide(r.rows, rule)
        except UserError as err:
            cells.append(f"n/a ({err})")
            continue
        if d is None or d.selected_round is None:
            cells.append("")
            continue
        sel = r.rows[d.selected_round]
        stop = "never fired" if d.stop_round is None else f"stop after {d.stop_round}"
        cost = r.rows[d.stop_round if d.stop_round is not None else len(r.rows) - 1].get("train_pflops_dense")
        cells.append(
            f"round {d.selected_round} ({F.format_sparsity(sel['sparsity'])}%, test {fmt_cell('test_acc', sel.get('test_acc'))}%), "
            f"{stop}, {fmt_cell('pflops', cost)} PFLOPs"
        )
    if r.early_stop:
        es = r.early_stop
        cells.append(f"{es.get('rule')}: stop {es.get('stop_round')}, selected {es.get('selected_round')}")
    else:
        cells.append("")
    cells.append(fmt_cell("pflops", r.rows[-1].get("train_pflops_dense")))
    cells.append(fmt_cell("pflops", r.rows[-1].get("train_pflops_sparse")))
    return cells


def _rounds_table(run: RunData) -> str:
    cols = run.columns or list(run.rows[0].keys())
    classes = [f"phase-{r.get('phase')}" if r.get("phase") else "" for r in run.rows]
    headers = [c + (" %" if c in PERCENT_COLUMNS else "") for c in cols]
    return html_table(
        headers,
        [[fmt_cell(c, row.get(c)) for c in cols] for row in run.rows],
        cls="rounds",
        text_cols=(cols.index("phase"),) if "phase" in cols else (),
        row_classes=classes,
    )


# Classes up to which the report shows the whole clean -> noisy confusion table (beyond: a summary).
CONFUSION_MAX_CLASSES = 12


def _noise_block(noise: dict[str, Any]) -> str:
    """noise.json in short: the realised rate and the clean → noisy counts (small K) or the
    spread of the per-class flip rates (large K)."""
    rate = noise.get("realized_rate")
    head = f"Label noise (noise.json): {noise.get('kind')}, realised rate " + (
        f"{100 * rate:.2f}% ({noise.get('num_flipped')} of {noise.get('n')} train labels)" if isinstance(rate, (int, float)) else "?"
    )
    probe = noise.get("probe")
    if isinstance(probe, dict):  # the memorisation probe's flips, apart from the run's own noise
        head += f"; memorisation probe: {probe.get('num_probe')} more train labels flipped by dsd2 (noise.probe={probe.get('fraction')})"
    conf = noise.get("confusion")
    if not isinstance(conf, list) or not conf:
        return f"<p>{esc(head)}</p>"
    k = len(conf)
    names = noise.get("class_names") if isinstance(noise.get("class_names"), list) else None
    label = [str(names[i]) if names and i < len(names) else str(i) for i in range(k)]
    rates = noise.get("class_flip_rates") or []
    if k <= CONFUSION_MAX_CLASSES:
        rows = [[label[i], *conf[i], _fmt_rate(rates[i] if i < len(rates) else None)] for i in range(k)]
        body = html_table(["clean → noisy", *label, "flipped %"], rows, cls="confusion", text_cols=(0,))
    else:
        known = [(r, i) for i, r in enumerate(rates) if isinstance(r, (int, float))]
        body = (
            f'<p class="note">{k} classes: per-class flip rate from {_fmt_rate(min(known)[0])} (class {esc(label[min(known)[1]])}) to '
            f"{_fmt_rate(max(known)[0])} (class {esc(label[max(known)[1]])}); the full confusion counts are in noise.json.</p>"
            if known
            else ""
        )
    return f"<details><summary>{esc(head)}</summary>{body}</details>"


def _fmt_rate(r: Any) -> str:
    return f"{100 * r:.1f}" if isinstance(r, (int, float)) else "–"


def _meta_table(run: RunData) -> str:
    keys = ["dsd2", "git_commit", "python", "torch", "torchvision", "numpy", "platform", "cpu_model", "cpu_capability", "created", "seed"]
    meta = run.meta
    rows = [[k, meta.get(k)] for k in keys if k in meta]
    rows += [[k, v] for k, v in sorted(meta.items()) if k not in keys]
    if not rows:
        return '<p class="note">No meta.json.</p>'
    return html_table(["key", "value"], rows, cls="meta", text_cols=(0, 1))


def run_section(i: int, run: RunData) -> str:
    parts = [f'<h3 id="run-{i}">{esc(run.label)}</h3>', f"<p><code>{esc(run.path)}</code></p>"]
    if run.teacher:
        t = run.teacher
        parts.append(
            "<p>Teacher: "
            + esc(
                f"{t.get('run_dir')} round {t.get('round')} ({t.get('choice')}, selected on {t.get('selected_on')}, "
                f"sparsity {F.format_sparsity(t['sparsity']) + '%' if isinstance(t.get('sparsity'), (int, float)) else '?'})"
            )
            + "</p>"
        )
    parts.append(f"<details open><summary>Rounds ({len(run.rows)})</summary>{_rounds_table(run)}</details>")
    if run.rows and (basis := phase_basis_note(run.rows)):  # a phase read off accuracy alone says so
        parts.append(f'<p class="note">Phase labels: {esc(basis)} (docs/phases.md).</p>')
    if run.noise:
        parts.append(_noise_block(run.noise))
    parts.append(f"<details><summary>Resolved config</summary><pre>{esc(run.config_text)}</pre></details>")
    parts.append(f"<details><summary>Versions and commit (meta.json)</summary>{_meta_table(run)}</details>")
    return "".join(parts)
