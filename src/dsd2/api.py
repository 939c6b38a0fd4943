"""The Python API: what the ``dsd2`` commands do, as functions with typed results.

Usable from a script or a notebook; the CLI parses, calls these and prints::

    import dsd2

    res = dsd2.run("tiny_mnist1d", ["prune.rounds=3"], out="runs")      # RunResult
    res.rows[-1].test_acc, res.run_dir
    study = dsd2.pipeline("demo_fmnist", out="runs")                     # PipelineResult
    exp = dsd2.export(study.student.run_dir, "model/", round="best")     # ExportResult
    model = dsd2.load_exported("model/")                                 # nn.Module, eval mode

``dsd2/__init__.py`` re-exports these names lazily, so ``import dsd2`` stays cheap (no torch).
``dsd2.pipeline`` is :func:`dsd2.study.run_study`, ``dsd2.export`` is
:func:`dsd2.exporting.export_run`.
A bad config, run or option raises :class:`dsd2.errors.UserError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dsd2 import imp, rundir
from dsd2.exporting import ExportResult, load_exported
from dsd2.exporting import export_run as export
from dsd2.rundir import RoundRow
from dsd2.runs import Config, RunResult, as_config, result
from dsd2.study import PipelineResult
from dsd2.study import run_study as pipeline
from dsd2.train import EpochLog

__all__ = ["ExportResult", "PipelineResult", "RunResult", "export", "load_exported", "pipeline", "resume", "run"]


def run(
    config: Config,
    overrides: Sequence[str] = (),
    *,
    out: str | Path = "runs",
    run_dir: str | Path | None = None,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: Callable[[int, int, EpochLog], None] | None = None,
) -> RunResult:
    """Run (or resume: the same config finds the same directory) an IMP study; ``dsd2 run``.

    ``config``: preset name, YAML file, mapping or RunConfig; ``overrides``: ``key.sub=value``
    strings. ``on_round(row)`` is called after each round, ``progress(round, epochs, log)`` after
    each epoch."""
    cfg = as_config(config, overrides)
    path = imp.run(cfg, out, run_dir=Path(run_dir) if run_dir is not None else None, on_round=on_round, progress=progress)
    return result(path)


def resume(
    run_dir: str | Path,
    *,
    on_round: Callable[[RoundRow], None] | None = None,
    progress: Callable[[int, int, EpochLog], None] | None = None,
) -> RunResult:
    """Continue the run in ``run_dir`` with the config it recorded; ``dsd2 resume``."""
    return run(rundir.read_config(run_dir), run_dir=run_dir, on_round=on_round, progress=progress)
