"""The Python API: what the ``dsd2`` commands do, as functions with typed results.

Usable from a script or a notebook; the CLI parses, calls these and prints::

    import dsd2

    res = dsd2.run("tiny_mnist1d", ["prune.rounds=3"], out="runs")      # RunResult
    res.rows[-1].test_acc, res.run_dir
    study = dsd2.pipeline("demo_fmnist", out="runs")                     # PipelineResult
    exp = dsd2.export(study.student.run_dir, "model/", round="best")     # ExportResult
    model = dsd2.load_exported("model/")                                 # nn.Module, eval mode
    dsd2.predict("model/", images).names                                 # class of each image
    dsd2.compare_runs(study.vanilla.run_dir, study.student.run_dir)      # the strategy table
    dsd2.write_report([study.vanilla.run_dir, study.student.run_dir], "report/")

``dsd2/__init__.py`` re-exports these names lazily, so ``import dsd2`` stays cheap (no torch).
``dsd2.pipeline`` is :func:`dsd2.study.run_study`, ``dsd2.export`` is
:func:`dsd2.exporting.export_run`.
A bad config, run or option raises :class:`dsd2.errors.UserError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dsd2 import imp, rundir, threads
from dsd2.compare import Outcome
from dsd2.exporting import ExportResult, load_exported
from dsd2.exporting import export_run as export
from dsd2.inference import Predictions, exported_transform, predict
from dsd2.progress import callbacks, run_label
from dsd2.rundir import RoundRow
from dsd2.runs import Config, RunResult, as_config, result
from dsd2.study import PipelineResult
from dsd2.study import run_study as pipeline
from dsd2.train import EpochLog

__all__ = [
    "ExportResult",
    "PipelineResult",
    "Predictions",
    "RunResult",
    "compare_runs",
    "export",
    "exported_transform",
    "load_exported",
    "pipeline",
    "predict",
    "resume",
    "run",
    "write_report",
]


def run(
    config: Config,
    overrides: Sequence[str] = (),
    *,
    out: str | Path = "runs",
    run_dir: str | Path | None = None,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: bool | Callable[[int, int, EpochLog], None] | None = True,
) -> RunResult:
    """Run (or resume: the same config finds the same directory) an IMP study; ``dsd2 run``.

    ``config``: preset name, YAML file, mapping or RunConfig; ``overrides``: ``key.sub=value``
    strings. ``on_round(row)`` is called after each round. ``progress``: True (default) prints
    the run directory, a line per round and, in long rounds, one every 30 s to stderr
    (:mod:`dsd2.progress`); False prints nothing; a callable ``progress(round, epochs, log)`` is
    called after each epoch instead."""
    cfg = as_config(config, overrides)
    target = Path(run_dir) if run_dir is not None else None
    round_cb, epoch_cb, text = callbacks(progress, on_round, label=run_label(cfg))
    if text is not None:
        text.say(f"run directory: {target or rundir.run_dir_for(cfg, Path(out))}")
    with threads.silent(not progress):  # progress=False prints nothing, not even the busy-machine line
        path = imp.run(cfg, out, run_dir=target, on_round=round_cb, progress=epoch_cb)
    return result(path)


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: bool | Callable[[int, int, EpochLog], None] | None = True,
) -> RunResult:
    """Continue the run in ``run_dir`` with the config it recorded; ``dsd2 resume``
    (``progress`` as in :func:`run`). ``overrides``: as ``dsd2 resume RUN_DIR key=value``, where and
    how it runs (``train.threads=4``, ``dataset.root=...``, a moved teacher's
    ``distill.teacher=...``) or more rounds; a setting that would change its numbers is refused."""
    cfg = rundir.with_overrides(run_dir, list(overrides)) if overrides else rundir.read_config(run_dir)
    return run(cfg, run_dir=run_dir, on_round=on_round, progress=progress)


def compare_runs(
    vanilla: str | Path, student: str | Path | None = None, *, tolerance: float = 0.0, patience: int = 1, select: str = "best"
) -> list[Outcome]:
    """What each strategy (exhaustive vanilla IMP, early stops, DSD² + early stop) selects and
    what it costs; ``dsd2 compare``. ``tolerance`` is a fraction (0.03: 3 points)."""
    from dsd2 import compare

    return compare.strategy_table(vanilla, student, tolerance=tolerance, patience=patience, select=select)


def write_report(
    run_dirs: str | Path | Sequence[str | Path], out: str | Path = "report", *, title: str | None = None, progress: bool = True
) -> Path:
    """Write the HTML report of ``run_dirs`` (or of a sweep: its ``out/<sweep name>`` folder)
    into ``out``; the path of its ``index.html``. ``dsd2 report``. ``progress``: a line per
    figure written on stderr (False: silent)."""
    import sys

    from dsd2.report import write_report as write
    from dsd2.report.html import report_status
    from dsd2.report.sweep import write_sweep_report

    def say(line: str) -> None:
        print(f"report: {line}", file=sys.stderr, flush=True)

    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    with report_status(say if progress else None):
        if len(dirs) == 1 and (dirs[0] / "sweep.json").is_file():
            return Path(write_sweep_report(dirs[0], Path(out), title=title))
        return Path(write(dirs, Path(out), title=title))
