"""Curve banks: judge phase labels and stop rules on many measured IMP curves, not one.

A bank is a folder of curves, one sub-folder per curve holding the ``rounds.csv`` of a dsd2 run
(tests/data/curves/ is the one shipped with the tests). A curve's *setting* is its name without
the seed suffix (``…_s0``): seeds of one setting are never split between fitting and checking.

:func:`evaluate` applies one stop rule to one curve and says what it costs and loses against
training every round; :func:`leave_one_setting_out` chooses every free choice of the entropy rule
(its ``rel_drop`` threshold and whether a drop counts only while the accuracy still falls) on all
settings but one and checks the choice on the one left out (docs/stop_rules.md).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsd2 import store
from dsd2.compare import Rows, best_round, decide, phase_labels, selection_column
from dsd2.errors import UserError

# Candidate thresholds for the entropy rule: a relative fall of the network entropy from its
# running maximum, from "any wobble" to "more than half gone".
REL_DROP_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# The entropy rule's free choices, fitted together: (rel_drop, falling). ``falling``: a drop
# counts only while the accuracy still falls (by more than the noise of two measurements).
RULE_GRID: tuple[tuple[float, bool], ...] = tuple((r, f) for f in (False, True) for r in REL_DROP_GRID)
# A selection within this many test-accuracy points of training every round counts as a success.
OK_GAP = 1.0


@dataclass
class Curve:
    name: str
    rows: Rows

    @property
    def setting(self) -> str:
        """The name without its run hash and seed: seeds of one setting stay together."""
        return re.sub(r"_s\d+(?=$|_)", "", re.sub(r"-[0-9a-f]{10}$", "", self.name))


def load_bank(root: str | Path) -> list[Curve]:
    """Every ``<root>/<name>/rounds.csv``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"curve bank {root} is not a folder of run results")
    curves = [Curve(p.parent.name, _curve_rows(p)) for p in sorted(root.glob("*/rounds.csv"))]
    if not curves:
        raise UserError(f"curve bank {root} holds no <curve>/rounds.csv")
    return curves


def _curve_rows(path: Path) -> Rows:
    """The rows of a bank curve, each checked as a rounds.csv row (required columns, numbers
    dsd2 can have written, rounds 0, 1, 2, ...); the plain rows are what the rules read."""
    from dsd2.rundir import RoundRow, check_round_order

    rows = store.read_csv(path)
    if not rows:
        raise UserError(f"{path} has no rows: a bank curve needs the rounds of a finished run")
    check_round_order([RoundRow.from_dict(r, source=path) for r in rows], path)
    return rows


@dataclass
class RuleOutcome:
    curve: str
    rule: str
    selected_round: int
    trained_until: int
    sparsity: float
    test_acc: float
    gap: float  # test-accuracy points below the round exhaustive selection keeps
    val_gap: float  # validation points below the curve's best
    rounds_short: int  # rounds less pruned than the sparsest round within the tolerance of the best
    cost: float  # training cost as a fraction of training every round
    ok: bool  # success for this rule's goal (see :func:`evaluate`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(curve: Curve, rule: str, **params: Any) -> RuleOutcome:
    """Outcome of ``rule`` on a finished curve: "plain", "entropy", "none" (exhaustive: train
    every round, keep the best on validation), "never" (a rule that never fires: every round
    trained, the setting's ``select`` over all of them) or "oracle" (knows the whole curve: trains
    up to the round this setting's goal wants and keeps it; the cheapest success possible).

    Success depends on what the rule is for. ``select="best"`` (the paper's early stop) succeeds
    when its model is within OK_GAP test points of the exhaustive choice. ``select="last_good"``
    with a tolerance (compression) succeeds when its model is within the tolerance of the
    curve's best validation accuracy and at most one round less pruned than the sparsest such
    round that the phase labeller does not call Collapsed (the compression an exhaustive search
    would give; :func:`dsd2.compare.decide` never keeps a Collapsed round).
    """
    rows = curve.rows
    col = selection_column(rows)
    tol = float(params.get("tolerance", 0.0))
    top = max(r[col] for r in rows)
    compress = params.get("select", "best") == "last_good" and tol > 0
    # the sparsest round within the tolerance of the best that the labeller does not call Collapsed
    labels = phase_labels(rows) if compress else [""] * len(rows)
    oracle = max(i for i, r in enumerate(rows) if r[col] >= top - tol and labels[i] != "collapsed")
    if rule == "oracle":
        sel = trained = oracle if compress else best_round(rows, col)
    else:
        if rule == "never":  # no round can complete a streak longer than the curve
            decision = decide(rows, "plain", **{**params, "patience": len(rows) + 1})
        else:
            decision = decide(rows, rule, **params) if rule != "none" else None
        if decision is None:
            sel, trained = best_round(rows), len(rows) - 1
        else:
            assert decision.selected_round is not None  # only a curve without rounds selects none
            sel = decision.selected_round
            trained = decision.stop_round if decision.stop_round is not None else len(rows) - 1
    ref = rows[best_round(rows, col)]
    total = rows[-1]["train_pflops_dense"]
    gap = 100.0 * (ref["test_acc"] - rows[sel]["test_acc"])
    val_gap = 100.0 * (top - rows[sel][col])
    short = oracle - int(sel)
    if compress:
        ok = val_gap <= 100.0 * tol + 1e-9 and short <= 1
    else:
        ok = gap <= OK_GAP
    return RuleOutcome(
        curve=curve.name,
        rule=rule,
        selected_round=int(sel),
        trained_until=int(trained),
        sparsity=rows[sel]["sparsity"],
        test_acc=rows[sel]["test_acc"],
        gap=gap,
        val_gap=val_gap,
        rounds_short=short,
        cost=rows[trained]["train_pflops_dense"] / total if total else 1.0,
        ok=ok,
    )


