"""Phases of an IMP curve and early-stopping rules along the sparsity axis (pure numbers).

Rounds are indexed ``0 … n-1`` in pruning order (round 0 = dense); accuracies are fractions or
percentages (use the same unit for ``tol``/``tolerance``).

Phase labelling (:func:`label_phases`)
--------------------------------------
SPEC §1: Light → Critical → Sweet → Collapsed.  Every round gets exactly one label and the
labels are contiguous segments in that order (a phase may be empty).  With ``d = acc[0]``
(the dense accuracy):

1. **Memorisation** (only when ``train_acc_flipped`` is given and its max is at least
   ``min_memorisation``): round ``r`` memorises the noise iff
   ``flipped[r] >= mem_frac * max(flipped)``.  Otherwise memorisation is "unknown".
2. **Light** = the leading rounds ``[0, l)``: round 0 always; then while
   ``acc[r] >= d - tol`` and the net memorises (memorisation known), or while
   ``|acc[r] - d| <= tol`` (memorisation unknown, e.g. noise-free data: Light is the flat
   start; a rise above the dense accuracy starts the Sweet phase).
3. On the rest ``R = [l, n)``: the **peak** ``b = argmax acc`` over ``R`` (ties → sparsest).
   The peak is *sweet* iff ``acc[b] >= d - tol`` or it recovers from an earlier trough,
   ``min(acc[l:b]) < acc[b] - tol``.  If it is not sweet (accuracy only falls after Light),
   the leading rounds of ``R`` that still fit (``fit[r] >= max(fit) - 2·fit_tol``, ``fit`` as
   in 5.) are **Light** while they do not memorise (a gently falling curve, e.g. a DSD²
   student) and **Critical** while they memorise (an IMP run still in progress, before its
   Sweet phase); the rest is **Collapsed**.
4. **Critical** (the dip) = ``[l, t]`` with ``t = argmin acc[l:b]`` (ties → sparsest), only if
   ``acc[t] < d - tol`` and ``acc[t] < acc[b] - tol``; otherwise there is no Critical round.
   A monotone (non-increasing) curve therefore never has Critical rounds.
5. **Collapsed** = ``[c, n)``, with ``c`` the first round after ``b`` such that
   ``acc[c] < acc[b] - tol`` and the net lost its fit: ``fit[c] < fit[b] - fit_tol`` where
   ``fit`` is ``train_acc_clean`` (accuracy on the unflipped training samples) if given,
   else ``train_acc_noisy`` (if that is None the fit test is skipped).  Comparing with the
   fit at the peak (after Light) matters: in the Sweet phase noisy-train accuracy has already
   fallen to the clean fraction, so only a further fall means "cannot fit the clean part".
6. **Sweet** = the rounds between Critical (or Light) and Collapsed.

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

Default entropy signal (:func:`entropy_drop_signal`), a first, parameterised version to be
revised on measured curves: "collapsed" iff the current entropy is below
``(1 - rel_drop) * max(entropy so far)`` (or ``max - abs_drop`` when ``abs_drop`` is given),
or below ``dense_fraction * entropy[0]`` when ``dense_fraction`` is given.  The idea (paper):
during the Critical dip the network still memorises and its activation entropy stays high,
while at collapse ReLUs die or become linear and the entropy falls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsd2.errors import UserError

__all__ = [
    "PHASES",
    "EarlyStopper",
    "StopDecision",
    "entropy_below_dense_signal",
    "entropy_drop_signal",
    "entropy_early_stop",
    "label_phases",
    "plain_early_stop",
]

PHASES = ("light", "critical", "sweet", "collapsed")


# ---------------------------------------------------------------------------------------
# Phase labelling
# ---------------------------------------------------------------------------------------


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


def label_phases(
    sparsity: Sequence[float],
    eval_acc: Sequence[float],
    train_acc_noisy: Sequence[float] | None,
    train_acc_flipped: Sequence[float] | None,
    *,
    tol: float = 0.01,
    train_acc_clean: Sequence[float] | None = None,
    mem_frac: float = 0.9,
    min_memorisation: float = 0.5,
    fit_tol: float | None = None,
) -> list[str]:
    """One phase label per round (see the module docstring for the exact rule).

    ``sparsity`` must be non-decreasing.  ``train_acc_flipped``: accuracy w.r.t. the noisy
    labels on the flipped samples (None when noise-free).  ``train_acc_clean``: optional
    accuracy on the unflipped samples (a better fit signal for the Collapsed test).
    ``min_memorisation``: below this max flipped accuracy memorisation is treated as unknown
    (in the unit of the accuracies: use 50 for percentages).  ``fit_tol`` defaults to ``tol``.
    """
    acc = _floats("eval_acc", eval_acc, None)
    n = len(acc)
    if n == 0:
        raise UserError("label_phases needs at least one round")
    sp = _floats("sparsity", sparsity, n)
    noisy = _floats("train_acc_noisy", train_acc_noisy, n)
    flipped = _floats("train_acc_flipped", train_acc_flipped, n)
    clean = _floats("train_acc_clean", train_acc_clean, n)
    if any(b < a for a, b in zip(sp, sp[1:])):
        raise UserError("sparsity must be non-decreasing over rounds")
    if tol < 0:
        raise UserError(f"tol must be >= 0, got {tol}")
    fit_tol = tol if fit_tol is None else fit_tol

    d = acc[0]
    mem: list[bool] | None = None
    if flipped is not None and max(flipped) >= min_memorisation:
        m = max(flipped)
        mem = [f >= mem_frac * m for f in flipped]

    # Light.
    light_end = 1
    while light_end < n:
        a = acc[light_end]
        ok = (a >= d - tol and mem[light_end]) if mem is not None else abs(a - d) <= tol
        if not ok:
            break
        light_end += 1
    labels = ["light"] * light_end
    if light_end == n:
        return labels

    # Peak of the rest.
    b = _argmax_last(acc, light_end, n)
    trough = _argmin_last(acc, light_end, b) if b > light_end else None
    recovers = trough is not None and acc[trough] < acc[b] - tol
    if not (acc[b] >= d - tol or recovers):
        # Accuracy only falls after Light. While the net still fits the clean part, that is no
        # collapse: a net that memorises the noise meanwhile is in its Critical phase (an IMP run
        # still in progress, before its Sweet phase); one that does not (a DSD² student) is
        # still in its Light phase, on a gentle slope. Collapsed once the fit is lost.
        fit = clean if clean is not None else noisy
        if fit is None:
            return labels + ["collapsed"] * (n - light_end)
        # Twice the usual fit tolerance: a student's fit of its training set drifts by about a
        # point over a long plateau (measured on the demo) without any loss of accuracy.
        floor = max(fit) - 2 * fit_tol
        rest: list[str] = []
        for r in range(light_end, n):
            prev = rest[-1] if rest else "light"
            memorising = mem is not None and mem[r]
            if fit[r] >= floor and not memorising and prev == "light":
                rest.append("light")
            elif fit[r] >= floor and memorising and prev in ("light", "critical"):
                rest.append("critical")
            else:
                rest.append("collapsed")
        return labels + rest

    # Critical: light_end .. trough, if the trough is a real dip.
    crit_end = light_end
    if trough is not None and acc[trough] < d - tol and acc[trough] < acc[b] - tol:
        crit_end = trough + 1

    # Collapsed: first round after the peak with an accuracy drop and a loss of fit.
    fit = clean if clean is not None else noisy
    c = n
    for r in range(b + 1, n):
        if acc[r] < acc[b] - tol and (fit is None or fit[r] < fit[b] - fit_tol):
            c = r
            break
    return (
        labels
        + ["critical"] * (crit_end - light_end)
        + ["sweet"] * (c - crit_end)
        + ["collapsed"] * (n - c)
    )


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
) -> bool:
    """True ("collapsed") iff the last entropy fell from the running max.

    Fires when ``H[-1] < (1 - rel_drop) * max(H)`` (or ``H[-1] < max(H) - abs_drop`` when
    ``abs_drop`` is given), or when ``dense_fraction`` is given and
    ``H[-1] < dense_fraction * H[0]``.
    """
    if not entropy:
        return False
    h = float(entropy[-1])
    top = max(float(x) for x in entropy)
    fell = h < (top - abs_drop) if abs_drop is not None else h < (1.0 - rel_drop) * top
    if dense_fraction is not None and h < dense_fraction * float(entropy[0]):
        return True
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
    if tolerance < 0:
        raise UserError(f"tolerance must be >= 0, got {tolerance}")
    if patience < 1:
        raise UserError(f"patience must be >= 1, got {patience}")
    if select not in ("best", "last_good"):
        raise UserError(f"select must be 'best' or 'last_good', got {select!r}")


def _select(acc: Sequence[float], upto: int, drop: list[bool], streak_start: int | None,
            select: str) -> int:
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
    return StopDecision(None, sel, f"never fired over {n} rounds; selected round {sel}",
                        ignored, n)


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
    return _early_stop(acc, None, tolerance=tolerance, patience=patience, select=select,
                       signal=None, signal_params={})


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
    return _early_stop(acc, ent, tolerance=tolerance, patience=patience, select=select,
                       signal=signal, signal_params=signal_params)


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
