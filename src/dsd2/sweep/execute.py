"""What a worker runs for one job: resume or start one IMP run, and say how it went.

``Task`` and ``Outcome`` are plain data, so they cross process boundaries (Ray pickles them);
:func:`run_task` never raises for a failing run: the sweep goes on and reports it per cell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dsd2.config import validate_config
from dsd2.errors import UserError
from dsd2.plugins import load_plugins
from dsd2.threads import Share

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
    # >1: the run is a data-parallel job of this many processes (torchrun in a subprocess)
    processes: int = 1


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
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_task(task: Task, on_round: Callable[[RoundRow], None] | None = None) -> Outcome:
    """Run (or resume: ``imp.run`` continues from the last finished round) the run of ``task``,
    after importing its plugins (a plugin that fails to import fails the attempt, naming it).

    ``on_round(row)`` is passed to ``imp.run``: it is called after every finished round.
    """
    if task.processes > 1:
        return run_ddp_task(task)
    t0 = time.perf_counter()
    try:
        from dsd2 import imp

        load_plugins(task.config.get("plugins") or (), paths=task.plugin_paths)
        with _torch_threads(task.threads):
            cfg = validate_config(task.config, source="sweep cell config")
            run_dir = Path(task.run_dir)
            # train.threads=auto decides within the cell's threads (one per cell by default)
            imp.run(cfg, run_dir.parent, run_dir=run_dir, on_round=on_round, share=Share(cap=task.threads))
        return Outcome(ok=True, wall_s=time.perf_counter() - t0)
    except UserError as err:
        return Outcome(ok=False, error=str(err), wall_s=time.perf_counter() - t0)
    except Exception as err:
        return Outcome(ok=False, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(), wall_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- data-parallel cells

_STDERR_KEPT = 60  # lines of a failed job's stderr kept in out/<sweep>/errors/


def ddp_command(task: Task, config_file: str | None) -> list[str]:
    """The torchrun command of a data-parallel attempt: the CLI's own launcher, so a sweep cell is
    the same job as ``torchrun -m dsd2 run``. An existing run directory is resumed (retries)."""
    run_dir = Path(task.run_dir)
    target = [str(run_dir)] if config_file is None else [config_file, "--out", str(run_dir.parent)]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={task.processes}"]
    return [*launch, "-m", "dsd2", "run", *target, "-q"]


def ddp_env(task: Task) -> dict[str, str]:
    """This process's environment, plus the plugin folders (the job's processes import them) and
    the threads per process (torch reads OMP_NUM_THREADS at start)."""
    env = dict(os.environ)
    paths = [*task.plugin_paths, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OMP_NUM_THREADS"] = str(task.threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def last_error_line(stderr: str) -> str:
    """The line of a failed job's stderr that says why: dsd2's ``error: ...`` when a rank printed
    one, else the last line that is not torchrun's ``====`` frame."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("error:")]
    if ours:
        return ours[-1].removeprefix("error:").strip()
    text = [ln for ln in lines if ln.strip("=-") and not ln.startswith(("[rank", "  "))]
    return text[-1] if text else "the job failed without a message"


def run_ddp_task(task: Task) -> Outcome:
    """Run (or resume) the attempt as ``torchrun --standalone --nproc_per_node N -m dsd2 run``;
    a non-zero exit fails the attempt with the job's last error line."""
    from dsd2 import rundir

    t0 = time.perf_counter()
    run_dir = Path(task.run_dir)
    with tempfile.TemporaryDirectory(prefix="dsd2-cell-") as tmp:
        config_file = None
        if not rundir.config_path(run_dir).is_file():
            config_file = str(Path(tmp) / rundir.CONFIG)
            Path(config_file).write_text(yaml.safe_dump(task.config, sort_keys=False))
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            res = subprocess.run(ddp_command(task, config_file), env=ddp_env(task), capture_output=True, text=True)
        except OSError as err:
            return Outcome(ok=False, error=f"could not start torchrun: {err}", wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        tail = "\n".join(res.stderr.splitlines()[-_STDERR_KEPT:])
        return Outcome(ok=False, error=f"{last_error_line(res.stderr)} (torchrun exit {res.returncode})", traceback=tail, wall_s=wall)
    if config_file is not None and not rundir.config_path(run_dir).is_file():
        # dsd2 run chose another directory (e.g. a legacy one): the sweep would not find the run
        return Outcome(ok=False, error=f"the job did not write {run_dir}", wall_s=wall)
    return Outcome(ok=True, wall_s=wall)
