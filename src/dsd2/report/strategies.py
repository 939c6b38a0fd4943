"""The report's strategy comparison: vanilla vs DSD² student pairs, their strategy tables under
both early-stop settings, and the compute figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsd2.errors import UserError
from dsd2.report import figures as F
from dsd2.report.data import RunData, teacher_of
from dsd2.report.markup import esc, figure_block, fmt_cell, html_table
from dsd2.report.tables import config_value


def _same_model(a: RunData, b: RunData) -> bool:
    return config_value(a.config, "model") == config_value(b.config, "model")


def _pairs(runs: Sequence[RunData]) -> list[tuple[RunData, RunData | None, str]]:
    """(vanilla, student or None, note) pairs for the strategy tables; a student is compared with a
    vanilla run of its own architecture (its teacher when they share it)."""
    from dsd2.compare import other_task

    students = [r for r in runs if r.is_student]
    others = [r for r in runs if not r.is_student]
    pairs: list[tuple[RunData, RunData | None, str]] = []
    for st in students:
        t = teacher_of(st, runs)
        # the same architecture and the same task (samples, noisy labels): another seed's vanilla is not a baseline
        same = [o for o in others if _same_model(o, st) and other_task(o.path, st.path) is None]
        if t is not None and _same_model(t, st):
            pairs.append((t, st, "the student's own teacher run"))
        elif same:
            pairs.append((same[0], st, "a vanilla run of the student's architecture"))
        elif others:
            pairs.append(
                (others[0], None, f"no vanilla run of {st.title}'s architecture and data among the inputs: vanilla strategies only")
            )
    if not students and others:
        pairs.append((others[0], None, "no DSD² student among the inputs: vanilla strategies only"))
    return pairs


def strategy_section(runs: Sequence[RunData], fig_dir: Path, written: list[Path]) -> tuple[str, list[str]]:
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
        unit_text = esc(fmt_cell("pflops", unit))
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
