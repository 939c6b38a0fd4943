"""``dsd2 sweep``: the cost estimate, the run, and the table of cells, for a terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsd2.errors import UserError
from dsd2.sweep.aggregate import SweepResult
from dsd2.sweep.cost import DEFAULT_GPU_TFLOPS, estimate_cost, format_cost
from dsd2.sweep.run import run_sweep
from dsd2.sweep.spec import Cell, SweepSpec, expand, load_sweep


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.2f}"


class _Progress:
    """Prints ``[done/total] cell: status``; a cell counts as done once finished, failed or skipped."""

    def __init__(self, console: Any, total: int) -> None:
        self.console = console
        self.total = total
        self.done = 0

    def __call__(self, cell: Cell, status: str) -> None:
        if status in ("finished", "failed", "skipped"):
            self.done += 1
        self.console.print(f"[{self.done}/{self.total}] {cell.name}: {status}", highlight=False, markup=False)


def _cells_table(result: SweepResult, out: str | Path, width: int = 160):
    """One row per cell. Cell names fold instead of being cut; below 120 columns the run-folder
    column is left out unless a cell failed (the caption says where the folders are)."""
    from rich.table import Table

    spec = result.spec
    failed = any(cell.error for cell in result.cells)
    show_dirs = width >= 120 or failed
    caption = None if show_dirs else f"run directories: {Path(out)}/<cell>-<hash>"
    table = Table(title=f"sweep {spec.name}", caption=caption, caption_justify="left")
    table.add_column("cell", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("tries", justify="right")
    prefixes = ["teacher_", "student_"] if spec.pipeline else [""]
    for p in prefixes:
        who = p[0] + " " if p else ""  # t / s: the caption of a pipeline sweep says which
        table.add_column(f"{who}best %", justify="right")
        table.add_column(f"{who}at sp. %", justify="right")
        table.add_column(f"{who}dip pt", justify="right")
    if show_dirs:
        table.add_column(f"run dir (in {Path(out)}) / error", overflow="fold")
    if spec.pipeline:
        table.caption = "t = teacher, s = student" + (f"; {caption}" if caption else "")
    for cell, row in zip(result.cells, result.summary):
        status = "skipped (done)" if cell.skipped else cell.status
        vals = []
        for p in prefixes:
            dip = row.get(f"{p}dip_depth")
            vals += [_pct(row.get(f"{p}best_acc")), _pct(row.get(f"{p}best_sparsity")), "" if dip is None else f"{100 * dip:.2f}"]
        last = [cell.error or Path(cell.run_dir).name] if show_dirs else []
        table.add_row(cell.name, status, str(cell.attempts), *vals, *last)
    return table


def sweep_main(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path = "runs",
    backend: str = "ray",
    address: str | None = None,
    max_parallel: int | None = None,
    dry_run: bool = False,
    *,
    gpu_tflops: float = DEFAULT_GPU_TFLOPS,
    measure_steps: int | None = None,
    console: Any = None,
    plugins: list[str] | tuple[str, ...] = (),
    fuse: bool = False,
) -> int:
    """``dsd2 sweep``: print the cost estimate, run (unless ``dry_run``), print the cells.

    ``plugins`` (``--plugin``) join the sweep's ``plugins``: every cell's config records them.
    ``measure_steps`` (``--measure``): time each model on this machine (:mod:`.measure`) instead
    of assuming ``gpu_tflops``.
    ``fuse`` (``--fuse``): train the cells that can train together as fused groups first
    (:mod:`dsd2.sweep.fuse`; the dry run lists the groups).
    Returns 0 when every cell finished (or on a dry run), 1 when some failed. UserErrors
    (bad sweep file, bad cell config) propagate for the CLI to print.
    """
    from rich.console import Console

    console = console or Console()
    if address is not None and address != "auto":
        from dsd2.sweep.backends import host_port

        host_port(address)  # a malformed --address is refused before anything is read or started
    spec = load_sweep(path, list(overrides), plugins=plugins)
    cells = expand(spec)
    console.print(_cost_text(spec, cells, gpu_tflops, measure_steps), highlight=False, markup=False, soft_wrap=True)
    if fuse:
        _fused_groups(spec, cells, out, dry_run, console)
    if dry_run:
        console.print(f"dry run: {len(cells)} cells of sweep {spec.name}, nothing started (out: {out})", markup=False)
        return 0
    progress = _Progress(console, len(cells))
    result = run_sweep(spec, out=out, backend=backend, address=address, max_parallel=max_parallel, on_event=progress)
    return _print_result(result, out, console)


def _cost_text(spec: SweepSpec, cells: list[Cell], gpu_tflops: float, measure_steps: int | None) -> str:
    """The cost estimate's table (measured on this machine with ``measure_steps``), or why there is none."""
    try:
        throughput = None
        if measure_steps is not None:
            from dsd2.sweep.measure import measured_throughput

            throughput = measured_throughput(measure_steps)
        return format_cost(estimate_cost(spec, gpu_tflops=gpu_tflops, cells=cells, throughput=throughput))
    except UserError as err:  # e.g. a dataset without a known input shape: run anyway
        return f"cost estimate unavailable: {err}"


def _print_result(result: SweepResult, out: str | Path, console: Any) -> int:
    """Print the cells, the summaries and the report; 0 when every cell finished, 1 when some failed."""
    console.print(_cells_table(result, out, console.width))
    console.print(f"summaries: {result.sweep_dir}/summary.csv, summary_by_point.csv, all_rounds.csv, sweep.json", markup=False)
    if any(c.status == "finished" for c in result.cells):
        from dsd2.report.sweep import write_sweep_report

        console.print(f"report: {write_sweep_report(result.sweep_dir)}", markup=False)
    if not result.ok:
        console.print(
            f"{len(result.failed)} of {len(result.cells)} cells failed; run the sweep again to retry them (finished runs are skipped)",
            markup=False,
        )
        return 1
    return 0


def _fused_groups(spec, cells: list[Cell], out: str | Path, dry_run: bool, console: Any) -> None:
    """``--fuse``: list the fused groups of the unfinished runs; unless a dry run, train them."""
    from dsd2.sweep.fuse import describe_groups, fuse_groups, run_groups
    from dsd2.sweep.scheduler import build_jobs, skip_finished

    jobs, _ = build_jobs(spec, cells, Path(out).expanduser().resolve())
    skip_finished(jobs)
    groups = fuse_groups(jobs)
    for line in describe_groups(groups):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if not dry_run:
        run_groups(groups, lambda line: console.print(line, highlight=False, markup=False))
