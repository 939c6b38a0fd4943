"""One self-contained HTML report of a study (figures as data URIs; no external files).

``write_report(run_dirs, out_dir)`` writes ``out_dir/index.html`` plus the figures as PNG and
SVG files under ``out_dir/figures/``, built in a staging folder and moved in (:mod:`dsd2.outdir`):
files an earlier report did not write (``.dsd2-report.json`` lists what it wrote) are never replaced. Every string that comes from a config, a file name or a CSV cell goes
through :func:`esc` (``html.escape``, quotes included).

The page is assembled here from :mod:`~dsd2.report.markup` (escaping, tables, figure blocks),
:mod:`~dsd2.report.tables` (summary, selection, each run), :mod:`~dsd2.report.strategies`
(vanilla vs student strategies) and :mod:`~dsd2.report.publish` (the folder, written safely).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from dsd2.errors import UserError
from dsd2.report import figures as F
from dsd2.report.data import RunData, RunGroup, group_runs, load_runs
from dsd2.report.markup import PERCENT_COLUMNS, esc, figure_block, html_table, report_status
from dsd2.report.publish import REPORT_LISTING, publish_report
from dsd2.report.strategies import strategy_section
from dsd2.report.tables import CONFUSION_MAX_CLASSES, SUMMARY_HEADERS, run_section, selection_table, summary

__all__ = [
    "CONFUSION_MAX_CLASSES",
    "PERCENT_COLUMNS",
    "REPORT_LISTING",
    "SUMMARY_HEADERS",
    "build_report",
    "esc",
    "figure_block",
    "html_table",
    "publish_report",
    "report_status",
    "write_report",
]

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
    strat_html, compute_figs = strategy_section(runs, fig_dir, written)
    figs.extend(compute_figs)
    title = title or "DSD² study: " + ", ".join(sorted({r.name for r in runs}))
    toc = "".join(f'<li><a href="#run-{i}">{esc(r.label)}</a></li>' for i, r in enumerate(runs))
    body = [
        *_heading(title, runs),
        "<h2>Figures</h2>",
        *figs,
        _PHASE_DEFINITIONS,
        "<h2>Summary</h2>",
        summary(runs, groups),
        *[f"<h2>{esc(heading)}</h2>{html}" for heading, html in extra_sections],
        "<h2>Strategies: selected rounds and costs (Figure 1, right)</h2>",
        strat_html,
        "<h3>Selection per run</h3>",
        selection_table(runs),
        "<h2>Runs</h2>",
        f"<ul>{toc}</ul>",
        *[run_section(i, r) for i, r in enumerate(runs)],
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
