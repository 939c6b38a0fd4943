"""Curve banks: judge phase labels and stop rules on many measured IMP curves, not one.

A bank is a folder of curves, one sub-folder per curve holding the ``rounds.csv`` of a dsd2 run
(tests/data/curves/ is the one shipped with the tests). A curve's *setting* is its name without
the seed suffix (``…_s0``): seeds of one setting are never split between fitting and checking.

:func:`evaluate` applies one stop rule to one curve and says what it costs and loses against
training every round; :func:`leave_one_setting_out` chooses the entropy rule's ``rel_drop`` on
all settings but one and checks it on the one left out (docs/stop_rules.md).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsd2 import store
from dsd2.compare import best_round, decide, selection_column
from dsd2.errors import UserError

# Candidate thresholds for the entropy rule: a relative fall of the network entropy from its
# running maximum, from "any wobble" to "more than half gone".
REL_DROP_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# A selection within this many test-accuracy points of training every round counts as a success.
OK_GAP = 1.0


@dataclass
class Curve:
    name: str
    rows: list[dict[str, Any]]

    @property
    def setting(self) -> str:
        return re.sub(r"_s\d+(?=$|_)", "", self.name)


def load_bank(root: str | Path) -> list[Curve]:
    """Every ``<root>/<name>/rounds.csv``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"curve bank {root} is not a folder of run results")
    curves = [Curve(p.parent.name, store.read_csv(p)) for p in sorted(root.glob("*/rounds.csv"))]
    if not curves:
        raise UserError(f"curve bank {root} holds no <curve>/rounds.csv")
    return curves


@dataclass
class RuleOutcome:
    curve: str
    rule: str
    selected_round: int
    trained_until: int
    sparsity: float
    test_acc: float
    gap: float  # test-accuracy points below the round exhaustive selection keeps
    cost: float  # training cost as a fraction of training every round

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(curve: Curve, rule: str, **params: Any) -> RuleOutcome:
    """Outcome of ``rule`` ("plain", "entropy" or "none" = exhaustive) on a finished curve."""
    rows = curve.rows
    decision = decide(rows, rule, **params) if rule != "none" else None
    if decision is None:
        sel, trained = best_round(rows), len(rows) - 1
    else:
        sel = decision.selected_round
        trained = decision.stop_round if decision.stop_round is not None else len(rows) - 1
    ref = rows[best_round(rows, selection_column(rows))]
    total = rows[-1]["train_pflops_dense"]
    return RuleOutcome(
        curve=curve.name,
        rule=rule,
        selected_round=int(sel),
        trained_until=int(trained),
        sparsity=rows[sel]["sparsity"],
        test_acc=rows[sel]["test_acc"],
        gap=100.0 * (ref["test_acc"] - rows[sel]["test_acc"]),
        cost=rows[trained]["train_pflops_dense"] / total if total else 1.0,
    )


def score(outcomes: list[RuleOutcome]) -> tuple[int, float]:
    """(curves within OK_GAP points, −mean cost): larger is better, compared in that order."""
    ok = sum(o.gap <= OK_GAP for o in outcomes)
    return ok, -sum(o.cost for o in outcomes) / len(outcomes)


def fit_rel_drop(curves: list[Curve], grid: tuple[float, ...] = REL_DROP_GRID, **rule: Any) -> float:
    """The entropy rule's ``rel_drop`` with the best :func:`score` on ``curves``; ties → the
    smaller threshold (the rule closest to plain stopping)."""
    return max(grid, key=lambda r: (score([evaluate(c, "entropy", rel_drop=r, **rule) for c in curves]), -r))


@dataclass
class Fold:
    setting: str
    rel_drop: float  # fitted without this setting's curves
    outcomes: list[RuleOutcome]


def leave_one_setting_out(curves: list[Curve], grid: tuple[float, ...] = REL_DROP_GRID, **rule: Any) -> list[Fold]:
    """For each setting: fit ``rel_drop`` on the other settings, evaluate on this one."""
    settings = sorted({c.setting for c in curves})
    if len(settings) < 2:
        raise UserError("leave-one-setting-out needs curves from at least two settings")
    folds = []
    for s in settings:
        train = [c for c in curves if c.setting != s]
        held = [c for c in curves if c.setting == s]
        r = fit_rel_drop(train, grid, **rule)
        folds.append(Fold(s, r, [evaluate(c, "entropy", rel_drop=r, **rule) for c in held]))
    return folds


def sensitivity(curves: list[Curve], grid: tuple[float, ...] = REL_DROP_GRID, **rule: Any) -> list[dict[str, Any]]:
    """Per threshold: curves within OK_GAP, mean gap and mean cost over the whole bank."""
    out = []
    for r in grid:
        res = [evaluate(c, "entropy", rel_drop=r, **rule) for c in curves]
        out.append(
            {
                "rel_drop": r,
                "ok": sum(o.gap <= OK_GAP for o in res),
                "curves": len(res),
                "mean_gap": sum(o.gap for o in res) / len(res),
                "mean_cost": sum(o.cost for o in res) / len(res),
            }
        )
    return out
