"""Early-stopping rules along the sparsity axis (pure numbers).


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
from typing import Any

from dsd2.errors import UserError

from .numbers import argmax_last, floats


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
    return argmax_last(acc, 0, upto + 1)


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
    acc = floats("eval_acc", eval_acc, None)
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
    acc = floats("eval_acc", eval_acc, None)
    ent = floats("entropy", entropy, len(acc))
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
