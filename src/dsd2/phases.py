"""Phases of an IMP curve and early-stopping rules along the sparsity axis (pure numbers).

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
measured from the curve's best round) and :attr:`Phases.basis` says so.

Early stopping (:func:`plain_early_stop`, :func:`entropy_early_stop`, :class:`EarlyStopper`)
--------------------------------------------------------------------------------------------
Round ``r`` is a *drop* iff ``acc[r] < best_before - tolerance`` with ``best_before`` the best
accuracy of rounds ``0 … r-1`` (round 0 is never a drop).  A drop counts towards stopping if
the rule *confirms* it: the plain rule confirms every drop; the entropy rule confirms a drop
only if its ``signal(entropy[:r+1], acc[:r+1], **signal_params)`` says "collapsed" (and
otherwise records the drop as ignored: the Critical dip, pruning continues).  The rule fires at
the round where ``patience`` consecutive rounds were confirmed drops (an unconfirmed or
non-drop round resets the streak): ``stop_round`` = that round (the last round that had to be
trained).  ``selected_round`` = the best round among ``0 … stop_round`` (ties → sparsest) with
``select="best"``, or the sparsest non-drop round before the final streak with
``select="last_good"`` (equal when ``tolerance == 0``).  If the rule never fires,
``stop_round`` is None and the selection runs over all rounds.

Default entropy signal (:func:`entropy_drop_signal`): "collapsed" iff the current entropy is
below ``(1 - rel_drop) * max(entropy so far)`` *and* (with ``falling``) the accuracy is still
falling (more than ``fall_tol`` below the round before).  During the Critical dip the network still memorises and its activation entropy
stays near its maximum; once memorisation breaks, units die or become linear and the entropy
falls, but while the accuracy recovers (the Sweet phase) that fall is not a collapse: on the
GELU ViT curves of the bank the entropy falls through the whole recovery, and on the ReLU
curves a threshold small enough to stop cheaply fired inside the recovery.  ``rel_drop`` and
whether to use the falling condition are fitted together by leave-one-setting-out over the curve
bank (``docs/stop_rules.md``), not on the demo; ``fall_tol`` is not fitted but derived from the
size of the evaluation set (:func:`dsd2.compare.fall_tolerance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from dsd2.errors import UserError

__all__ = [
    "PHASES",
    "UNDETERMINED",
    "EarlyStopper",
    "PhaseParams",
    "Phases",
    "StopDecision",
    "classify_phases",
    "entropy_below_dense_signal",
    "entropy_drop_signal",
    "entropy_early_stop",
    "label_phases",
    "plain_early_stop",
]

PHASES = ("light", "critical", "sweet", "collapsed")
UNDETERMINED = "undetermined"


# ---------------------------------------------------------------------------------------
# Phase labelling
# ---------------------------------------------------------------------------------------


@overload
def _floats(name: str, xs: None, n: int | None) -> None: ...
@overload
def _floats(name: str, xs: Sequence[float], n: int | None) -> list[float]: ...
def _floats(name: str, xs: Sequence[float] | None, n: int | None) -> list[float] | None:
    if xs is None:
        return None
    out = [float(x) for x in xs]
    if n is not None and len(out) != n:
        raise UserError(f"{name} has {len(out)} values, expected {n} (one per round)")
    if any(math.isnan(x) for x in out):
        raise UserError(f"{name} contains NaN")
    return out


def _argmax_last(xs: Sequence[float], lo: int, hi: int) -> int:
    """Index of the maximum of xs[lo:hi], ties → largest index."""
    best = lo
    for i in range(lo, hi):
        if xs[i] >= xs[best]:
            best = i
    return best


def _argmin_last(xs: Sequence[float], lo: int, hi: int) -> int:
    best = lo
    for i in range(lo, hi):
        if xs[i] <= xs[best]:
            best = i
    return best


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
    peak = _argmax_last(acc, lo, n)
    c = n
    for r in range(n - 1, peak, -1):
        lost_acc = acc[r] < acc[peak] - tol
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
    acc = _floats("eval_acc", eval_acc, None)
    if not acc:
        raise UserError("phase labelling needs at least one round")
    n = len(acc)
    m = _floats("memorisation", memorisation, n)
    fit_ = _floats("fit", fit, n)
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
    trough = _argmin_last(acc, light, stop + 1)
    sweet = min(max(trough + 1, start), stop)
    if end is not None and trough == end:
        # accuracy is still at its lowest where memorisation is half gone: the trough is the
        # lowest round before the accuracy clearly rises again, and it is not Sweet
        low, rose = _trough_from(acc, end, rise)
        if rose:
            sweet = low + 1
        elif not finished:
            return undetermined  # the trough, or a collapse, may still be ahead
    peak = _argmax_last(acc, sweet, n)
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
    note = f"phases from validation accuracy alone: {why}"
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


# ---------------------------------------------------------------------------------------
# Early stopping
# ---------------------------------------------------------------------------------------


@dataclass
class StopDecision:
    """Outcome of an early-stopping rule.

    ``stop_round``: round at which the rule fired (the last round that had to be trained);
    None if it never fired.  ``selected_round``: round whose model is returned to the user.
    ``ignored_drops``: accuracy drops the rule did not confirm (entropy rule: the Critical
    dip).  ``rounds_seen``: number of rounds looked at.
    """

    stop_round: int | None
    selected_round: int | None
    reason: str
    ignored_drops: list[int] = field(default_factory=list)
    rounds_seen: int = 0

    @property
    def stopped(self) -> bool:
        return self.stop_round is not None


Signal = Callable[..., bool]


def entropy_drop_signal(
    entropy: Sequence[float],
    eval_acc: Sequence[float] | None = None,
    *,
    rel_drop: float = 0.1,
    abs_drop: float | None = None,
    dense_fraction: float | None = None,
    falling: bool = True,
    fall_tol: float = 0.0,
) -> bool:
    """True ("collapsed") iff the last entropy fell from the running max while the accuracy
    is still falling.

    The entropy part holds when ``H[-1] < (1 - rel_drop) * max(H)`` (or ``H[-1] < max(H) -
    abs_drop`` when ``abs_drop`` is given), or when ``dense_fraction`` is given and
    ``H[-1] < dense_fraction * H[0]``.  With ``falling`` (the default) the last accuracy must
    also be more than ``fall_tol`` below the one before (``acc[-1] < acc[-2] - fall_tol``): a
    round that recovers, or holds within the noise of two measurements, is not a collapse,
    whatever its entropy (:func:`dsd2.compare.decide` sets ``fall_tol`` from the size of the
    evaluation set).  ``falling=False`` is the rule before the ViT curves; whether to use it is
    chosen leave-one-setting-out with ``rel_drop`` (docs/stop_rules.md).
    """
    if not entropy:
        return False
    h = float(entropy[-1])
    top = max(float(x) for x in entropy)
    fell = h < (top - abs_drop) if abs_drop is not None else h < (1.0 - rel_drop) * top
    if dense_fraction is not None and h < dense_fraction * float(entropy[0]):
        fell = True
    if fell and falling and eval_acc is not None and len(eval_acc) >= 2:
        return float(eval_acc[-1]) < float(eval_acc[-2]) - fall_tol
    return fell


def entropy_below_dense_signal(
    entropy: Sequence[float],
    eval_acc: Sequence[float] | None = None,
    *,
    fraction: float = 0.9,
) -> bool:
    """True ("collapsed") iff the last entropy is below ``fraction`` × the dense entropy."""
    if not entropy:
        return False
    return float(entropy[-1]) < fraction * float(entropy[0])


def _check_stop_params(tolerance: float, patience: int, select: str) -> None:
    if not tolerance >= 0 or math.isinf(tolerance):  # also refuses NaN
        raise UserError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if patience < 1:
        raise UserError(f"patience must be >= 1, got {patience}")
    if select not in ("best", "last_good"):
        raise UserError(f"select must be 'best' or 'last_good', got {select!r}")


def _select(acc: Sequence[float], upto: int, drop: list[bool], streak_start: int | None, select: str) -> int:
    """Round returned to the user among rounds 0..upto (inclusive)."""
    if select == "last_good":
        end = upto if streak_start is None else streak_start - 1
        for r in range(end, -1, -1):
            if not drop[r]:
                return r
        return 0
    return _argmax_last(acc, 0, upto + 1)


def _early_stop(
    acc: list[float],
    entropy: list[float] | None,
    *,
    tolerance: float,
    patience: int,
    select: str,
    signal: Signal | None,
    signal_params: dict[str, Any],
) -> StopDecision:
    n = len(acc)
    if n == 0:
        return StopDecision(None, None, "no rounds", [], 0)
    drop = [False] * n
    ignored: list[int] = []
    best = acc[0]
    streak = 0
    for r in range(1, n):
        is_drop = acc[r] < best - tolerance
        drop[r] = is_drop
        if is_drop:
            confirmed = True
            if signal is not None:
                assert entropy is not None  # a signal always comes with its entropy curve
                confirmed = bool(signal(entropy[: r + 1], acc[: r + 1], **signal_params))
            if confirmed:
                streak += 1
                if streak >= patience:
                    start = r - patience + 1
                    sel = _select(acc, r, drop, start, select)
                    what = "accuracy drop" if signal is None else "accuracy drop with entropy fall"
                    reason = (
                        f"{what} for {patience} round(s) ({acc[r]:.4g} < best {best:.4g} - "
                        f"{tolerance:g}) at round {r}; selected round {sel}"
                    )
                    return StopDecision(r, sel, reason, ignored, r + 1)
            else:
                ignored.append(r)
                streak = 0
        else:
            streak = 0
        best = max(best, acc[r])
    sel = _select(acc, n - 1, drop, None, select)
    return StopDecision(None, sel, f"never fired over {n} rounds; selected round {sel}", ignored, n)


def plain_early_stop(
    eval_acc: Sequence[float],
    *,
    tolerance: float = 0.0,
    patience: int = 1,
    select: str = "best",
) -> StopDecision:
    """Stop pruning at the first accuracy drop (see module docstring)."""
    _check_stop_params(tolerance, patience, select)
    acc = _floats("eval_acc", eval_acc, None)
    return _early_stop(acc, None, tolerance=tolerance, patience=patience, select=select, signal=None, signal_params={})


def entropy_early_stop(
    eval_acc: Sequence[float],
    entropy: Sequence[float],
    *,
    tolerance: float = 0.0,
    patience: int = 1,
    select: str = "best",
    signal: Signal = entropy_drop_signal,
    **signal_params: Any,
) -> StopDecision:
    """Stop at an accuracy drop only if the entropy signal confirms a collapse.

    ``signal(entropy_prefix, acc_prefix, **signal_params) -> bool`` (default
    :func:`entropy_drop_signal`, parameters e.g. ``rel_drop=0.1``).
    """
    _check_stop_params(tolerance, patience, select)
    acc = _floats("eval_acc", eval_acc, None)
    ent = _floats("entropy", entropy, len(acc))
    return _early_stop(acc, ent, tolerance=tolerance, patience=patience, select=select, signal=signal, signal_params=signal_params)


class EarlyStopper:
    """Online form of the early-stopping rules.

    ``EarlyStopper(rule="plain" | "entropy", tolerance=…, patience=…, select=…, signal=…,
    **signal_params)``; call ``update(round, eval_acc, entropy=None)`` after each pruning round
    (rounds 0, 1, 2, … in order); it returns True when pruning should stop.  ``decision`` is
    the :class:`StopDecision` the offline function gives on the rounds seen so far.  Updates
    after the rule fired are recorded but change nothing (the decision stays fixed).
    """

    def __init__(
        self,
        rule: str = "plain",
        *,
        tolerance: float = 0.0,
        patience: int = 1,
        select: str = "best",
        signal: Signal | None = None,
        **signal_params: Any,
    ) -> None:
        if rule not in ("plain", "entropy"):
            raise UserError(f"rule must be 'plain' or 'entropy', got {rule!r}")
        _check_stop_params(tolerance, patience, select)
        if rule == "plain" and (signal is not None or signal_params):
            raise UserError("the plain rule takes no entropy signal parameters")
        self.rule = rule
        self.tolerance = tolerance
        self.patience = patience
        self.select = select
        self.signal = (signal or entropy_drop_signal) if rule == "entropy" else None
        self.signal_params = signal_params
        self.acc: list[float] = []
        self.entropy: list[float] = []
        self._fired: StopDecision | None = None

    @property
    def stopped(self) -> bool:
        return self._fired is not None

    def update(self, round: int, eval_acc: float, entropy: float | None = None) -> bool:
        if round != len(self.acc):
            raise UserError(f"EarlyStopper expected round {len(self.acc)}, got {round}")
        a = float(eval_acc)
        if math.isnan(a):
            raise UserError("eval_acc is NaN")
        if self.rule == "entropy":
            if entropy is None or math.isnan(float(entropy)):
                raise UserError("the entropy rule needs an entropy value at every round")
            self.entropy.append(float(entropy))
        self.acc.append(a)
        if self._fired is None:
            d = self._offline()
            if d.stopped:
                self._fired = d
        return self._fired is not None

    def _offline(self) -> StopDecision:
        # The online rule is the offline rule on the prefix seen so far (one implementation).
        return _early_stop(
            self.acc,
            self.entropy if self.signal is not None else None,
            tolerance=self.tolerance,
            patience=self.patience,
            select=self.select,
            signal=self.signal,
            signal_params=self.signal_params,
        )

    @property
    def decision(self) -> StopDecision:
        return self._fired if self._fired is not None else self._offline()
