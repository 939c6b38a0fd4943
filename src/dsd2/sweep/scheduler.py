"""Jobs and their order: which runs a sweep needs, which are finished, what to start next.

A job is one run directory. A plain sweep has one job per cell; a pipeline sweep has a
student job per cell and a teacher job per distinct teacher config, which its students wait
for (cells whose teacher configs are equal share it). A job moves through :class:`State`::

    PENDING ──▶ RUNNING ──▶ DONE
       │           │  ▲
       │           └──┘  failed attempt, retries left (resumes from its last finished round)
       │           │
       ├───────────┴──────▶ FAILED   out of attempts, or its teacher failed
       └──▶ SKIPPED                  finished on disk before this invocation: no task started

:func:`schedule` is the loop. It yields an :class:`Event` for every change, *before* acting on
it, so a caller sees "started" before an in-process backend runs the task.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dsd2 import rundir
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.plugins import plugin_roots
from dsd2.sweep.backends import Backend
from dsd2.sweep.execute import Outcome, Task
from dsd2.sweep.spec import Cell, SweepSpec


class State(enum.Enum):
    PENDING = "pending"
    SKIPPED = "skipped"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = (State.DONE, State.SKIPPED)


@dataclass
class Job:
    key: str  # the run id: the run directory's name
    role: Literal["run", "teacher", "student"]
    config: RunConfig
    run_dir: Path
    deps: list[str]  # keys of the jobs that must finish first (a student's teacher)
    cells: list[int]  # indices of the cells that use this run
    attempts: int = 0
    state: State = State.PENDING
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    nodes: list[str | None] = field(default_factory=list)  # where each ended attempt ran (Outcome.node)


@dataclass(frozen=True)
class Event:
    """``status`` is what the cells hear: started, retrying, finished or failed.
    ``outcome``: the attempt that just ended, if one did."""

    job: Job
    status: str
    outcome: Outcome | None = None


def build_jobs(spec: SweepSpec, cells: list[Cell], out: Path) -> tuple[dict[str, Job], list[list[str]]]:
    """Jobs keyed by run id (teachers before their students), and each cell's job keys
    (teacher first for pipelines). A job's directory is where ``dsd2 run`` would put its config:
    an earlier run of the same settings (an older scheme's id included) is that job's run."""
    from dsd2.study import student_config

    jobs: dict[str, Job] = {}
    cell_jobs: list[list[str]] = []
    for cell in cells:
        if spec.pipeline:
            tcfg = cell.teacher_config
            assert tcfg is not None
            tkey = tcfg.run_id()
            tdir = rundir.run_dir_for(tcfg, out)
            if tkey not in jobs:
                jobs[tkey] = Job(tkey, "teacher", tcfg, tdir, [], [])
            jobs[tkey].cells.append(cell.index)
            scfg = student_config(tcfg, cell.config, tdir)
            skey = scfg.run_id()
            jobs[skey] = Job(skey, "student", scfg, rundir.run_dir_for(scfg, out), [tkey], [cell.index])
            cell_jobs.append([tkey, skey])
        else:
            key = cell.config.run_id()
            jobs[key] = Job(key, "run", cell.config, rundir.run_dir_for(cell.config, out), [], [cell.index])
            cell_jobs.append([key])
    return jobs, cell_jobs


def run_is_finished(cfg: RunConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds every round of ``cfg`` (or its early stop fired)."""
    run_dir = Path(run_dir)
    if not rundir.config_path(run_dir).is_file():
        return False
    try:
        return rundir.is_complete(cfg, len(rundir.finished_rounds(run_dir)), run_dir)
    except UserError:
        return False  # a corrupt round or decision file: let the run itself report it


def skip_finished(jobs: dict[str, Job]) -> list[Job]:
    """Mark the pending jobs whose runs are finished on disk SKIPPED; return them."""
    skipped = [j for j in jobs.values() if j.state is State.PENDING and run_is_finished(j.config, j.run_dir)]
    for job in skipped:
        job.state = State.SKIPPED
    return skipped


def _failed_dependency(job: Job, jobs: dict[str, Job]) -> Job | None:
    return next((jobs[d] for d in job.deps if jobs[d].state is State.FAILED), None)


def place_student(job: Job) -> None:
    """A student's run directory, named once its teacher has trained: the student's id counts its
    teacher's run (folder name and digest), and before the teacher exists only its path (the folder
    :func:`build_jobs` named would hash the sweep's --out folder into the student's name)."""
    if job.deps:
        job.run_dir = rundir.run_dir_for(job.config, job.run_dir.parent)


def _start(job: Job, backend: Backend, threads: int, processes: int = 1) -> None:
    job.attempts += 1
    job.state = State.RUNNING
    place_student(job)
    roots = tuple(plugin_roots(job.config.plugins))
    backend.submit(job.key, Task(job.config.resolved(), str(job.run_dir), threads, roots, processes))


def schedule(jobs: dict[str, Job], backend: Backend, *, retries: int, threads: int, processes: int = 1) -> Iterator[Event]:
    """Run every pending job on ``backend``, teachers before their students, each up to
    ``1 + retries`` times; stop when nothing is left to run or wait for."""
    limit = backend.slots or len(jobs)
    in_flight = 0
    while True:
        for job in jobs.values():
            if job.state is not State.PENDING:
                continue
            failed = _failed_dependency(job, jobs)
            if failed is not None:
                job.state = State.FAILED
                job.errors.append(f"teacher run failed: {failed.errors[-1] if failed.errors else ''}")
                yield Event(job, "failed")
            elif in_flight < limit and all(jobs[d].state in FINISHED for d in job.deps):
                yield Event(job, "started")
                _start(job, backend, threads, processes)
                in_flight += 1
        if in_flight == 0:
            return
        key, outcome = backend.wait()
        in_flight -= 1
        job = jobs[key]
        job.wall_s += outcome.wall_s
        job.nodes.append(outcome.node)
        if outcome.ok:
            job.state = State.DONE
            yield Event(job, "finished", outcome)
            continue
        job.errors.append(outcome.error or "unknown error")
        if job.attempts <= retries:
            yield Event(job, "retrying", outcome)
            _start(job, backend, threads, processes)
            in_flight += 1
        else:
            job.state = State.FAILED
            yield Event(job, "failed", outcome)