def score(outcomes: list[RuleOutcome]) -> tuple[int, float]:
    """(successes, −mean cost): larger is better, compared in that order."""
    return sum(o.ok for o in outcomes), -sum(o.cost for o in outcomes) / len(outcomes)


def fit_rule(curves: list[Curve], grid: tuple[tuple[float, bool], ...] = RULE_GRID, **rule: Any) -> dict[str, Any]:
    """The entropy rule's choices (``rel_drop``, ``falling``) with the best :func:`score` on
    ``curves``; ties → the smaller threshold, then without the falling condition (the rule closest
    to plain stopping)."""
    r, f = max(
        grid, key=lambda rf: (score([evaluate(c, "entropy", rel_drop=rf[0], falling=rf[1], **rule) for c in curves]), -rf[0], not rf[1])
    )
    return {"rel_drop": r, "falling": f}


def fit_default_rule(curves: list[Curve], grid: tuple[tuple[float, bool], ...] = RULE_GRID) -> dict[str, Any]:
    """The one choice a run uses (``ENTROPY_RULE_DEFAULTS``) serves both :data:`SETTINGS`: the most
    successes over both goals together, then the lowest mean cost, then the smaller threshold, then
    without the falling condition. Fitted per goal, the cheap ``paper`` optimum sits next to
    thresholds that fail."""

    def both(rf: tuple[float, bool]) -> tuple[int, float]:
        res = [score([evaluate(c, "entropy", rel_drop=rf[0], falling=rf[1], **rule) for c in curves]) for rule in SETTINGS.values()]
        return sum(ok for ok, _ in res), sum(cost for _, cost in res)

    r, f = max(grid, key=lambda rf: (both(rf), -rf[0], not rf[1]))
    return {"rel_drop": r, "falling": f}


@dataclass
class Fold:
    setting: str
    choice: dict[str, Any]  # the entropy rule's choices, fitted without this setting's curves
    outcomes: list[RuleOutcome]


def split(curves: list[Curve], setting: str) -> tuple[list[Curve], list[Curve]]:
    """(the curves a fold may fit on, the curves it is judged on): a setting's seeds are never split."""
    return [c for c in curves if c.setting != setting], [c for c in curves if c.setting == setting]


def leave_one_setting_out(curves: list[Curve], grid: tuple[tuple[float, bool], ...] = RULE_GRID, **rule: Any) -> list[Fold]:
    """For each setting: fit every choice of the entropy rule on the other settings, evaluate on this one."""
    settings = sorted({c.setting for c in curves})
    if len(settings) < 2:
        raise UserError("leave-one-setting-out needs curves from at least two settings")
    folds = []
    for s in settings:
        train, held = split(curves, s)
        choice = fit_rule(train, grid, **rule)
        folds.append(Fold(s, choice, [evaluate(c, "entropy", **choice, **rule) for c in held]))
    return folds


def sensitivity(curves: list[Curve], grid: tuple[tuple[float, bool], ...] = RULE_GRID, **rule: Any) -> list[dict[str, Any]]:
    """Per choice: successes, mean test gap and mean cost over the whole bank."""
    out = []
    for r, f in grid:
        res = [evaluate(c, "entropy", rel_drop=r, falling=f, **rule) for c in curves]
        out.append(
            {
                "rel_drop": r,
                "falling": f,
                "ok": sum(o.ok for o in res),
                "curves": len(res),
                "mean_gap": sum(o.gap for o in res) / len(res),
                "mean_cost": sum(o.cost for o in res) / len(res),
            }
        )
    return out


