"""The sweep's own files, from its cells' run directories and its jobs' states.

Written to ``out/<sweep name>/``:

- ``sweep.json``: the spec, and per cell its params, status, attempts, errors, run dirs and
  the Ray node of each attempt (``nodes``, ``teacher_nodes``)
  (rewritten as the sweep goes, so an interrupted sweep leaves one too);
- ``all_rounds.csv``: every row of every cell's ``rounds.csv``, with ``cell``, the grid
  params, ``role`` (run / teacher / student) and ``run_dir`` prepended;
- ``summary.csv``: one row per cell (best selection accuracy, its round and sparsity, dense
  accuracy, recovered-dip depth; pipelines: ``teacher_*`` and ``student_*`` columns);
- ``summary_by_point.csv``: finished cells grouped over ``seed``: ``<metric>_mean`` and
  ``<metric>_std`` (sample std, ddof=1; empty for a single seed) per grid point.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsd2 import store
from dsd2.errors import UserError
from dsd2.file_schemas import SweepInfo
from dsd2.sweep.scheduler import FINISHED, Job, State
from dsd2.sweep.spec import Cell, SweepSpec

RUN_METRICS = [
    "rounds_done",
    "dense_acc",
    "best_acc",
    "best_round",
    "best_sparsity",
    "best_test_acc",
    "dip_depth",
    "dip_sparsity",
    "final_sparsity",
]


@dataclass
class CellResult:
    name: str
    params: dict[str, Any]
    status: str  # finished | failed | pending (interrupted)
    skipped: bool  # finished before this sweep invocation: no task was started
    attempts: int  # attempts of the cell's run (pipelines: the student) in this invocation
    run_dir: str
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    teacher_dir: str | None = None
    teacher_attempts: int = 0
    wall_s: float = 0.0
    nodes: list[str | None] = field(default_factory=list)  # Ray node id of each attempt (None: unknown or in-process)
    teacher_nodes: list[str | None] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SweepResult:
    spec: SweepSpec
    sweep_dir: Path
    cells: list[CellResult]
    summary: list[dict[str, Any]]
    summary_by_point: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return all(c.status == "finished" for c in self.cells)

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if c.status != "finished"]


# ----------------------------------------------------------------------------- cells from jobs


def _cell_error(jobs: list[Job]) -> str | None:
    """The error shown for a cell: its first failed job's last error."""
    failed = next((j for j in jobs if j.state is State.FAILED), None)
    if failed is None:
        return None
    if not failed.errors:
        return "failed"
    if failed.role == "teacher" and failed is not jobs[-1]:
        return f"teacher run failed: {failed.errors[-1]}"
    return failed.errors[-1]


def cell_result(cell: Cell, jobs: list[Job]) -> CellResult:
    """A cell's result from its jobs (pipelines: teacher, then student)."""
    main = jobs[-1]
    teacher = jobs[0] if main.role == "student" else None
    if any(j.state is State.FAILED for j in jobs):
        status = "failed"
    elif all(j.state in FINISHED for j in jobs):
        status = "finished"
    else:
        status = "pending"
    return CellResult(
        name=cell.name,
        params=cell.params,
        status=status,
        skipped=all(j.state is State.SKIPPED for j in jobs),
        attempts=main.attempts,
        run_dir=str(main.run_dir),
        error=_cell_error(jobs),
        errors=[f"teacher: {e}" for e in (teacher.errors if teacher else [])] + list(main.errors),
        teacher_dir=str(teacher.run_dir) if teacher else None,
        teacher_attempts=teacher.attempts if teacher else 0,
        wall_s=sum(j.wall_s for j in jobs),
        nodes=list(main.nodes),
        teacher_nodes=list(teacher.nodes) if teacher else [],
    )


def cell_results(cells: list[Cell], jobs: dict[str, Job], cell_jobs: list[list[str]]) -> list[CellResult]:
    return [cell_result(cell, [jobs[k] for k in keys]) for cell, keys in zip(cells, cell_jobs)]


# ----------------------------------------------------------------------------- summaries


def run_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best selection accuracy (val, else test), its round/sparsity/test acc, dense accuracy
    and the recovered-dip depth of one run's rounds."""
    from dsd2.compare import best_round, recovered_dip, selection_column

    if not rows:
        return {"selection": None, **{m: None for m in RUN_METRICS}}
    col = selection_column(rows)
    best = best_round(rows, col)
    dip = recovered_dip(rows, col)
    return {
        "selection": col,
        "rounds_done": len(rows),
        "dense_acc": rows[0][col] if rows[0]["round"] == 0 else None,
        "best_acc": rows[best][col],
        "best_round": rows[best]["round"],
        "best_sparsity": rows[best]["sparsity"],
        "best_test_acc": rows[best]["test_acc"],
        "dip_depth": dip.depth,
        "dip_sparsity": rows[dip.trough]["sparsity"] if dip.trough is not None else None,
        "final_sparsity": rows[-1]["sparsity"],
    }


