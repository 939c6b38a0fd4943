"""What a worker runs for one job: resume or start one IMP run, and say how it went.

``Task`` and ``Outcome`` are plain data, so they cross process boundaries (Ray pickles them);
:func:`run_task` never raises for a failing run: the sweep goes on and reports it per cell.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsd2.config import validate_config
from dsd2.errors import UserError
from dsd2.plugins import load_plugins

if TYPE_CHECKING:
    from dsd2.rundir import RoundRow


@dataclass(frozen=True)
class Task:
    """One attempt at one run: the resolved config, its run directory, torch threads."""

    config: dict[str, Any]
    run_dir: str
    threads: int
    # folders the driver imported the config's plugins from: a worker may not start where it did
    plugin_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. ``error`` is one line for the tables; ``traceback`` is kept for
    unexpected exceptions only (a UserError explains itself)."""

    ok: bool
    error: str | None = None
    traceback: str | None = None
    wall_s: float = 0.0
    node: str | None = None  # the Ray node that ran it (None: in-process, or it died with its worker)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    # the sequential backend runs in the caller's process: give its thread count back.
    # train.threads=auto decides within this cap (dsd2.threads): one thread per cell by default.
    import torch

    from dsd2.threads import sharing

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with sharing(cap=n):
            yield
    finally:
        torch.set_num_threads(before)


def run_task(task: Task, on_round: Callable[[RoundRow], None] | None = None) -> Outcome:
    """Run (or resume: ``imp.run`` continues from the last finished round) the run of ``task``,
    after importing its plugins (a plugin that fails to import fails the attempt, naming it).

    ``on_round(row)`` is passed to ``imp.run``: it is called after every finished round.
    """
    t0 = time.perf_counter()
    try:
        from dsd2 import imp

        load_plugins(task.config.get("plugins") or (), paths=task.plugin_paths)
        with _torch_threads(task.threads):
            cfg = validate_config(task.config, source="sweep cell config")
            run_dir = Path(task.run_dir)
            imp.run(cfg, run_dir.parent, run_dir=run_dir, on_round=on_round)
        return Outcome(ok=True, wall_s=time.perf_counter() - t0)
    except UserError as err:
        return Outcome(ok=False, error=str(err), wall_s=time.perf_counter() - t0)
    except Exception as err:
        return Outcome(ok=False, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(), wall_s=time.perf_counter() - t0)
