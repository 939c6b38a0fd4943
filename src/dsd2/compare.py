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

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from dsd2 import rundir, store
from dsd2.config.choices import filled_options, options_keyword
from dsd2.errors import UserError
from dsd2.file_schemas import TeacherFile
from dsd2.phases import PhaseParams, StopDecision, classify_phases, entropy_early_stop, label_phases, plain_early_stop
from dsd2.registry import STOP_RULES
from dsd2.rundir import RoundRow
from dsd2.units import fraction_error

# A curve: rounds in order, each a mapping of column to value (rundir.RoundRow or a CSV dict).
Rows = Sequence[Mapping[str, Any]]

# The entropy rule's choices a run uses: fitted on the whole curve bank for both stopping
# settings together (dsd2.bank.fit_default_rule, docs/stop_rules.md; a test checks it still is).
ENTROPY_RULE_DEFAULTS: dict[str, Any] = {"rel_drop": 0.05, "falling": True}

# A second stopping setting shown next to the paper's (tolerance 0, keep the best): keep the
# sparsest model within 3 accuracy points of the best so far.
COMPRESS_RULE: dict[str, Any] = {"tolerance": 0.03, "patience": 1, "select": "last_good"}


def rule_text(rule: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in rule.items())


def load_rows(run_dir: str | Path) -> list[RoundRow]:
    path = rundir.rounds_csv_path(run_dir)
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
    rows: Rows,
    rule: str,
    *,
    tolerance: float = 0.0,
    patience: int = 1,
    select: str = "best",
    options: Mapping[str, Any] | None = None,
    **entropy_params: Any,
) -> StopDecision | None:
    """The decision of the registered stop rule ``rule`` ("plain", "entropy" or "none", see
    :data:`dsd2.registry.STOP_RULES`) on a run's rows.

    ``select="best"`` returns the most accurate round trained; ``"last_good"`` the sparsest
    round before the drop that stopped pruning (with a tolerance: the most compressed model
    within ``tolerance`` of the best so far) that the phase labeller does not call Collapsed
    on the rounds trained (docs/phases.md). A rule registered with an options model gets
    ``options`` (``early_stop.rule_options``; its defaults where none are given) validated, its
    defaults filled in, as the keyword ``options``.
    """
    bad_unit = fraction_error("tolerance", tolerance, unit="points")  # rows hold fractions: 3 means 300 points
    if bad_unit is not None:
        raise UserError(bad_unit)
    stop_rule = STOP_RULES.get(rule)
    col = selection_column(rows)
    acc = [r[col] for r in rows]
    ent = [r.get("entropy") for r in rows]
    if rule == "entropy" and "fall_tol" not in entropy_params and "signal" not in entropy_params:
        entropy_params = {**entropy_params, "fall_tol": fall_tolerance(rows)}
    own = options_keyword(STOP_RULES, rule, filled_options(STOP_RULES, rule, dict(options or {})))
    decision = stop_rule(acc, ent, tolerance=tolerance, patience=patience, select=select, **own, **entropy_params)
    if decision is not None and select == "last_good":
        decision = _outside_collapse(rows, decision, tolerance)
    return decision


# Largest evaluation set :func:`eval_size` recognises.
MAX_EVAL = 10**7


def eval_size(rows: Rows, column: str | None = None) -> int | None:
    """Samples behind the selection accuracy, read off the accuracies themselves: each one is
    k/n for the same n (rounds.csv stores them exactly), so n is the least common multiple of
    their reduced denominators. None when they are not such fractions (an average over batches).
    A curve of a few rounds may give a divisor of n (a larger tolerance, never a smaller one)."""
    col = column or selection_column(rows)
    n = 1
    for r in rows:
        a = float(r[col])
        f = Fraction(a).limit_denominator(MAX_EVAL)
        if abs(float(f) - a) > 1e-12:
            return None
        n = math.lcm(n, f.denominator)
        if n > MAX_EVAL:
            return None
    return n if n > 1 else None