def _rows(run_dir: str | Path | None) -> list[dict[str, Any]]:
    if not run_dir:
        return []
    from dsd2 import rundir

    path = rundir.rounds_csv_path(run_dir)
    return store.read_csv(path) if path.is_file() else []


def _plain(value: Any) -> Any:
    """A CSV-friendly grid value (lists and mappings as JSON)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def group_by_point(summary: list[dict[str, Any]], grid_keys: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Finished cells grouped over ``seed``: mean and sample std of each metric per point."""
    point_keys = [k for k in grid_keys if k != "seed"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in summary:
        if row.get("status") != "finished":
            continue
        gk = json.dumps([row.get(k) for k in point_keys], default=str)
        groups.setdefault(gk, []).append(row)
    out = []
    for rows in groups.values():
        point = {k: rows[0].get(k) for k in point_keys}
        point["n"] = len(rows)
        point["seeds"] = " ".join(str(r.get("seed", r.get("cell"))) for r in rows) if "seed" in grid_keys else ""
        for m in metrics:
            mean, std = _mean_std([r.get(m) for r in rows])
            point[f"{m}_mean"] = mean
            point[f"{m}_std"] = std
        out.append(point)
    return out


def _cell_rows(spec: SweepSpec, cell: Cell, res: CellResult) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One cell's summary row and its all_rounds rows."""
    prefix = {"cell": cell.name, **{k: _plain(v) for k, v in cell.params.items()}}
    runs = [("teacher", res.teacher_dir), ("student", res.run_dir)] if spec.pipeline else [("run", res.run_dir)]
    row: dict[str, Any] = {**prefix, "status": res.status, "attempts": res.attempts}
    all_rows: list[dict[str, Any]] = []
    for role, run_dir in runs:
        rows = _rows(run_dir)
        all_rows += [{**prefix, "role": role, "run_dir": run_dir, **r} for r in rows]
        stats = run_summary(rows)
        if spec.pipeline:
            row[f"{role}_dir"] = run_dir
            row.update({f"{role}_{k}": v for k, v in stats.items()})
        else:
            row["run_dir"] = run_dir
            row.update(stats)
    row["error"] = res.error
    return row, all_rows


# What a sweep writes in out/<sweep name>/; sweep.json first, so a folder without it holds none of them.
SWEEP_RECORD = "sweep.json"
SWEEP_OUTPUTS = ("summary.csv", "summary_by_point.csv", "all_rounds.csv", "errors", "report")


def check_sweep_folder(sweep_dir: Path) -> None:
    """Refuse a sweep folder whose files the sweep would replace but did not write: a sweep.json
    that is not a dsd2 sweep's record, or summaries, errors or a report without one."""
    how = "move your files, or give the sweep another name (name: in the sweep file) or another --out"
    record = sweep_dir / SWEEP_RECORD
    if record.exists() or record.is_symlink():
        not_ours = "not a dsd2 sweep's record, which the sweep would replace"
        if record.is_symlink():
            raise UserError(f"{record} is a symbolic link (to {os.readlink(record)}), {not_ours}; {how}")
        info = store.read_json_dict(record, SweepInfo, hint=f"{not_ours}; {how}")
        spec = info.get("spec")
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)):
            raise UserError(f"{record} is {not_ours} (it has no spec.name); {how}")
        return
    foreign = [n for n in SWEEP_OUTPUTS if (sweep_dir / n).exists() or (sweep_dir / n).is_symlink()]
    if foreign:
        raise UserError(
            f"{sweep_dir} holds {', '.join(foreign)} but no {SWEEP_RECORD}: no dsd2 sweep wrote them, and this one would replace them; {how}"
        )


def write_outputs(
    spec: SweepSpec,
    sweep_dir: Path,
    cells: list[Cell],
    results: list[CellResult],
    meta: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write all four files; return the summary and the per-point summary."""
    all_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for cell, res in zip(cells, results):
        row, rows = _cell_rows(spec, cell, res)
        summary.append(row)
        all_rows += rows
    if spec.pipeline:
        metrics = [f"{role}_{m}" for role in ("teacher", "student") for m in RUN_METRICS]
    else:
        metrics = list(RUN_METRICS)
    by_point = group_by_point(summary, list(spec.grid), metrics)
    store.write_csv(sweep_dir / "all_rounds.csv", all_rows)
    store.write_csv(sweep_dir / "summary.csv", summary)
    store.write_csv(sweep_dir / "summary_by_point.csv", by_point)
    write_sweep_json(spec, sweep_dir, results, meta)
    return summary, by_point


def write_sweep_json(spec: SweepSpec, sweep_dir: Path, results: list[CellResult], meta: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    store.write_json(
        sweep_dir / SWEEP_RECORD,
        {
            **meta,
            "spec": spec.model_dump(mode="json"),
            "counts": counts,
            "cells": [r.as_dict() for r in results],
        },
    )
