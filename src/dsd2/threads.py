"""How many torch CPU threads a run uses: the one rule for ``dsd2 run``, the demo, sweeps and tests.

:func:`decide_threads` is pure; :func:`resolve_threads` reads the machine (usable cores, load
average), takes the process's :class:`Share` from its caller (whoever starts several runs side by
side passes it down to the run: ``imp.run(..., share=...)``) and says once per process when the
machine is busy. The rule:

1. a training step below :data:`THRESHOLD_FLOPS_PER_STEP` (forward + backward FLOPs of one
   batch) gets 1 thread: more threads only add synchronisation (docs/performance.md);
2. otherwise the usable cores divided among the processes that share the machine, less the
   DataLoader workers of this process, at most ``cap`` (a sweep cell's CPUs), at least 1;
3. when the 1-minute load average is above the usable cores the machine is already
   oversubscribed: the share gives back the excess (``ceil(load - cores)`` threads, at least 1
   stays), and a line on stderr says so once per process.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

# Measured by benchmarks/threads_threshold.py (benchmarks/results/threads_threshold.json): the
# geometric mean of the largest step that is not 10% faster on 2 threads than on 1 and the
# smallest that is, on this project's 2-core machine, rounded.
THRESHOLD_FLOPS_PER_STEP = 1.7e7


@dataclass(frozen=True)
class ThreadChoice:
    """The decision and what it was made from (recorded in the run's timings)."""

    threads: int
    cores: int
    processes: int
    load: float | None
    busy: bool
    reason: str

    def busy_message(self) -> str:
        return (
            f"machine busy: load {self.load:.1f} on {self.cores} core(s); using {self.threads} thread(s) per run "
            "(set train.threads to choose)"
        )


def decide_threads(
    step_flops: float,
    *,
    cores: int,
    processes: int = 1,
    load: float | None = None,
    loader_workers: int = 0,
    cap: int | None = None,
    threshold: float = THRESHOLD_FLOPS_PER_STEP,
) -> ThreadChoice:
    """Torch threads for one run whose training step costs ``step_flops`` (see the module doc)."""
    cores, processes = max(1, cores), max(1, processes)
    busy = load is not None and load > cores
    if step_flops < threshold:
        return ThreadChoice(1, cores, processes, load, busy, f"step of {step_flops:.3g} FLOPs is below {threshold:.3g}")
    share = cores // processes - max(0, loader_workers)
    reason = f"{cores} core(s) / {processes} process(es)" + (f" - {loader_workers} loader worker(s)" if loader_workers else "")
    if busy:
        assert load is not None
        share -= math.ceil(load - cores)
        reason += f", load {load:.1f} above the cores"
    if cap is not None and share > cap:
        share = cap
        reason += f", capped at {cap}"
    return ThreadChoice(max(1, share), cores, processes, load, busy, reason)


def usable_cores() -> int:
    """CPUs this process may run on (affinity), bounded by a cgroup v2 CPU quota when there is one."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Share:
    """This process's part of the machine: ``processes`` runs side by side, ``cap`` threads at most."""

    processes: int = 1
    cap: int | None = None


_warned = False  # the busy-machine line is said once per process
# A Python caller that asked for no output (dsd2.run/pipeline with progress=False) gets no busy line.
_silent: ContextVar[bool] = ContextVar("dsd2_threads_silent", default=False)


@contextlib.contextmanager
def silent(on: bool = True) -> Iterator[None]:
    """Inside, :func:`resolve_threads` prints nothing when ``on`` (the choice is still recorded in timings.csv)."""
    token = _silent.set(on)
    try:
        yield
    finally:
        _silent.reset(token)


def resolve_threads(step_flops: float, *, share: Share = Share(), loader_workers: int = 0) -> ThreadChoice:
    """:func:`decide_threads` on this machine for a run with ``share`` of it; says once when the machine is busy."""
    global _warned
    choice = decide_threads(
        step_flops,
        cores=usable_cores(),
        processes=share.processes,
        load=load_average(),
        loader_workers=loader_workers,
        cap=share.cap,
    )
    if choice.busy and not _warned and not _silent.get():
        _warned = True
        print(choice.busy_message(), file=sys.stderr, flush=True)
    return choice
