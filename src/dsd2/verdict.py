"""The demo's conclusion in plain words, read off its run tables (numbers only, no torch).

The demo prints hundreds of table lines; a first reader needs what they show: whether vanilla
IMP went through sparse double descent (the dip and its recovery), where its valley lies,
whether the DSD² student has one, and what each early-stop rule picked and cost at both stop
settings (tolerance 0, and 3 points keeping the sparsest good round). :func:`verdict` is a pure
function of the rounds tables and the strategy outcomes; :func:`verdict_for_runs` reads them
from run directories.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dsd2 import compare
from dsd2.compare import Outcome, Rows
from dsd2.phases import PhaseParams

# A recovered dip shallower than this (1 point of selection accuracy) is read as noise, not a
# valley: a few hundred validation samples move the accuracy by about that much.
MIN_DIP = 0.01

# The strategy outcomes' names that are picks of an early-stop rule (not the exhaustive reference).
EXHAUSTIVE = "vanilla, exhaustive"


@dataclass(frozen=True)
class StudyTables:
    """One seed's tables: the vanilla and student rounds (rounds.csv rows, fractions) and the
    strategy outcomes at the paper's stop setting and at :data:`dsd2.compare.COMPRESS_RULE`."""

    seed: int | None
    vanilla: Rows
    student: Rows | None
    paper: Sequence[Outcome]
    compress: Sequence[Outcome]


@dataclass(frozen=True)
class Valley:
    """A recovered dip of a curve: rounds ``first..last`` lie below both sides; ``depth`` is
    ``min(acc[before], acc[after]) - acc[trough]`` (fractions)."""

    depth: float
    before: int
    trough: int
    after: int
    first: int
    last: int


def valley(rows: Rows, column: str | None = None) -> Valley | None:
    """The deepest recovered dip of ``rows`` (:func:`dsd2.compare.recovered_dip`) with the
    contiguous rounds around its trough that stay below the lower of its two rims; None without one."""
    col = column or compare.selection_column(rows)
    dip = compare.recovered_dip(rows, col)
    if dip.trough is None or dip.before is None or dip.after is None:
        return None
    acc = [float(r[col]) for r in rows]
    rim = min(acc[dip.before], acc[dip.after])
    first = last = dip.trough
    while first - 1 > dip.before and acc[first - 1] < rim:
        first -= 1
    while last + 1 < dip.after and acc[last + 1] < rim:
        last += 1
    return Valley(dip.depth, dip.before, dip.trough, dip.after, first, last)


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _sparse(v: float) -> str:
    return f"{100 * v:.1f} % sparse"


def _seed(t: StudyTables, many: bool) -> str:
    return f"seed {t.seed}: " if many and t.seed is not None else ""


def _span(a: int, b: int) -> str:
    return str(a) if a == b else f"{a}-{b}"


def _span_pct(a: float, b: float) -> str:
    return f"{100 * a:.1f} %" if a == b else f"{100 * a:.1f}-{100 * b:.1f} %"


def _column_name(col: str) -> str:
    return "validation accuracy" if col == "val_acc" else "test accuracy"


def _seen(rows: Rows | None, min_dip: float) -> Valley | None:
    v = valley(rows) if rows else None
    return v if v is not None and v.depth >= min_dip else None


def _noise_note(rows: Rows, depth: float) -> str:
    """A caveat for a valley no deeper than its accuracies' noise: the phase labeller reads a rise
    only beyond sqrt(2) x its tolerance for the evaluation set (docs/phases.md), so a shallower
    one is not evidence of a dip on its own (a 2-point valley on 300 samples is noise)."""
    col = compare.selection_column(rows)
    n = compare.eval_size(rows, col)
    if n is None:
        return ""
    floor = math.sqrt(2.0) * PhaseParams.for_eval_set(n, float(rows[0][col])).tol
    if depth >= floor:
        return ""
    return f" This is within the noise of {n} held-out samples (a rise must exceed {100 * floor:.1f} points to count, docs/phases.md)."


def _sdd_text(t: StudyTables, many: bool, min_dip: float) -> str:
    rows, col = t.vanilla, compare.selection_column(t.vanilla)
    v = _seen(rows, min_dip)
    if v is None:
        found = valley(rows, col)
        depth = 0.0 if found is None else found.depth
        return (
            f"{_seed(t, many)}not seen: vanilla IMP's deepest recovered dip is {100 * depth:.2f} points "
            f"(under {100 * min_dip:g}); its best round is {compare.best_round(rows, col)}."
        )
    acc = [float(r[col]) for r in rows]
    s = [float(r["sparsity"]) for r in rows]
    fall, rise = acc[v.before] - acc[v.trough], acc[v.after] - acc[v.trough]
    # the dip's depth is the lower rim's height over the trough: say both sides, and how far short
    # of its start a partial recovery stays, so a small bump on a falling curve is not read as SDD
    short = acc[v.before] - acc[v.after]
    partial = f", {100 * short:.2f} points short of where it fell from" if short > 0 else ""
    return (
        f"{_seed(t, many)}{_column_name(col)} falls {100 * fall:.2f} points, from {_pct(acc[v.before])} "
        f"(round {v.before}, {_sparse(s[v.before])}) to {_pct(acc[v.trough])} (round {v.trough}, {_sparse(s[v.trough])}), "
        f"and recovers {100 * rise:.2f} points to {_pct(acc[v.after])} (round {v.after}, {_sparse(s[v.after])}){partial}. "
        f"Valley: rounds {_span(v.first, v.last)} ({_span_pct(s[v.first], s[v.last])} sparse)." + _noise_note(rows, v.depth)
    )


