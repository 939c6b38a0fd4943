"""One self-contained HTML report of a study (figures as data URIs; no external files).

``write_report(run_dirs, out_dir)`` writes ``out_dir/index.html`` plus the figures as PNG and
SVG files under ``out_dir/figures/``, built in a staging folder and moved in (:mod:`dsd2.outdir`):
files an earlier report did not write (``.dsd2-report.json`` lists what it wrote) are never replaced. Every string that comes from a config, a file name or a CSV cell goes
through :func:`esc` (``html.escape``, quotes included).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dsd2 import outdir, rundir, store
from dsd2.errors import UserError
from dsd2.report import figures as F
from dsd2.report.data import RunData, RunGroup, group_runs, load_runs, teacher_of

PERCENT_COLUMNS = rundir.FRACTION_COLUMNS

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0 1em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}td.t,th.t{text-align:left;white-space:normal}
td.t{overflow-wrap:break-word;min-width:5em}td.w{white-space:normal}
tr.sel td{background:#fff7d6}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;font-size:.8em;overflow-x:auto}
.note{color:#666;font-size:.85em}.err{color:#a00}
.phase-light{background:#deebf7}.phase-critical{background:#fde0dd}.phase-sweet{background:#e5f5e0}.phase-collapsed{background:#eeeeee}.phase-undetermined{background:#fafafa;font-style:italic}
details{margin:.4em 0}summary{cursor:pointer}
"""