def fall_tolerance(rows: Rows) -> float:
    """How much the accuracy must fall between two rounds to count as falling: the tolerance of a
    difference of two accuracies (sqrt 2 × twice the binomial standard error, at least one point),
    as the phase labeller uses for a rise (:class:`dsd2.phases.PhaseParams`). 0 when the size of
    the evaluation set cannot be read off the rows."""
    n = eval_size(rows)
    if n is None or not rows:
        return 0.0
    return math.sqrt(2.0) * PhaseParams.for_eval_set(n, rows[0][selection_column(rows)]).tol


# Where the phase labeller reads memorisation, in order of preference: the samples the run's own
# noise flipped, else the memorisation probe's (noise.probe; docs/noise.md).
MEMORISATION_COLUMNS = ("train_acc_flipped", "train_acc_probe")


def memorisation(rows: Rows) -> list[float] | None:
    """The memorisation signal of the phase labeller: the first column of
    :data:`MEMORISATION_COLUMNS` that every round has, None when none is (no known flipped
    sample and no probe). With noise present the probe is not read: the labels stay those of
    the run's own flipped samples."""
    for col in MEMORISATION_COLUMNS:
        values = [r.get(col) for r in rows]
        if values and all(v is not None for v in values):
            return [float(v) for v in values if v is not None]
    return None


def phase_labels(rows: Rows, *, finished: bool = True) -> list[str]:
    """The phase labeller (:func:`dsd2.phases.label_phases`) on rows, its tolerance from
    :func:`eval_size`."""
    if not rows:
        return []
    col = selection_column(rows)
    fit = [r.get("unflipped_acc") for r in rows]
    return label_phases(
        [r[col] for r in rows],
        memorisation=memorisation(rows),
        fit=None if any(f is None for f in fit) else fit,
        finished=finished,
        n_eval=eval_size(rows, col),
    )


def phase_basis_note(rows: Rows) -> str | None:
    """Why the phase labels of ``rows`` come from the accuracy curve alone (memorisation not
    measured, or never reached: docs/phases.md), or None when memorisation decides them. Said
    next to the labels: a Light or Sweet read off accuracy is an inference, not a measurement."""
    if not rows:
        return None
    col = selection_column(rows)
    ph = classify_phases([r[col] for r in rows], memorisation=memorisation(rows), n_eval=eval_size(rows, col))
    return ph.note if ph.basis == "accuracy" else None


def _outside_collapse(rows: Rows, d: StopDecision, tolerance: float) -> StopDecision:
    """A compression pick the labeller calls Collapsed (a fallen, never-recovering round within the
    rule's wider tolerance) moves back to the sparsest earlier round that is neither Collapsed
    nor below the best so far by more than ``tolerance``."""
    if d.selected_round is None:
        return d
    upto = d.stop_round if d.stop_round is not None else len(rows) - 1
    labels = phase_labels(rows[: upto + 1], finished=True)
    if labels[d.selected_round] != "collapsed":
        return d
    col = selection_column(rows)
    acc = [r[col] for r in rows]
    keep = max(r for r in range(d.selected_round + 1) if r == 0 or (labels[r] != "collapsed" and acc[r] >= max(acc[:r]) - tolerance))
    why = f"; round {d.selected_round} is Collapsed (docs/phases.md), kept round {keep}"
    return dataclasses.replace(d, selected_round=keep, reason=d.reason + why)


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
    """``entropy``: :func:`dsd2.phases.entropy_early_stop` with :data:`ENTROPY_RULE_DEFAULTS` under
    ``params`` (the default signal's parameters: a ``signal`` of your own gets only yours)."""
    values = [h for h in entropy if h is not None]
    if len(values) != len(entropy):
        raise UserError("the entropy rule needs the entropy column (run with entropy.enabled=true)")
    if "signal" not in params:
        params = {**ENTROPY_RULE_DEFAULTS, **params}
    return entropy_early_stop(acc, values, tolerance=tolerance, patience=patience, select=select, **params)


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


