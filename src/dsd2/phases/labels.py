"""Phases of an IMP curve (pure numbers): each round labelled light, critical, sweet or collapsed.

Rounds are indexed ``0 … n-1`` in pruning order (round 0 = dense); accuracies and
memorisation are fractions or percentages (use the same unit for the tolerances).

Phase labels (:func:`classify_phases`, :func:`label_phases`) follow the definitions in
``docs/phases.md``; in short, with ``m`` the memorisation (accuracy of the flipped training
samples w.r.t. their *noisy* labels), ``fit`` the accuracy on the unflipped training samples and
``acc`` the held-out (validation) accuracy:

- **light**: the leading rounds whose accuracy is within ``tol`` of the best so far, before
  memorisation starts to break;
- **critical**: the net still memorises the noise and held-out accuracy has fallen, up to and
  including the accuracy trough (searched inside the memorisation break; when the accuracy is
  still at its lowest where memorisation is half gone, the lowest round before it clearly rises);
- **sweet**: memorisation is broken (``m`` fell below ``break_end`` × its running peak) and the
  accuracy recovers from the trough by more than √2 × ``tol`` (a rise compares two accuracies),
  up to the collapse;
- **collapsed**: the final rounds after the Sweet peak (without a Sweet phase: after the best
  round of the curve) that never come back within ``tol`` of it and whose clean fit fell by more
  than ``fit_tol`` from the fit at the peak;
- **undetermined**: what the rounds seen so far cannot decide yet (an unfinished curve).

When memorisation is not measured (no label noise, real noise without clean labels) or never
reaches ``min_memorisation``, the labels come from the accuracy curve alone (a dip recovered by
more than √2 × ``tol`` for two rounds is read as Critical → Sweet; a fall that never recovers is
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsd2.errors import UserError

from .numbers import argmax_last, argmin_last, floats

PHASES = ("light", "critical", "sweet", "collapsed")
UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class PhaseParams:
    """Thresholds of the phase definitions (docs/phases.md), in the unit of the accuracies.

    ``tol``: accuracy change read as noise (default 1 point). ``fit_tol``: clean-fit loss read
    as noise (default ``tol``). ``break_start``/``break_end``: memorisation has started/finished
    breaking when it falls below this fraction of its running peak. ``min_memorisation``: a
    peak below this means the net never memorised the noise (in the unit of the accuracies:
    use 50 for percentages).
    """

    tol: float = 0.01
    fit_tol: float | None = None
    break_start: float = 0.9
    break_end: float = 0.5
    min_memorisation: float = 0.5

    @classmethod
    def for_eval_set(cls, n_eval: int, accuracy: float) -> PhaseParams:
        """Tolerance from the size of the evaluation set (accuracies as fractions): twice the
        binomial standard error of an accuracy near ``accuracy`` measured on ``n_eval`` samples,
        and never below one point (500 validation samples: about 4 points; 5,000: about 1)."""
        if n_eval < 1:
            raise UserError(f"n_eval must be >= 1, got {n_eval}")
        p = min(max(float(accuracy), 0.0), 1.0)
        return cls(tol=max(0.01, 2.0 * math.sqrt(p * (1.0 - p) / n_eval)))

    def __post_init__(self) -> None:
        if self.tol < 0 or (self.fit_tol is not None and self.fit_tol < 0):
            raise UserError(f"tol and fit_tol must be >= 0, got {self.tol}, {self.fit_tol}")
        if not 0 < self.break_end <= self.break_start <= 1:
            raise UserError(f"need 0 < break_end <= break_start <= 1, got {self.break_end}, {self.break_start}")


@dataclass
class Phases:
    """Labels per round and how they were decided.

    ``basis``: "memorisation" (the paper's definition), or "accuracy" (memorisation not
    measured, or the net never memorised: a recovered dip is read as Critical → Sweet).
    ``note``: one sentence for reports. ``break_round``: first round of the Sweet phase
    decided by memorisation (None if none).
    """

    labels: list[str]
    basis: str
    note: str
    break_round: int | None = None


def _first_below(m: list[float], frac: float, lo: int, floor: float) -> int | None:
    """First round r >= lo where m[r] < frac × max(m[:r+1]), once that running peak >= floor."""
    peak = max(m[:lo], default=float("-inf"))
    for r in range(lo, len(m)):
        peak = max(peak, m[r])
        if peak >= floor and m[r] < frac * peak:
            return r
    return None


def _light_end(acc: list[float], tol: float, limit: int) -> int:
    """Leading rounds (at least round 0, at most ``limit``) within ``tol`` of the best so far."""
    end, best = 1, acc[0]
    while end < limit and acc[end] >= best - tol:
        best = max(best, acc[end])
        end += 1
    return end


def _diff_tol(tol: float) -> float:
    """Tolerance of a difference of two accuracies, each measured with tolerance ``tol``: a rise
    or a fall compares two noisy numbers, whose difference has sqrt(2) times the standard error."""
    return math.sqrt(2.0) * tol


def _collapse_start(acc: list[float], fit: list[float] | None, lo: int, tol: float, fit_tol: float) -> int:
    """Start of the never-recovering tail after the peak of ``acc[lo:]`` (len(acc) if none):
    rounds more than ``tol`` below the peak whose clean fit also fell more than ``fit_tol``."""
    n = len(acc)
    peak = argmax_last(acc, lo, n)
    c = n
    for r in range(n - 1, peak, -1):
        lost_acc = acc[r] < acc[peak] - _diff_tol(tol)
        lost_fit = fit is None or fit[r] < fit[peak] - fit_tol
        if not (lost_acc and lost_fit):
            break
        c = r
    return c


def _tail(labels: list[str], start: int, finished: bool) -> list[str]:
    n = len(labels)
    return labels[:start] + ["collapsed" if finished else UNDETERMINED] * (n - start)


def classify_phases(
    eval_acc: Sequence[float],
    *,
    memorisation: Sequence[float] | None = None,
    fit: Sequence[float] | None = None,
    finished: bool = True,
    params: PhaseParams | None = None,
    n_eval: int | None = None,
) -> Phases:
    """Phase of every round of one IMP curve (definitions: module docstring, docs/phases.md).

    ``memorisation``: accuracy of the flipped samples w.r.t. their noisy labels (None when not
    measured). ``fit``: accuracy on the unflipped training samples (None: the collapse test uses
    accuracy only). ``finished``: every configured round was trained; an unfinished curve labels
    ``undetermined`` what later rounds could still change, so a label, once given, never changes.
    ``params``: thresholds; by default :meth:`PhaseParams.for_eval_set` when ``n_eval`` (the
    number of samples behind ``eval_acc``) is given, else :class:`PhaseParams` ().
    """
    acc = floats("eval_acc", eval_acc, None)
    if not acc:
        raise UserError("phase labelling needs at least one round")
    n = len(acc)
    m = floats("memorisation", memorisation, n)
    fit_ = floats("fit", fit, n)
    if params is None:
        params = PhaseParams.for_eval_set(n_eval, acc[0]) if n_eval else PhaseParams()
    p = params
    tol = p.tol
    fit_tol = tol if p.fit_tol is None else p.fit_tol

    if m is not None and max(m) >= p.min_memorisation:
        return _by_memorisation(acc, m, fit_, finished, p, tol, fit_tol)
    if m is None:
        why = "memorisation is not measured (no known flipped samples)"
    else:
        why = f"the net never memorised the noise (at most {max(m):.3g} of the flipped samples)"
        if not finished:
            # memorisation may still rise (an under-fitted dense start): fallen rounds stay open
            why += " so far"
    return _by_accuracy(acc, fit_, finished, tol, fit_tol, why)


def _trough_from(acc: list[float], lo: int, rise: float) -> tuple[int, bool]:
    """Lowest round from ``lo`` on before the accuracy first rises more than ``rise`` above the
    lowest so far, and whether it rose (ties → the later round)."""
    low = lo
    for r in range(lo + 1, len(acc)):
        if acc[r] > acc[low] + rise:
            return low, True
        if acc[r] <= acc[low]:
            low = r
    return low, False


def _by_memorisation(acc, m, fit, finished, p: PhaseParams, tol, fit_tol) -> Phases:
    n = len(acc)
    rise = _diff_tol(tol)
    start = _first_below(m, p.break_start, 0, p.min_memorisation)  # memorisation starts to break
    end = _first_below(m, p.break_end, start, p.min_memorisation) if start is not None else None
    light = _light_end(acc, tol, start if start is not None else n)
    labels = ["light"] * light + ["critical"] * (n - light)
    note = "phases from memorisation of the flipped samples and validation accuracy"
    undetermined = Phases(labels[:start] + [UNDETERMINED] * (n - (start or 0)), "memorisation", note)
    if start is None:
        return Phases(labels, "memorisation", note)
    if end is None and not finished:
        # inside the break: Critical lasts to the accuracy trough, which may still be ahead
        return undetermined
    # Critical → Sweet after the accuracy trough, searched inside the break window [start, end]
    # light <= start <= stop: the break cannot start at round 0 (m[0] is its own running peak)
    stop = end if end is not None else n - 1
    trough = argmin_last(acc, light, stop + 1)
    sweet = min(max(trough + 1, start), stop)
    if end is not None and trough == end:
        # accuracy is still at its lowest where memorisation is half gone: the trough is the
        # lowest round before the accuracy clearly rises again, and it is not Sweet
        low, rose = _trough_from(acc, end, rise)
        if rose:
            sweet = low + 1
        elif not finished:
            return undetermined  # the trough, or a collapse, may still be ahead
    peak = argmax_last(acc, sweet, n)
    if acc[peak] <= min(acc[light : sweet + 1]) + rise:
        # memorisation broke but held-out accuracy never recovered: no Sweet phase (no SDD)
        after = "collapsed" if finished else UNDETERMINED
        if finished:
            note += "; memorisation broke without any recovery of held-out accuracy: no Sweet phase"
        return Phases(labels[:sweet] + [after] * (n - sweet), "memorisation", note, None)
    labels = labels[:sweet] + ["sweet"] * (n - sweet)
    return Phases(_tail(labels, _collapse_start(acc, fit, sweet, tol, fit_tol), finished), "memorisation", note, sweet)


def _by_accuracy(acc, fit, finished, tol, fit_tol, why: str) -> Phases:
    n = len(acc)
    note = f"phases from held-out accuracy alone: {why}"
    light = _light_end(acc, tol, n)
    labels = ["light"] * n
    if light == n:
        return Phases(labels, "accuracy", note)
    if not finished:
        # a fall after Light is a Critical dip if it recovers and a collapse if not: not yet known
        return Phases(labels[:light] + [UNDETERMINED] * (n - light), "accuracy", note)
    # the dip = the round after Light from which accuracy recovers the most. A recovery compares
    # two accuracies (the difference tolerance) and must hold for two rounds: one upward tick of a
    # falling curve is noise, not a Sweet phase (the second-best later round must also be above).
    rise, trough = max(((_second_best(acc[t + 1 :]) - acc[t], t) for t in range(light, n - 2)), default=(0.0, light))
    if rise > _diff_tol(tol):
        sweet = trough + 1
        labels = labels[:light] + ["critical"] * (sweet - light) + ["sweet"] * (n - sweet)
        return Phases(_tail(labels, _collapse_start(acc, fit, sweet, tol, fit_tol), True), "accuracy", note)
    # no recovery: a fall is measured from the best round of the whole curve (the Light peak),
    # so an abrupt fall right after Light is Collapsed, not Light
    return Phases(_tail(labels, _collapse_start(acc, fit, 0, tol, fit_tol), True), "accuracy", note)


def _second_best(xs: Sequence[float]) -> float:
    return sorted(xs)[-2] if len(xs) >= 2 else float("-inf")


def label_phases(eval_acc: Sequence[float], **kwargs: Any) -> list[str]:
    """The labels of :func:`classify_phases` (same arguments)."""
    return classify_phases(eval_acc, **kwargs).labels