# The two settings the report shows: the paper's (tolerance 0, keep the best round trained) and
# the compression one (keep the sparsest round within 3 points of the best so far).
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"tolerance": 0.0, "patience": 1, "select": "best"},
    "compress": {"tolerance": 0.03, "patience": 1, "select": "last_good"},
}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _choice(c: dict[str, Any]) -> str:
    return f"{c['rel_drop']:g}, {'falls' if c['falling'] else 'any'}"


@dataclass
class Judgement:
    """Every rule on every curve of a bank in one setting: what the reports print."""

    whole: dict[str, Any]  # the entropy rule's choices fitted on the whole bank
    fold_choice: dict[str, dict[str, Any]]  # curve -> choices fitted without its setting
    plain: list[RuleOutcome]  # per curve, in bank order
    held: list[RuleOutcome]  # entropy rule with the held-out choices, per curve
    never: list[RuleOutcome]  # a rule that never fires
    oracle: list[RuleOutcome]  # the cheapest success possible
    sensitivity: list[dict[str, Any]]


def judge(curves: list[Curve], rule: dict[str, Any]) -> Judgement:
    """Evaluate every rule on every curve, the entropy rule held out (each fit done once)."""
    folds = {f.setting: f for f in leave_one_setting_out(curves, **rule)}
    return Judgement(
        whole=fit_rule(curves, **rule),
        fold_choice={c.name: folds[c.setting].choice for c in curves},
        plain=[evaluate(c, "plain", **rule) for c in curves],
        held=[next(o for o in folds[c.setting].outcomes if o.curve == c.name) for c in curves],
        never=[evaluate(c, "never", **rule) for c in curves],
        oracle=[evaluate(c, "oracle", **rule) for c in curves],
        sensitivity=sensitivity(curves, **rule),
    )


def _total(outcomes: list[RuleOutcome]) -> str:
    ok, cost = score(outcomes)
    return f"**{ok}/{len(outcomes)}, {-cost:.2f}, {100 * (1 + cost):.0f}%**"


