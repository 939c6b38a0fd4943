"""Fractions given as percentages: the refusal that says the fix.

Accuracies, tolerances and rates are fractions everywhere in dsd2 (0.03 is 3 points, 0.4 is
40 %). A value above 1 is almost always a percentage typed by habit ("tolerance 3"); it would run
as something else entirely (a tolerance of 300 points never stops), so it is refused with the
value the user meant. No torch here: the config schema uses it.
"""

from __future__ import annotations

from typing import Any


def fraction_error(name: str, value: float, *, unit: str = "%") -> str | None:
    """The message refusing ``value`` for the fraction-valued ``name``, or None when it is at most 1.

    ``unit`` names what the percentage counts: ``"points"`` for accuracy tolerances (0.03 for
    3 points), ``"%"`` for rates (0.4 for 40 %).
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value <= 1:
        return None
    spelled = f"{value:g} points" if unit == "points" else f"{value:g} %"
    if value <= 100:
        return f"{name}={value:g} is above 1, but {name} is a fraction: write {value / 100:g} for {spelled}"
    example = "0.03 for 3 points" if unit == "points" else "0.4 for 40 %"
    return f"{name}={value:g} is above 1, but {name} is a fraction between 0 and 1 ({example})"


def check_fraction(name: str, value: Any, *, unit: str = "%") -> Any:
    """``value`` unchanged, or ValueError with :func:`fraction_error`'s message (for validators)."""
    msg = fraction_error(name, value, unit=unit)
    if msg is not None:
        raise ValueError(msg)
    return value
