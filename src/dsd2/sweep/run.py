"""Run (or resume) a sweep: jobs from the cells, skip what is finished, schedule the rest on a
backend, keep ``sweep.json`` current, aggregate at the end.

Every cell is a normal run directory ``out/<cell name>-<hash>`` (pipelines: a teacher run
``out/<sweep>_teacher[_<params>]-<hash>``, shared by cells whose teacher configs are equal,
plus the student run ``out/<cell name>-<hash>``). A failed run is retried up to ``retries``
times and resumes from its last finished round (``imp.run`` resumes); the traceback of an
unexpected error is kept in ``out/<sweep>/errors/<run name>.attempt<n>.txt``.

On a Ray cluster (``address=``) every node needs this package installed and the cells' plugins
importable (from the folders the driver imported them from, or installed), and ``out`` must be
a path on a filesystem that all nodes and the driver share (it is made absolute on the driver;
the student's ``distill.teacher`` is that absolute teacher path).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from dsd2 import store
from dsd2.errors import UserError
from dsd2.sweep.aggregate import SweepResult, cell_results, check_sweep_folder, write_outputs, write_sweep_json
from dsd2.sweep.backends import BACKENDS, Backend, make_backend
from dsd2.sweep.scheduler import Event, Job, State, build_jobs, schedule, skip_finished
from dsd2.sweep.spec import Cell, SweepSpec, expand

EventCallback = Callable[[Cell, str], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tell(on_event: EventCallback | None, cells: list[Cell], job: Job, status: str) -> None:
    """Tell every cell that uses ``job``; a teacher's statuses read ``teacher <status>``."""
    if on_event is None:
        return
    label = f"teacher {status}" if job.role == "teacher" else status
    for i in job.cells:
        on_event(cells[i], label)


def _keep_traceback(sweep_dir: Path, event: Event) -> None:
    if event.outcome is not None and event.outcome.traceback:
        name = f"{event.job.config.name}.attempt{event.job.attempts}.txt"
        store.atomic_write_text(sweep_dir / "errors" / name, event.outcome.traceback)


def run_sweep(
    spec: SweepSpec,
    *,
    out: str | Path = "runs",
    backend: str | Backend = "ray",
    address: str | None = None,
    max_parallel: int | None = None,
    on_event: EventCallback | None = None,
) -> SweepResult:
    """Run (or resume) every cell of ``spec``; return the per-cell results and summaries.

    ``backend``: ``"ray"``, ``"sequential"`` or a :class:`~dsd2.sweep.backends.Backend`; it is
    made (or used) only when some run is not finished, so a finished sweep starts no Ray, and
    then closed at the end. ``address`` and ``max_parallel`` (runs in flight at most; None: as
    many as the resources allow) go to a Ray backend made here.

    ``on_event(cell, status)`` is called with status ``skipped`` (finished before: no task
    started), ``started``, ``retrying``, ``finished`` or ``failed``; for the teacher stage of a
    pipeline the status is prefixed with ``"teacher "`` (once per cell that uses the teacher).
    """
    if isinstance(backend, str) and backend not in BACKENDS:
        raise UserError(f"unknown sweep backend {backend!r}: use ray or sequential")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"max_parallel must be >= 1, got {max_parallel}")
    out = Path(out).expanduser().resolve()
    cells = expand(spec)
    sweep_dir = out / spec.name
    check_sweep_folder(sweep_dir)  # before any run starts: its files are the sweep's to replace
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs, cell_jobs = build_jobs(spec, cells, out)
    meta = {"out": str(out), "backend": backend if isinstance(backend, str) else backend.name, "address": address, "started": _now()}

    with store.run_lock(sweep_dir):
        for job in skip_finished(jobs):
            _tell(on_event, cells, job, "skipped")
        write_sweep_json(spec, sweep_dir, cell_results(cells, jobs, cell_jobs), meta)
        runner: Backend | None = None
        try:
            if any(j.state is State.PENDING for j in jobs.values()):
                runner = make_backend(backend, spec.resources, address, max_parallel) if isinstance(backend, str) else backend
                for event in schedule(
                    jobs, runner, retries=spec.retries, threads=spec.resources.threads, processes=spec.resources.processes
                ):
                    _keep_traceback(sweep_dir, event)
                    _tell(on_event, cells, event.job, event.status)
                    if event.outcome is not None:  # an attempt ended: record it
                        write_sweep_json(spec, sweep_dir, cell_results(cells, jobs, cell_jobs), meta)
        except BaseException:
            if runner is not None:
                runner.cancel()
            meta["interrupted"] = _now()
            write_sweep_json(spec, sweep_dir, cell_results(cells, jobs, cell_jobs), meta)
            raise
        finally:
            if runner is not None:
                runner.close()
        meta["finished"] = _now()
        results = cell_results(cells, jobs, cell_jobs)
        summary, by_point = write_outputs(spec, sweep_dir, cells, results, meta)
    return SweepResult(spec, sweep_dir, results, summary, by_point)