# Marks the page when every image decoded (headless browsers and tests read it off the DOM).
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.dataset.imagesOk = ok + "/" + imgs.length;
  // tables wider than the page (they scroll sideways): the classes, for tests and headless checks
  var wide = [], boxes = document.querySelectorAll("div.scroll");
  for (var j = 0; j < boxes.length; j++) {
    if (boxes[j].scrollWidth > boxes[j].clientWidth + 1) { wide.push(boxes[j].firstChild.className || "?"); }
  }
  document.body.dataset.wideTables = wide.join(" ");
});
"""


def esc(value: Any) -> str:
    """HTML-escape anything (``None`` becomes an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _fmt_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if key in PERCENT_COLUMNS:
            return F.format_sparsity(value) if key == "sparsity" else f"{100 * value:.2f}"
        if key == "entropy" or key.startswith("entropy"):
            return f"{value:.4f}"
        if "pflops" in key:
            return f"{value:.4g}"
        if math.isfinite(value) and abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    cls: str = "",
    text_cols: Iterable[int] = (),
    wrap_cols: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; ``text_cols`` are left-aligned and wrap at spaces, ``_`` and ``-`` (a
    single longer word only where nothing else fits), ``wrap_cols`` (numbers) wrap at spaces;
    other cells keep on one line."""
    tcols = set(text_cols)
    wcols = set(wrap_cols) - tcols
    out = [f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>']
    out += [f'<th class="{"t" if i in tcols else ""}">{esc(h)}</th>' for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for ri, row in enumerate(rows):
        rc = row_classes[ri] if row_classes is not None and ri < len(row_classes) else ""
        out.append(f'<tr class="{esc(rc)}">')
        out += [
            f'<td class="{"t" if i in tcols else "w" if i in wcols else ""}">{_breakable(c) if i in tcols else esc(c)}</td>'
            for i, c in enumerate(row)
        ]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _breakable(text: Any) -> str:
    """``text`` escaped, with a line-break opportunity after each ``_`` and ``-``: a long run name
    wraps between its parts (demo_fmnist_seed-0-…), not in the middle of a word."""
    return esc(text).replace("_", "_<wbr>").replace("-", "-<wbr>")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def _get(d: Any, *keys: str) -> Any:
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
    kind, rate = _get(run.config, "noise", "kind"), _get(run.config, "noise", "rate")
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


def _same_model(a: RunData, b: RunData) -> bool:
    return _get(a.config, "model") == _get(b.config, "model")


def _pairs(runs: Sequence[RunData]) -> list[tuple[RunData, RunData | None, str]]:
    """(vanilla, student or None, note) pairs for the strategy tables; a student is compared with a
    vanilla run of its own architecture (its teacher when they share it)."""
    students = [r for r in runs if r.is_student]
    others = [r for r in runs if not r.is_student]
    pairs: list[tuple[RunData, RunData | None, str]] = []
    for st in students:
        t = teacher_of(st, runs)
        same = [o for o in others if _same_model(o, st)]
        if t is not None and _same_model(t, st):
            pairs.append((t, st, "the student's own teacher run"))
        elif same:
            pairs.append((same[0], st, "a vanilla run of the student's architecture"))
        elif others:
            pairs.append((others[0], None, f"no vanilla run of {st.title}'s architecture among the inputs: vanilla strategies only"))
    if not students and others:
        pairs.append((others[0], None, "no DSD² student among the inputs: vanilla strategies only"))
    return pairs


def _strategy_section(runs: Sequence[RunData], fig_dir: Path, written: list[Path]) -> tuple[str, list[str]]:
    """HTML of the strategy tables and compute figures; also returns the figure HTML blocks."""
    from dsd2 import compare

    pairs = _pairs(runs)
    parts: list[str] = []
    figs: list[str] = []
    if not pairs:
        return '<p class="note">No vanilla run among the inputs: no strategy comparison.</p>', figs
    for k, (v, s, note) in enumerate(pairs, start=1):
        head = f"vanilla {v.title} (seed {v.seed})" + (f" vs DSD² student {s.title} (seed {s.seed})" if s else "")
        parts.append(
            f'<h3>{esc(head)}</h3><p class="note">{esc(note)}. Vanilla: <code>{esc(v.path)}</code>'
            + (f"; student: <code>{esc(s.path)}</code>" if s else "")
            + "</p>"
        )
        try:
            outcomes = compare.strategy_table(v.path, s.path if s else None)
            compressed = compare.strategy_table(v.path, s.path if s else None, **compare.COMPRESS_RULE)
        except UserError as err:
            parts.append(f'<p class="err">Strategy table unavailable: {esc(err)}</p>')
            continue
        unit = v.rows[0].get("round_pflops_dense")
        for caption, rows in (
            ("Early stop as in the paper: tolerance 0, keep the best round trained.", outcomes),
            (f"Early stop keeping the sparsest good model ({compare.rule_text(compare.COMPRESS_RULE)}).", compressed),
        ):
            parts.append(f'<p class="note">{esc(caption)}</p>' + _strategy_table(rows))
        unit_text = esc(_fmt_cell("pflops", unit))
        parts.append(f'<p class="note">1 unit = one dense training run of the vanilla model (its round 0) = {unit_text} PFLOPs.</p>')
        fig = F.compute_figure(v, s, outcomes, compressed)  # both stop settings, as the two tables above
        stem = "compute" if k == 1 else f"compute_{k}"
        figs.append(
            figure_block(fig, fig_dir, stem, f"Accuracy vs training compute (units; measured PFLOPs on the top axis) — {head}", written)
        )
    return "".join(parts), figs


def _strategy_table(outcomes: Sequence[Any]) -> str:
    return html_table(
        [
            "strategy",
            "selected round",
            "trained until",
            "sparsity %",
            "selection acc %",
            "test acc %",
            "phase",
            "PFLOPs measured",
            "PFLOPs sparse-aware",
            "PFLOPs paper conv.",
            "units",
            "note",
        ],
        [
            [
                o.strategy,
                o.selected_round,
                o.trained_until,
                F.format_sparsity(o.sparsity),
                f"{100 * o.selection_acc:.2f}",
                f"{100 * o.test_acc:.2f}",
                o.phase or "",
                f"{o.pflops_dense:.4g}",
                f"{o.pflops_sparse:.4g}",
                "" if o.pflops_paper is None else f"{o.pflops_paper:.4g}",
                f"{o.units:.2f}",
                o.note,
            ]
            for o in outcomes
        ],
        cls="strategy",
        text_cols=(0, 6, 10),
    )


# Who hears of each figure as it is written (`dsd2 report` prints a line each: a report of many
# runs takes a minute); set with report_status().
_STATUS: ContextVar[Callable[[str], None] | None] = ContextVar("dsd2_report_status", default=None)


@contextmanager
def report_status(say: Callable[[str], None] | None) -> Iterator[None]:
    """Within the block, ``say(line)`` is called once per figure written (None: silent)."""
    token = _STATUS.set(say)
    try:
        yield
    finally:
        _STATUS.reset(token)


def figure_block(fig: Any, fig_dir: Path, stem: str, caption: str, written: list[Path]) -> str:
    paths = F.save_figure(fig, fig_dir, stem)
    written.extend(paths.values())
    say = _STATUS.get()
    if say is not None:
        say(f"figure {stem}: {caption}")
    png = paths["png"].read_bytes()
    links = " · ".join(f'<a href="figures/{esc(p.name)}">{esc(fmt.upper())}</a>' for fmt, p in paths.items())
    fig.clear()
    return f"<figure>{_img(png, caption)}<figcaption>{esc(caption)} ({links})</figcaption></figure>"


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


def _summary(runs: Sequence[RunData], groups: Sequence[RunGroup]) -> str:
    datasets = sorted({str(_get(r.config, "dataset", "name")) for r in runs})
    models = sorted({_model_text(r) for r in runs})
    noises = sorted({_noise_text(r) for r in runs})
    lines = [
        f"<li>{len(runs)} run(s) in {len(groups)} group(s) (runs differing only by seed form a group).</li>",
        f"<li>Dataset: {esc(', '.join(datasets))}; label noise: {esc('; '.join(noises))}.</li>",
        f"<li>Models: {esc('; '.join(models))}.</li>",
    ]
    p = {(_get(r.config, "prune", "method"), _get(r.config, "prune", "rate"), _get(r.config, "prune", "retrain")) for r in runs}
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
    out = ["<ul>", *lines, "</ul>"]
    rows = []
    for r in runs:
        col, best = _best_round(r)
        br = r.rows[best]
        teacher = ""
        if r.teacher:
            teacher = f"{Path(str(r.teacher.get('run_dir', '?'))).name} round {r.teacher.get('round')} ({r.teacher.get('choice')})"
        last = r.rows[-1]
        rows.append(
            [
                r.label,
                r.path.name,
                _model_text(r),
                f"{_get(r.config, 'dataset', 'name')}; noise {_noise_text(r)}",
                len(r.rows),
                F.format_sparsity(last["sparsity"]),
                f"{100 * br['test_acc']:.2f}" if br.get("test_acc") is not None else "",
                f"{best} ({F.format_sparsity(br['sparsity'])}%, on {col})",
                teacher,
                _fmt_cell("pflops", last.get("train_pflops_dense")),
                _wall_time(r),
            ]
        )
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


def _selection_table(runs: Sequence[RunData]) -> str:
    """Per run: the best round, what the plain and entropy early-stop rules select, and costs."""
    from dsd2 import compare

    rows = []
    for r in runs:
        col, best = _best_round(r)
        cells: list[Any] = [
            r.label,
            col,
            best,
            F.format_sparsity(r.rows[best]["sparsity"]),
            _fmt_cell(col, r.rows[best].get(col)),
            _fmt_cell("test_acc", r.rows[best].get("test_acc")),
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
                f"round {d.selected_round} ({F.format_sparsity(sel['sparsity'])}%, test {_fmt_cell('test_acc', sel.get('test_acc'))}%), "
                f"{stop}, {_fmt_cell('pflops', cost)} PFLOPs"
            )
        if r.early_stop:
            es = r.early_stop
            cells.append(f"{es.get('rule')}: stop {es.get('stop_round')}, selected {es.get('selected_round')}")
        else:
            cells.append("")
        cells.append(_fmt_cell("pflops", r.rows[-1].get("train_pflops_dense")))
        cells.append(_fmt_cell("pflops", r.rows[-1].get("train_pflops_sparse")))
        rows.append(cells)
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


def _rounds_table(run: RunData) -> str:
    cols = run.columns or list(run.rows[0].keys())
    classes = [f"phase-{r.get('phase')}" if r.get("phase") else "" for r in run.rows]
    headers = [c + (" %" if c in PERCENT_COLUMNS else "") for c in cols]
    return html_table(
        headers,
        [[_fmt_cell(c, row.get(c)) for c in cols] for row in run.rows],
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
    keys = ["dsd2", "git_commit", "python", "torch", "torchvision", "numpy", "platform", "created", "seed"]
    meta = run.meta
    rows = [[k, meta.get(k)] for k in keys if k in meta]
    rows += [[k, v] for k, v in sorted(meta.items()) if k not in keys]
    if not rows:
        return '<p class="note">No meta.json.</p>'
    return html_table(["key", "value"], rows, cls="meta", text_cols=(0, 1))


def _run_section(i: int, run: RunData) -> str:
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
    if run.noise:
        parts.append(_noise_block(run.noise))
    parts.append(f"<details><summary>Resolved config</summary><pre>{esc(run.config_text)}</pre></details>")
    parts.append(f"<details><summary>Versions and commit (meta.json)</summary>{_meta_table(run)}</details>")
    return "".join(parts)


# The phase definitions of docs/phases.md, in short, so that a reader of a report sent by mail has them.
_PHASE_DEFINITIONS = (
    '<details id="phases" open><summary><b>Phases</b>: how each round is labelled (docs/phases.md in the dsd2 repository)</summary>'
    "<ul>"
    '<li><span class="phase-light">light</span>: leading rounds within the accuracy tolerance of the best so far, '
    "before memorisation of the flipped samples starts to break.</li>"
    '<li><span class="phase-critical">critical</span>: the net still memorises the noise and held-out accuracy has fallen; '
    "ends at the accuracy trough of the memorisation break.</li>"
    '<li><span class="phase-sweet">sweet</span>: memorisation broken, clean fit kept, held-out accuracy recovered '
    "(the Sweet peak may stay below the dense net).</li>"
    '<li><span class="phase-collapsed">collapsed</span>: the last rounds after the Sweet peak that never come back within the '
    "tolerance and lost the clean fit; also every round after a memorisation break that brings no recovery (no double descent).</li>"
    '<li><span class="phase-undetermined">undetermined</span>: an unfinished curve cannot decide it yet.</li>'
    '</ul><p class="note">Tolerance: twice the binomial standard error of the validation accuracy, at least 1 point. '
    "Without a memorisation signal (no known flipped samples, or a net that never memorised: a DSD² student) the labels "
    "come from the accuracy curve alone; a run with a memorisation probe (noise.probe) and no other known flipped samples "
    "reads memorisation off the probe.</p></details>"
)


def build_report(
    runs: Sequence[RunData], out_dir: Path, *, title: str | None = None, extra_sections: Sequence[tuple[str, str]] = ()
) -> tuple[str, list[Path]]:
    """The HTML text of the report; figure files are written under ``out_dir/figures``.

    ``extra_sections``: (heading, trusted HTML) pairs placed after the summary (the sweep report's
    analysis); their HTML must already be escaped.
    """
    groups = group_runs(runs)
    fig_dir = out_dir / "figures"
    written: list[Path] = []
    figs = _curve_figures(runs, groups, fig_dir, written)
    strat_html, compute_figs = _strategy_section(runs, fig_dir, written)
    figs.extend(compute_figs)
    title = title or "DSD² study: " + ", ".join(sorted({r.name for r in runs}))
    toc = "".join(f'<li><a href="#run-{i}">{esc(r.label)}</a></li>' for i, r in enumerate(runs))
    body = [
        *_heading(title, runs),
        "<h2>Figures</h2>",
        *figs,
        _PHASE_DEFINITIONS,
        "<h2>Summary</h2>",
        _summary(runs, groups),
        *[f"<h2>{esc(heading)}</h2>{html}" for heading, html in extra_sections],
        "<h2>Strategies: selected rounds and costs (Figure 1, right)</h2>",
        strat_html,
        "<h3>Selection per run</h3>",
        _selection_table(runs),
        "<h2>Runs</h2>",
        f"<ul>{toc}</ul>",
        *[_run_section(i, r) for i, r in enumerate(runs)],
    ]
    return _page(title, body), written


def _curve_figures(runs: Sequence[RunData], groups: Sequence[RunGroup], fig_dir: Path, written: list[Path]) -> list[str]:
    """The figure blocks of the curves vs sparsity: accuracy, memorisation (when measured), entropy
    (when measured); their files are appended to ``written``."""
    figs = [
        figure_block(
            F.accuracy_figure(groups),
            fig_dir,
            "accuracy",
            "Test (solid) and validation (dashed) accuracy vs sparsity; background: phases of the vanilla run (definitions below)",
            written,
        )
    ]
    if any(r.has("train_acc_noisy") or r.has("train_acc_flipped") or r.has("train_acc_probe") for r in runs):
        figs.append(
            figure_block(
                F.memorisation_figure(groups),
                fig_dir,
                "memorisation",
                "Train accuracy on the noisy labels and on the flipped or memorisation-probe samples (memorisation) vs sparsity",
                written,
            )
        )
    ent = F.entropy_figure(groups)
    if ent is not None:
        figs.append(figure_block(ent, fig_dir, "entropy", "Activation entropy vs sparsity: mean and per layer", written))
    return figs


def _heading(title: str, runs: Sequence[RunData]) -> list[str]:
    """The title and the note saying when and by which version the report was made, and its units."""
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return [
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">Generated {esc(created)} by dsd2 {esc(runs[0].meta.get("dsd2", ""))}. '
        "Accuracies in %, sparsity = fraction of pruned prunable weights, costs in training PFLOPs "
        "(measured: FlopCounterMode, 2 FLOPs per multiply-add, exact backward, sparsity not credited; sparse-aware and "
        "the paper's convention, 3 × forward MACs × images × epochs, alongside in the strategy table).</p>",
    ]


def _page(title: str, body: list[str]) -> str:
    """The self-contained HTML page (styles and script inline) around ``body``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, title: str | None = None) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/figures/*.png|svg``; return the HTML path."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UserError("no run directories given: pass one or more dsd2 run directories to report on")
    runs = load_runs(run_dirs)
    return publish_report(Path(out_dir), lambda tmp: build_report(runs, tmp, title=title)[0])


# What a report wrote into its folder (relative path -> sha256): what a later report may replace.
REPORT_LISTING = ".dsd2-report.json"
_WHY_TAKEN = "move it away or give another -o (a report replaces only the files of an earlier dsd2 report)"


def _report_name(name: str) -> bool:
    """The names a report writes: index.html and figures/<stem>.<png|svg|pdf>."""
    if name == "index.html":
        return True
    folder, _, leaf = name.partition("/")
    return folder == "figures" and "/" not in leaf and not leaf.startswith(".") and leaf.endswith((".png", ".svg", ".pdf"))


def _earlier_report(out: Path) -> set[str]:
    """The files of an earlier report in ``out`` that still match its listing (the listing included)."""
    path = out / REPORT_LISTING
    if not outdir.regular_file(path) or path.stat().st_size > 16 << 20:
        return set()
    try:
        listing = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return set()
    files = listing.get("files") if isinstance(listing, dict) and listing.get("format") == "dsd2-report" else None
    if not isinstance(files, dict):
        return set()
    return outdir.owned(out, files, _report_name) | {REPORT_LISTING}


def publish_report(out: Path, page_for: Callable[[Path], str], *, chosen: bool = True) -> Path:
    """Build the report in a staging folder (``page_for(folder)`` writes the figures there and
    returns the HTML), then move it into ``out``: a file there that an earlier report did not
    write (index.html, figures/*) is never replaced; everything else in ``out`` stays.
    ``chosen``: ``out`` was given with ``-o`` (else, a sweep's own ``<sweep>/report``, the refusals
    do not offer a flag the command lacks)."""
    outdir.check_target(out, "-o" if chosen else "the report folder")
    ours = _earlier_report(out) if out.is_dir() else set()
    index = out / "index.html"
    elsewhere = f"move {out} away or give another -o" if chosen else f"move {out} away (the sweep writes its report there)"
    if os.path.lexists(index) and not os.path.lexists(out / REPORT_LISTING):  # say why, not "not dsd2's"
        raise UserError(
            f"{index} is listed by no {REPORT_LISTING} (a report made before dsd2 listed its files, or a page of "
            f"your own): a report replaces only files it listed; {elsewhere}"
        )
    why = _WHY_TAKEN if chosen else f"{elsewhere}; a report replaces only the files of an earlier dsd2 report"
    outdir.refuse_taken(out, ["index.html", REPORT_LISTING], ours, why)  # before the figures are drawn
    with outdir.staging(out, "choose a writable -o" if chosen else f"make {out.parent} writable") as tmp:
        F.write_public(tmp / "index.html", page_for(tmp).encode("utf-8"))
        files = outdir.files_under(tmp)
        store.write_json(tmp / REPORT_LISTING, {"format": "dsd2-report", "files": {n: store.sha256_file(tmp / n) for n in files}})
        outdir.publish(tmp, out, ours, listing=REPORT_LISTING, why=why)
    return out / "index.html"