def stop_rule_report(curves: list[Curve]) -> str:
    """Markdown: per curve, what each rule selects and costs (the entropy rule's choices fitted
    leave-one-setting-out), against never stopping and an oracle; then the choices' sensitivity."""
    lines: list[str] = [
        f"Entropy-rule choices a run uses (`ENTROPY_RULE_DEFAULTS`), fitted on the whole bank for both settings together: "
        f"**rel_drop {_choice(fit_default_rule(curves))}** (`falls`: a drop counts only while the accuracy still falls; "
        "`any`: without that condition).",
        "",
    ]
    for key, rule in SETTINGS.items():
        j = judge(curves, rule)
        lines += [
            f"### Setting `{key}`: tolerance {rule['tolerance']:g}, patience {rule['patience']}, select {rule['select']}",
            "",
            f"Choices fitted on the whole bank: **{_choice(j.whole)}**. On each curve the entropy rule uses the choices "
            "fitted on the other settings (`fold`). `never stop`: a rule that never fires (every round trained, this "
            "setting's selection over all of them). `oracle`: knows the whole curve, trains up to the round this "
            "setting's goal wants and stops there (the cheapest success). Cells: selected round (sparsity %), "
            "test-accuracy gap to the exhaustive choice in points, rounds less pruned than the sparsest round within the "
            "tolerance, cost as a fraction of training every round; ✓ = success for this setting's goal. Last row: "
            "successes, mean cost, mean saving over training every round.",
            "",
            "| curve | exhaustive: round (sparsity %), test % | oracle | never stop | plain | fold | entropy (held out) |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, c in enumerate(curves):
            ex = evaluate(c, "none")
            lines.append(
                f"| {c.name} | {ex.selected_round} ({_pct(ex.sparsity)}), {_pct(ex.test_acc)} | {_cell(j.oracle[i])} "
                f"| {_cell(j.never[i])} | {_cell(j.plain[i])} | {_choice(j.fold_choice[c.name])} | {_cell(j.held[i])} |"
            )
        lines.append(
            f"| **successes, mean cost, saving** | | {_total(j.oracle)} | {_total(j.never)} | {_total(j.plain)} | | {_total(j.held)} |"
        )
        lines += [
            "",
            f"Sensitivity of the entropy rule's choices (setting `{key}`, whole bank):",
            "",
            "| rel_drop | drop counts | successes | mean test gap (pt) | mean cost |",
            "|---|---|---|---|---|",
        ]
        for s in j.sensitivity:
            when = "while the accuracy falls" if s["falling"] else "always"
            lines.append(f"| {s['rel_drop']:g} | {when} | {s['ok']}/{s['curves']} | {s['mean_gap']:.2f} | {s['mean_cost']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _cell(o: RuleOutcome) -> str:
    mark = "✓" if o.ok else "✗"
    return f"{mark} {o.selected_round} ({_pct(o.sparsity)}), {o.gap:+.1f}, {o.rounds_short:+d}, {o.cost:.2f}"


def stop_rule_summary(curves: list[Curve]) -> str:
    """Markdown for the README: one row per curve with what each rule keeps in both settings (the
    entropy rule with its held-out choices), the totals with never stopping and the oracle, then
    the choices' sensitivity."""
    judged = {key: judge(curves, rule) for key, rule in SETTINGS.items()}
    results = {f"{k}/{name}": getattr(j, attr) for k, j in judged.items() for name, attr in (("plain", "plain"), ("entropy", "held"))}
    cols = list(results)
    lines = [
        "| curve | best on validation: round (sparsity %), test % | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for i, c in enumerate(curves):
        ex = evaluate(c, "none")
        lines.append(
            f"| {c.name} | {ex.selected_round} ({_pct(ex.sparsity)}), {_pct(ex.test_acc)} | "
            + " | ".join(_short(results[k][i]) for k in cols)
            + " |"
        )
    lines.append("| **successes, mean cost, saving** | | " + " | ".join(_total(results[k]) for k in cols) + " |")
    lines += ["", "| setting | oracle | never stop | plain | entropy (held out) |", "|---|---|---|---|---|"]
    for k, j in judged.items():
        lines.append(f"| {k} | {_total(j.oracle)} | {_total(j.never)} | {_total(j.plain)} | {_total(j.held)} |")
    lines += [
        "",
        "| rel_drop, drop counts | " + " | ".join(f"{k}: successes, mean cost" for k in SETTINGS) + " |",
        "|---|" + "---|" * len(SETTINGS),
    ]
    for i, (r, f) in enumerate(RULE_GRID):
        sens = [judged[k].sensitivity[i] for k in SETTINGS]
        lines.append(
            f"| {_choice({'rel_drop': r, 'falling': f})} | "
            + " | ".join(f"{s['ok']}/{s['curves']}, {s['mean_cost']:.2f}" for s in sens)
            + " |"
        )
    return "\n".join(lines)


def _short(o: RuleOutcome) -> str:
    return f"{'✓' if o.ok else '✗'} {o.selected_round}, {o.gap:+.1f} pt, {o.cost:.2f}"


# Generated sections of markdown files: marker name -> the function that writes its text.
SECTIONS = {"bank": stop_rule_report, "bank-summary": stop_rule_summary}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin (dsd2 stop-rules --write) -->", f"<!-- {name}:end -->"


BEGIN, END = markers("bank")


def section_text(doc: str, name: str) -> str | None:
    """The text between the markers of section ``name`` in ``doc`` (None if absent)."""
    begin, end = markers(name)
    if begin not in doc or end not in doc:
        return None
    return doc.split(begin, 1)[1].split(end, 1)[0].strip()


def write_sections(path: str | Path, curves: list[Curve]) -> list[str]:
    """Regenerate every bank section of a markdown file (atomically); return their names."""
    path = Path(path)
    from dsd2.safe_read import MAX_YAML_BYTES, read_text

    # The page is the user's: rewrite only its sections, in place, never a link (the rename would
    # replace the link, not the page it names) nor a file made read-only; keep its permissions.
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}): give the page itself, --write {path.resolve()}")
    doc = read_text(path, max_bytes=MAX_YAML_BYTES)  # a markdown page: a regular file, not a FIFO
    perms = stat.S_IMODE(path.stat().st_mode)
    if not perms & 0o222:
        raise UserError(f"{path} is read-only: make it writable (chmod u+w {path}) for dsd2 to rewrite its bank sections")
    found = [n for n in SECTIONS if section_text(doc, n) is not None]
    if not found:
        raise UserError(f"{path} has no bank section: add the lines {BEGIN} and {END} where the tables go")
    for name in found:
        begin, end = markers(name)
        head, rest = doc.split(begin, 1)
        if end not in rest:
            raise UserError(f"{path} has {end} before {begin}, not after it: put the end marker below the begin marker")
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{SECTIONS[name](curves)}\n{end}{tail}"
    store.atomic_write_text(path, doc, mode=perms)
    return found
