"""The Python API's default progress: a line per finished round, and now and then one mid-round.

``dsd2.run`` and ``dsd2.pipeline`` print these to stderr unless called with ``progress=False``
(a notebook cell that trains for minutes should not look hung); a callable replaces them.
Plain lines, no terminal control codes: they read the same in a notebook, a log and a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

EpochCallback = Callable[[int, int, Any], None]  # (round, epochs of the round, EpochLog)
RoundCallback = Callable[[Any], None]  # a RoundRow

# Seconds between two mid-round lines: often enough to show life, rare enough for 160-epoch rounds.
EVERY_S = 30.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class TextProgress:
    """Prints ``[label] round r/N: sparsity, accuracies (elapsed)`` after each round and an epoch
    line at most every ``every_s`` seconds within a round."""

    def __init__(self, label: str = "", last_round: int | None = None, *, every_s: float = EVERY_S, stream: TextIO | None = None):
        self.prefix = f"[{label}] " if label else ""
        self.last_round = last_round
        self.every_s = every_s
        self.stream = stream
        self.started = self.last_line = time.monotonic()

    def say(self, text: str) -> None:
        print(f"{self.prefix}{text}", file=self.stream or sys.stderr, flush=True)

    def epoch(self, round_idx: int, epochs: int, log: Any) -> None:
        now = time.monotonic()
        if now - self.last_line < self.every_s:
            return
        self.last_line = now
        loss = getattr(log, "loss", None)
        self.say(f"round {round_idx}: epoch {getattr(log, 'epoch', '?')}/{epochs}" + (f", loss {loss:.3f}" if loss is not None else ""))

    def round_done(self, row: Mapping[str, Any]) -> None:
        self.last_line = time.monotonic()
        of = f"/{self.last_round}" if self.last_round is not None else ""
        parts = [f"round {row['round']}{of}: {100 * row['sparsity']:.2f}% sparse"]
        for key, name in (("val_acc", "val"), ("test_acc", "test")):
            if row.get(key) is not None:
                parts.append(f"{name} {100 * row[key]:.2f}%")
        self.say(", ".join(parts) + f" ({_clock(self.last_line - self.started)} so far)")


def callbacks(
    progress: bool | EpochCallback | None, on_round: RoundCallback | None, *, label: str = "", last_round: int | None = None
) -> tuple[RoundCallback | None, EpochCallback | None, TextProgress | None]:
    """The (on_round, progress) pair a run gets, and the default printer when it is used:
    ``progress=True`` prints (and still calls ``on_round``), False or None prints nothing, a
    callable is called per epoch instead."""
    if progress is True:
        text = TextProgress(label, last_round)

        def both(row: Any) -> None:
            text.round_done(row)
            if on_round is not None:
                on_round(row)

        return both, text.epoch, text
    if callable(progress):
        return on_round, progress, None
    return on_round, None, None
