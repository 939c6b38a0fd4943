"""Parameter sweeps: a grid of IMP runs (or DSD² pipelines) on Ray or in-process.

One module per job, imports flowing down this list:

- :mod:`.main`: ``dsd2 sweep`` (cost estimate, run, table of cells);
- :mod:`.run`: ``run_sweep``, the glue: jobs, skip, schedule on a backend, aggregate;
- :mod:`.aggregate`: ``sweep.json``, ``all_rounds.csv``, ``summary.csv``, ``summary_by_point.csv``;
- :mod:`.cost`: FLOPs and GPU-hours of a sweep before it runs;
- :mod:`.scheduler`: jobs, their :class:`State`, teacher before student, retries, skipping;
- :mod:`.backends`: the :class:`Backend` interface; in-process and Ray backends;
- :mod:`.execute`: what a worker runs for one job (``Task`` → ``Outcome``);
- :mod:`.spec`: the sweep file, its validation and its cells;
- :mod:`.shapes`: dataset facts from the dataset registry and models on the meta device (validation and cost).

This package imports torch and Ray lazily: loading and expanding a sweep does not need them,
except for the model checks (built on the meta device).
"""

from dsd2.sweep.aggregate import RUN_METRICS, CellResult, SweepResult, group_by_point, run_summary
from dsd2.sweep.backends import Backend, RayBackend, SequentialBackend, make_backend
from dsd2.sweep.cost import DEFAULT_GPU_TFLOPS, epochs_total, estimate_cost, format_cost, train_examples
from dsd2.sweep.execute import Outcome, Task, run_task
from dsd2.sweep.main import sweep_main
from dsd2.sweep.run import EventCallback, run_sweep
from dsd2.sweep.scheduler import Event, Job, State, build_jobs, run_is_finished, schedule
from dsd2.sweep.spec import SWEEP_PRESET_DIR, Cell, Resources, SweepSpec, expand, list_sweep_presets, load_sweep, param_string

__all__ = [
    "DEFAULT_GPU_TFLOPS",
    "RUN_METRICS",
    "SWEEP_PRESET_DIR",
    "Backend",
    "Cell",
    "CellResult",
    "Event",
    "EventCallback",
    "Job",
    "Outcome",
    "RayBackend",
    "Resources",
    "SequentialBackend",
    "State",
    "SweepResult",
    "SweepSpec",
    "Task",
    "build_jobs",
    "epochs_total",
    "estimate_cost",
    "expand",
    "format_cost",
    "group_by_point",
    "list_sweep_presets",
    "load_sweep",
    "make_backend",
    "param_string",
    "run_is_finished",
    "run_summary",
    "run_sweep",
    "run_task",
    "schedule",
    "sweep_main",
    "train_examples",
]