def other_task(vanilla_dir: str | Path, student_dir: str | Path) -> str | None:
    """What makes two runs train on another task (other training samples, or other noisy labels:
    another dataset, noise or seed), from their labels.safetensors; None when they share them, or
    when a run folder holds no labels (tables and config only: shared to be read, not checked)."""
    paths = [rundir.labels_path(d) for d in (vanilla_dir, student_dir)]
    if not all(p.exists() for p in paths):
        return None
    a, b = (store.load_tensors(p) for p in paths)
    for key, what in (("train_idx", "training samples"), ("noisy", "noisy training labels")):
        if key in a and key in b and (a[key].shape != b[key].shape or not bool((a[key] == b[key]).all())):
            return what
    return None


def check_pair(vanilla_dir: str | Path, student_dir: str | Path | None) -> None:
    """Refuse comparisons that mean nothing: swapped arguments, a vanilla curve of another
    architecture than the student's (the baseline must be the student's own architecture), or of
    another task (other training samples or noisy labels)."""
    if rundir.teacher_path(vanilla_dir).is_file():
        raise UserError(f"{vanilla_dir} is a DSD² student run (it has teacher.json): give the vanilla run first, then the student")
    if student_dir is None:
        return
    if not rundir.teacher_path(student_dir).is_file():
        raise UserError(f"{student_dir} is not a DSD² student run (no teacher.json): give a vanilla run, then a student run")
    vm, sm = (rundir.read_config(d).model.model_dump() for d in (vanilla_dir, student_dir))
    if vm != sm:
        raise UserError(
            f"the vanilla run trains {vm} but the student is {sm}: the baseline must be a vanilla run of the student's architecture "
            "(`dsd2 pipeline … --student` runs one, named <student>_vanilla)"
        )
    if (what := other_task(vanilla_dir, student_dir)) is not None:
        raise UserError(
            f"the vanilla run {vanilla_dir} and the student {student_dir} train on other {what} (dataset, noise or seed "
            "settings differ): their curves are not comparable; give the vanilla run of the student's data, noise and seed"
        )


def _rounds_note(run_dir: str | Path, rows: Rows) -> str:
    """ "all rounds", or which rounds when the run has fewer than its config asks (an exhaustive
    search over a curve cut short is no exhaustive search: say where it ends and why)."""
    last, planned = int(rows[-1]["round"]), rundir.read_config(run_dir).prune.rounds
    if last >= planned or rundir.floor_stopped_at(run_dir) is not None:  # the channel floor completes a run
        return "all rounds"
    why = "its early-stop rule ended it" if rundir.early_stop_path(run_dir).is_file() else "unfinished"
    return f"rounds 0..{last} of {planned} only ({why})"


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
        outcome(
            "vanilla, exhaustive", vanilla_dir, vrows, None, unit, f"{_rounds_note(vanilla_dir, vrows)}, best on {selection_column(vrows)}"
        ),
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
        teacher = _teacher_cost(student_dir, vanilla_dir)
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


def _teacher_cost(student_dir: str | Path, vanilla_dir: str | Path) -> tuple[float, float, float | None, int] | None:
    """Training cost of the teacher run up to the round it was taken from (a moved study's teacher:
    ``vanilla_dir`` when teacher.json's folder holds no run any more and it has the same name)."""
    info_path = rundir.teacher_path(student_dir)
    if not info_path.is_file():
        return None
    info = store.read_json_dict(info_path, TeacherFile, hint="it is the student's record of its teacher; restore it from a copy")
    if not isinstance(info, dict) or "run_dir" not in info:
        return None  # several teachers (a list) or self-distillation: no single teacher run to add
    trows = load_rows(_teacher_dir(str(info["run_dir"]), vanilla_dir))
    # a best-fit teacher is only known once the whole teacher curve exists
    upto = len(trows) - 1 if info.get("choice") == "best" else int(info["round"])
    t = trows[upto]
    return t["train_pflops_dense"], t["train_pflops_sparse"], t.get("train_pflops_paper"), upto


def _teacher_dir(recorded: str, vanilla_dir: str | Path) -> str | Path:
    """The teacher run's folder: the recorded one, or ``vanilla_dir`` when the recorded folder holds
    no run (a moved study) and has its name (<name>-<hash>: the same config and curve)."""
    if not rundir.config_path(recorded).is_file() and Path(vanilla_dir).name == Path(recorded).name:
        return vanilla_dir
    return recorded


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
