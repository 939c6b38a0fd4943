"""Phases of an IMP curve and early-stopping rules along the sparsity axis (pure numbers).

Rounds are indexed ``0 … n-1`` in pruning order (round 0 = dense); accuracies and
memorisation are fractions or percentages (use the same unit for the tolerances).

Phase labels (:func:`classify_phases`, :func:`label_phases`: :mod:`dsd2.phases.labels`) follow
``docs/phases.md``; the early-stopping rules (:func:`plain_early_stop`,
:func:`entropy_early_stop`, :class:`EarlyStopper`) are in :mod:`dsd2.phases.early_stop`. Both
modules' docs say how they decide.
"""

from .early_stop import (
    EarlyStopper,
    StopDecision,
    entropy_below_dense_signal,
    entropy_drop_signal,
    entropy_early_stop,
    plain_early_stop,
)
from .early_stop import (
    Signal as Signal,  # the type of an entropy signal, importable here as before
)
from .labels import PHASES, UNDETERMINED, PhaseParams, Phases, classify_phases, label_phases

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
