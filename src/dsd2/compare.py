"""Model selection and compute summaries from run directories (numbers only, no torch).

``stop_summary`` applies an early-stopping rule to a finished run offline; ``strategy_table``
compares, as in the paper's Figure 1 (right): exhaustive vanilla IMP, vanilla + plain early
stop, vanilla + entropy-aided early stop, and DSD² + early stop.

Costs are cumulative training FLOPs up to the last round a strategy has to train
(docs/protocol.md, "Compute"): ``pflops_dense`` measured by FlopCounterMode (2 FLOPs per
multiply-add, exact backward, teacher forward passes included, sparsity not credited);
``pflops_sparse`` the same with each layer scaled by its weight density; ``pflops_paper`` the
paper's convention (3 × forward MACs × training images × epochs, plus the teacher's forward MACs,
sparsity not credited); ``units``: cost in dense training runs of the vanilla model (its round 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsd2 import rundir, store
from dsd2.errors import UserError
from dsd2.file_schemas import TeacherFile
from dsd2.phases import StopDecision, entropy_early_stop, plain_early_stop
from dsd2.registry import STOP_RULES
from dsd2.rundir import RoundRow

# A curve: rounds in order, each a mapping of column to value (rundir.RoundRow or a CSV dict).
Rows = Sequence[Mapping[str, Any]]

# The entropy rule's parameters, chosen from the measured demo curves (README, "The demo").
ENTROPY_RULE_DEFAULTS: dict[str, Any] = {"rel_drop": 0.1}

# A second stopping setting shown next to the paper's (tolerance 0, keep the best): keep the
# sparsest model within 3 accuracy points of the best so far.
COMPRESS_RULE: dict[str, Any] = {"tolerance": 0.03, "patience": 1, "select": "last_good"}


def rule_text(rule: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in rule.items())


def load_rows(run_dir: str | Path) -> list[RoundRow]:
    path = Path(run_dir) / rundir.ROUNDS_CSV
    if not path.is_file():
        raise UserError(f"{run_dir} is not a dsd2 run directory with finished rounds (no rounds.csv)")
    rows = rundir.read_rounds(run_dir)
    if not rows:
        raise UserError(f"{path} has no finished round yet")
    return rows


def selection_column(rows: Rows) -> str:
    """The column used for model selection: validation accuracy, or test when the run has no val split."""
    return "val_acc" if rows and rows[0].get("val_acc") is not None else "test_acc"


def decide(
    rows: Rows, rule: str, *, tolerance: float = 0.0, patience: int = 1, select: str = "best", **entropy_params: Any
) -> StopDecision | None:
    """The decision of the registered stop rule ``rule`` ("plain", "entropy" or "none", see
    :data:`dsd2.registry.STOP_RULES`) on a run's rows.

    ``select="best"`` returns the most accurate round trained; ``"last_good"`` the sparsest
    round before the drop that stopped pruning (with a tolerance: the most compressed model
    within ``tolerance`` of the best so far).
    """
    stop_rule = STOP_RULES.get(rule)
    col = selection_column(rows)
    acc = [r[col] for r in rows]
    ent = [r.get("entropy") for r in rows]
    return stop_rule(acc, ent, tolerance=tolerance, patience=patience, select=select, **entropy_params)


# The built-in stop rules, registered by name in dsd2.registry.STOP_RULES:
# rule(acc, entropy, *, tolerance, patience, select, **params) -> StopDecision | None (None: no decision).


def no_stop(acc: list[float], entropy: list[float | None], **_: Any) -> None:
    """``none``: no rule, every round is trained."""
    return None


def plain_stop(acc: list[float], entropy: list[float | None], *, tolerance: float, patience: int, select: str, **_: Any) -> StopDecision:
    """``plain``: :func:`dsd2.phases.plain_early_stop` (entropy parameters are ignored)."""
    return plain_early_stop(acc, tolerance=tolerance, patience=patience, select=select)


def entropy_stop(
    acc: list[float], entropy: list[float | None], *, tolerance: float, patience: int, select: str, **params: Any
) -> StopDecision:
    """``entropy``: :func:`dsd2.phases.entropy_early_stop` with :data:`ENTROPY_RULE_DEFAULTS` under ``params``."""
    values = [h for h in entropy if h is not None]
    if len(values) != len(entropy):
        raise UserError("the entropy rule needs the entropy column (run with entropy.enabled=true)")
    return entropy_early_stop(acc, values, tolerance=tolerance, patience=patience, select=select, **{**ENTROPY_RULE_DEFAULTS, **params})


def best_round(rows: Rows, column: str | None = None) -> int:
    """Index of the most accurate round on ``column`` (default: the selection column);
    ties go to the sparser round (more compressed for the same accuracy)."""
    col = column or selection_column(rows)
    return max(range(len(rows)), key=lambda i: (rows[i][col], i))


@dataclass
class Outcome:
    strategy: str
    run: str
    selected_round: int
    trained_until: int
    sparsity: float
    selection_acc: float
    test_acc: float
    phase: str | None
    pflops_dense: float
    pflops_sparse: float
    pflops_paper: float | None
    units: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome(strategy: str, run_dir: str | Path, rows: Rows, decision: StopDecision | None, unit_pflops: float, note: str = "") -> Outcome:
    col = selection_column(rows)
    if decision is None:  # exhaustive: train every round, pick the best on the selection column
        trained = len(rows) - 1
        sel = best_round(rows, col)
    else:
        trained = decision.stop_round if decision.stop_round is not None else len(rows) - 1
        assert decision.selected_round is not None  # only a curve without rounds selects none
        sel = decision.selected_round
    r, last = rows[sel], rows[trained]
    return Outcome(
        strategy=strategy,
        run=str(run_dir),
        selected_round=int(sel),
        trained_until=int(trained),
        sparsity=r["sparsity"],
        selection_acc=r[col],
        test_acc=r["test_acc"],
        phase=r.get("phase"),
        pflops_dense=last["train_pflops_dense"],
        pflops_sparse=last["train_pflops_sparse"],
        pflops_paper=last.get("train_pflops_paper"),
        units=last["train_pflops_dense"] / unit_pflops,
        note=note,
    )


def check_pair(vanilla_dir: str | Path, student_dir: str | Path | None) -> None:
    """Refuse comparisons that mean nothing: swapped arguments, or a vanilla curve of another
    architecture than the student's (the baseline must be the student's own architecture)."""
    if (Path(vanilla_dir) / "teacher.json").is_file():
        raise UserError(f"{vanilla_dir} is a DSD² student run (it has teacher.json): give the vanilla run first, then the student")
    if student_dir is None:
        return
    if not (Path(student_dir) / "teacher.json").is_file():
        raise UserError(f"{student_dir} is not a DSD² student run (no teacher.json): give a vanilla run, then a student run")
    vm, sm = (rundir.read_config(d).model.model_dump() for d in (vanilla_dir, student_dir))
    if vm != sm:
        raise UserError(
            f"the vanilla run trains {vm} but the student is {sm}: the baseline must be a vanilla run of the student's architecture "
            "(`dsd2 pipeline … --student` runs one, named <student>_vanilla)"
        )


def strategy_table(
    vanilla_dir: str | Path,
    student_dir: str | Path | None = None,
    *,
    tolerance: float = 0.0,
    patience: int = 1,
    select: str = "best",
    **entropy_params: Any,
) -> list[Outcome]:
    """Figure 1 (right) of the paper as rows: strategy, selected round, accuracy, cost."""
    check_pair(vanilla_dir, student_dir)
    vrows = load_rows(vanilla_dir)
    unit = vrows[0]["round_pflops_dense"]
    rule: dict[str, Any] = {"tolerance": tolerance, "patience": patience, "select": select}
    out = [
        outcome("vanilla, exhaustive", vanilla_dir, vrows, None, unit, "all rounds, best on " + selection_column(vrows)),
        outcome("vanilla + early stop", vanilla_dir, vrows, decide(vrows, "plain", **rule), unit),
    ]
    if vrows[0].get("entropy") is not None:
        d = decide(vrows, "entropy", **rule, **entropy_params)
        assert d is not None  # the entropy rule always decides
        ign = d.ignored_drops
        note = f"ignored {len(ign)} drop(s), rounds {ign[0]}-{ign[-1]}" if ign else ""
        out.append(outcome("vanilla + entropy + early stop", vanilla_dir, vrows, d, unit, note))
    if student_dir is not None:
        srows = load_rows(student_dir)
        d = decide(srows, "plain", **rule)
        o = outcome("DSD² + early stop", student_dir, srows, d, unit, "student rounds, teacher forward passes included")
        out.append(o)
        teacher = _teacher_cost(student_dir)
        if teacher is not None:
            t_dense, t_sparse, t_paper, t_round = teacher
            out.append(
                Outcome(
                    **{
                        **o.as_dict(),
                        "strategy": "DSD² + early stop, incl. teacher IMP",
                        "pflops_dense": o.pflops_dense + t_dense,
                        "pflops_sparse": o.pflops_sparse + t_sparse,
                        "pflops_paper": None if o.pflops_paper is None or t_paper is None else o.pflops_paper + t_paper,
                        "units": (o.pflops_dense + t_dense) / unit,
                        "note": f"+ teacher run up to its round {t_round}",
                    }
                )
            )
    return out


def _teacher_cost(student_dir: str | Path) -> tuple[float, float, float | None, int] | None:
    """Training cost of the teacher run up to the round it was taken from."""
    info_path = Path(student_dir) / "teacher.json"
    if not info_path.is_file():
        return None
    info = store.read_json_dict(info_path, TeacherFile, hint="it is the student's record of its teacher; restore it from a copy")
    if not isinstance(info, dict) or "run_dir" not in info:
        return None  # several teachers (a list) or self-distillation: no single teacher run to add
    trows = load_rows(info["run_dir"])
    # a best-fit teacher is only known once the whole teacher curve exists
    upto = len(trows) - 1 if info.get("choice") == "best" else int(info["round"])
    t = trows[upto]
    return t["train_pflops_dense"], t["train_pflops_sparse"], t.get("train_pflops_paper"), upto


@dataclass
class Dip:
    depth: float  # min(acc before, acc after) - acc at the trough; 0 for a curve without a dip
    trough: int | None
    before: int | None
    after: int | None


def recovered_dip(rows: Rows, column: str | None = None) -> Dip:
    """The deepest dip a curve recovers from: max over i < j < k of min(acc[i], acc[k]) - acc[j].

    This is the Critical dip of sparse double descent measured without any phase rule: a curve
    that is flat and then falls (the DSD² student) has depth 0 up to noise.
    """
    col = column or selection_column(rows)
    acc = [r[col] for r in rows]
    best = Dip(0.0, None, None, None)
    n = len(acc)
    for j in range(1, n - 1):
        i = max(range(j), key=lambda t: acc[t])
        k = max(range(j + 1, n), key=lambda t: acc[t])
        depth = min(acc[i], acc[k]) - acc[j]
        if depth > best.depth:
            best = Dip(depth, j, i, k)
    return best