def _student_text(t: StudyTables, many: bool, min_dip: float) -> str:
    assert t.student is not None
    v = _seen(t.student, min_dip)
    if v is None:
        found = valley(t.student)
        return f"{_seed(t, many)}no valley (deepest recovered dip {0.0 if found is None else 100 * found.depth:.2f} points)."
    s = [float(r["sparsity"]) for r in t.student]
    return (
        f"{_seed(t, many)}a valley of {100 * v.depth:.2f} points at rounds {_span(v.first, v.last)} "
        f"({_span_pct(s[v.first], s[v.last])} sparse)." + _noise_note(t.student, v.depth)
    )


def is_collapsed(o: Outcome) -> bool:
    """Whether a strategy picked a round labelled Collapsed (docs/phases.md)."""
    return (o.phase or "").lower() == "collapsed"


def pick_text(o: Outcome) -> str:
    """One strategy's pick: round, sparsity, test accuracy and cost; a Collapsed pick says so."""
    text = f"round {o.selected_round} ({_sparse(o.sparsity)}), test {_pct(o.test_acc)}, cost {o.units:.2f}"
    if is_collapsed(o):
        text += "; this round is labelled Collapsed, not a recommended pick (docs/phases.md)"
    return text


def _picks(tables: Sequence[StudyTables], which: str, many: bool) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    names = list(dict.fromkeys(o.strategy for t in tables for o in getattr(t, which) if o.strategy != EXHAUSTIVE))
    for name in names:
        lines.append((4, f"{name}:"))
        for t in tables:
            o = next((o for o in getattr(t, which) if o.strategy == name), None)
            if o is not None:
                lines.append((6, f"{_seed(t, many)}{pick_text(o)}."))
    return lines


def _dense_student_note(tables: Sequence[StudyTables]) -> str | None:
    """Why tolerance 0 may keep the dense student, so no reader concludes DSD² does not compress."""
    if not any(o.strategy.startswith("DSD²") and o.selected_round == 0 for t in tables for o in t.paper):
        return None
    return (
        "(At tolerance 0 the student stops at its first round below its best so far; when that is round 1 it keeps "
        "the dense student. The 3-point setting below shows how far the student compresses.)"
    )


def verdict(
    tables: Sequence[StudyTables],
    report: str | Path | None = None,
    *,
    min_dip: float = MIN_DIP,
    width: int = 80,
    heading: str = "What the demo found",
) -> str:
    """The plain-language verdict of a demo (or any vanilla + DSD² study) from its tables,
    wrapped to ``width`` columns."""
    if not tables:
        return f"{heading}: no finished study to read."
    many = len(tables) > 1
    col = compare.selection_column(tables[0].vanilla)
    out: list[tuple[int, str]] = [(0, f"{heading} (rounds selected on {_column_name(col)}):")]
    seen = sum(_seen(t.vanilla, min_dip) is not None for t in tables)
    out.append((0, f"* Sparse double descent in vanilla IMP: seen in {seen} of {len(tables)} seed(s)."))
    out += [(2, _sdd_text(t, many, min_dip)) for t in tables]
    students = [t for t in tables if t.student is not None]
    if students:
        with_valley = sum(_seen(t.student, min_dip) is not None for t in students)
        out.append((0, f"* The DSD² student: a valley of {100 * min_dip:g} point(s) or more in {with_valley} of {len(students)} seed(s)."))
        out += [(2, _student_text(t, many, min_dip)) for t in students]
    out.append((0, "* What each strategy picked (test accuracy; cost in dense training runs of the vanilla model):"))
    exhaustive = [(4, f"{_seed(t, many)}{pick_text(o)}.") for t in tables for o in t.paper if o.strategy == EXHAUSTIVE]
    if exhaustive:
        out += [(2, "exhaustive vanilla IMP (every round trained, the best kept):"), *exhaustive]
    out.append((2, "early stop at tolerance 0, keeping the best round (the paper's setting):"))
    out += _picks(tables, "paper", many)
    note = _dense_student_note(tables)
    if note:
        out.append((4, note))
    rule = compare.COMPRESS_RULE
    out.append((2, f"early stop at tolerance {100 * rule['tolerance']:g} points, keeping the sparsest good round:"))
    out += _picks(tables, "compress", many)
    if report is not None:
        out.append((0, f"* Report (figures, every table): {report}"))
    return "\n".join(_wrap(text, indent, width) for indent, text in out)


def _wrap(text: str, indent: int, width: int) -> str:
    # paths are not broken: a path longer than the line stays whole on its own line
    return textwrap.fill(
        text, width=width, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2), break_long_words=False, break_on_hyphens=False
    )


def tables_for_runs(vanilla_dir: str | Path, student_dir: str | Path | None, seed: int | None = None) -> StudyTables:
    """A study's tables, read from its run directories (as ``dsd2 compare`` reads them)."""
    paper = compare.strategy_table(vanilla_dir, student_dir)
    compress = compare.strategy_table(vanilla_dir, student_dir, **compare.COMPRESS_RULE)
    student = compare.load_rows(student_dir) if student_dir is not None else None
    return StudyTables(seed, compare.load_rows(vanilla_dir), student, paper, compress)


def verdict_for_runs(
    pairs: Sequence[tuple[str | Path, str | Path | None]],
    report: str | Path | None = None,
    seeds: Sequence[int | None] | None = None,
    heading: str = "What the demo found",
) -> str:
    """:func:`verdict` of (vanilla, student) run directory pairs, one per seed."""
    from dsd2 import rundir

    seeds = list(seeds) if seeds is not None else [rundir.read_config(v).seed for v, _ in pairs]
    return verdict([tables_for_runs(v, s, seed) for (v, s), seed in zip(pairs, seeds)], report, heading=heading)
