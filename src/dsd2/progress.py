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


def run_label(cfg: Any) -> str:
    """The tag of a run's progress lines: its name and seed (pipelines side by side share stderr)."""
    return f"{cfg.name} seed {cfg.seed}"


def round_text(row: Mapping[str, Any]) -> str:
    """A finished round as every progress line shows it (the demo's, the API's and the pipeline's):
    ``round  3  sparsity  48.80%  test 69.00%``."""
    test = row.get("test_acc")
    return f"round {row['round']:>2}  sparsity {100 * row['sparsity']:6.2f}%  test {'-' if test is None else f'{100 * test:.2f}'}%"


class TextProgress:
    """Prints ``[label] round  r  sparsity  s%  test t%`` (:func:`round_text`) after each round and
    an epoch line at most every ``every_s`` seconds within a round."""

    def __init__(self, label: str = "", *, every_s: float = EVERY_S, stream: TextIO | None = None):
        self.prefix = f"[{label}] " if label else ""
        self.every_s = every_s
        self.stream = stream
        self.last_line = time.monotonic()

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
        self.say(round_text(row))


def callbacks(
    progress: bool | EpochCallback | None, on_round: RoundCallback | None, *, label: str = ""
) -> tuple[RoundCallback | None, EpochCallback | None, TextProgress | None]:
    """The (on_round, progress) pair a run gets, and the default printer when it is used:
    ``progress=True`` prints (and still calls ``on_round``), False or None prints nothing, a
    callable is called per epoch instead."""
    if progress is True:
        text = TextProgress(label)

        def both(row: Any) -> None:
            text.round_done(row)
            if on_round is not None:
                on_round(row)

        return both, text.epoch, text
    if callable(progress):
        return on_round, progress, None
    return on_round, None, None
