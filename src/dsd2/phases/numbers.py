"""Checks and argmax/argmin of the per-round number lists that phase labelling and early
stopping read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

from dsd2.errors import UserError


@overload
def floats(name: str, xs: None, n: int | None) -> None: ...
@overload
def floats(name: str, xs: Sequence[float], n: int | None) -> list[float]: ...
def floats(name: str, xs: Sequence[float] | None, n: int | None) -> list[float] | None:
    if xs is None:
        return None
    out = [float(x) for x in xs]
    if n is not None and len(out) != n:
        raise UserError(f"{name} has {len(out)} values, expected {n} (one per round)")
    if any(math.isnan(x) for x in out):
        raise UserError(f"{name} contains NaN")
    return out


def argmax_last(xs: Sequence[float], lo: int, hi: int) -> int:
    """Index of the maximum of xs[lo:hi], ties → largest index."""
    best = lo
    for i in range(lo, hi):
        if xs[i] >= xs[best]:
            best = i
    return best


def argmin_last(xs: Sequence[float], lo: int, hi: int) -> int:
    best = lo
    for i in range(lo, hi):
        if xs[i] <= xs[best]:
            best = i
    return best
