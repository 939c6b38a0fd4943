"""Failure injection for the sweep tests: a fake backend and a Ray worker that dies once.

Production code has no failure hook; these stand in for a crashing run from the outside,
through the two seams the sweep has anyway: the backend (``Backend``) and the worker a Ray
backend runs (``RayBackend(worker=...)``).
"""

from __future__ import annotations

import os
from pathlib import Path

from dsd2.sweep import Outcome, Task, run_task


def _raise_after(round_: int, name: str):
    def on_round(row) -> None:
        if row["round"] == round_:
            raise RuntimeError(f"simulated failure of {name} after round {round_}")

    return on_round


class FakeBackend:
    """In-process backend that fails chosen runs on their first attempt.

    ``fail`` maps a run name (a cell's, or a teacher's) to ``None``: the attempt fails before
    anything runs, or to a round: the run raises right after that round is saved, so the next
    attempt has something to resume. ``run=False`` runs nothing at all (every other attempt
    succeeds at once), to test the scheduler alone. ``slots`` as in ``Backend``; outcomes come
    back in submit order.
    """

    name = "fake"

    def __init__(self, fail: dict[str, int | None] | None = None, *, run: bool = True, slots: int | None = 1) -> None:
        self.fail = dict(fail or {})
        self.run = run
        self.slots = slots
        self.submitted: list[str] = []  # run names, one per attempt, in submit order
        self.most_in_flight = 0
        self.closed = False
        self._in_flight: list[tuple[str, Outcome]] = []

    def _attempt(self, task: Task) -> Outcome:
        name = task.config["name"]
        if name in self.fail and self.submitted.count(name) == 1:
            at = self.fail[name]
            if at is None:
                return Outcome(ok=False, error=f"simulated failure of {name} at the start")
            if self.run:
                return run_task(task, on_round=_raise_after(at, name))
            return Outcome(ok=False, error=f"simulated failure of {name} after round {at}")
        return run_task(task) if self.run else Outcome(ok=True, wall_s=1.0)

    def submit(self, key: str, task: Task) -> None:
        self.submitted.append(task.config["name"])
        self._in_flight.append((key, self._attempt(task)))
        self.most_in_flight = max(self.most_in_flight, len(self._in_flight))

    def wait(self) -> tuple[str, Outcome]:
        return self._in_flight.pop(0)

    def cancel(self) -> None:
        self._in_flight.clear()

    def close(self) -> None:
        self.closed = True


class KillAfterRound:
    """A Ray worker: the process running run ``name`` exits (``os._exit``, as if killed) right
    after round ``round_`` is saved, the first time only; ``marker`` is written just before, so
    a test can tell which files came before the kill. Every other task runs normally."""

    def __init__(self, name: str, round_: int, marker: Path) -> None:
        self.name = name
        self.round_ = round_
        self.marker = str(marker)

    def __call__(self, task: Task) -> Outcome:
        if task.config["name"] != self.name or Path(self.marker).exists():
            return run_task(task)
        return run_task(task, on_round=self._die_after_round)

    def _die_after_round(self, row) -> None:
        if row["round"] == self.round_:
            Path(self.marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self.marker).write_text("killed once\n")
            os._exit(1)
