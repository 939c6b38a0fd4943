"""The DSD² pipeline: teacher IMP run → teacher round selection → student IMP run with KD.

Each stage is a normal run directory, so the pipeline resumes at any stage: a finished teacher
run is not retrained, an interrupted student run continues from its last finished round.
The teacher run doubles as the vanilla curve when teacher and student share an architecture.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dsd2.config import RunConfig, apply_overrides, validate_config

if TYPE_CHECKING:  # torch-free at import: the sweep's dry run and the CLI read teacher_config only
    from dsd2.rundir import RoundRow
    from dsd2.runs import Config, RunResult


def student_config(teacher_cfg: RunConfig, student_cfg: RunConfig | None, teacher_dir: Path) -> RunConfig:
    """The student's config: its own (or the teacher's, renamed) with ``distill.teacher`` set.

    The student keeps its own distill choices (round, alpha, temperature); the KD pipeline
    never lets early stopping of the teacher change which samples are noisy: both runs use the
    same dataset, noise and seed settings unless the student config says otherwise.
    """
    base = student_cfg if student_cfg is not None else teacher_cfg
    data: dict[str, Any] = base.resolved()
    if student_cfg is None:
        data["name"] = f"{teacher_cfg.name}_dsd2"
        data["distill"] = {**data["distill"], **teacher_cfg.distill.model_dump(exclude={"teacher"})}
        data["early_stop"] = teacher_cfg.early_stop.model_dump()
    data["distill"]["teacher"] = str(teacher_dir)
    return validate_config(data, source="student config")


def teacher_config(cfg: RunConfig | dict[str, Any], *, name: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The vanilla teacher run of a DSD² study, built from the study's (student's) config.

    The one place that decides what a teacher is, for ``pipeline`` and ``sweep`` alike:
    - no KD: the whole ``distill`` section goes back to its defaults, so the student's KD choices
      (alpha, temperature, round) never change the teacher's run id;
    - no online early stop: the best-fit teacher is only known from the whole curve, so the
      teacher always trains every round (early stopping applies to the student only);
    - ``overrides`` (the sweep's ``teacher_overrides``) are applied last; ``name`` renames it.
    """
    data: dict[str, Any] = cfg.resolved() if isinstance(cfg, RunConfig) else json.loads(json.dumps(cfg))
    data["distill"] = {}
    data["early_stop"] = {}
    if name is not None:
        data["name"] = name
    data = apply_overrides(data, list(overrides))
    return validate_config(data, source="teacher config")


class Study(NamedTuple):
    """Run directories of one DSD² study."""

    teacher: Path
    student: Path
    vanilla: Path  # vanilla IMP of the student's architecture: the teacher run itself when they share it


def vanilla_baseline_config(teacher_cfg: RunConfig, student_cfg: RunConfig) -> RunConfig | None:
    """The vanilla run of the student's architecture, or None when the teacher run is that run."""
    own = teacher_config(student_cfg, name=f"{student_cfg.name}_vanilla")
    same = teacher_config(teacher_cfg, name=own.name).run_id() == own.run_id()
    return None if same else own


def run_pipeline(
    teacher_cfg: RunConfig,
    student_cfg: RunConfig | None = None,
    *,
    out: str | Path = "runs",
    run: Callable[..., Path] | None = None,
    **run_kwargs: Any,
) -> Study:
    """Run (or resume) teacher, student and, when the student's architecture differs from the
    teacher's, the vanilla baseline of the student's architecture."""
    from dsd2 import imp

    run = run or imp.run
    tcfg = teacher_config(teacher_cfg)
    teacher_dir = run(tcfg, out, **run_kwargs)
    scfg = student_config(teacher_cfg, student_cfg, teacher_dir)
    student_dir = run(scfg, out, **run_kwargs)
    vcfg = vanilla_baseline_config(teacher_cfg, scfg)
    vanilla_dir = teacher_dir if vcfg is None else run(vcfg, out, **run_kwargs)
    return Study(teacher_dir, student_dir, vanilla_dir)


def _round_line(cfg: RunConfig) -> Callable[[Mapping[str, Any]], None]:
    """One line per finished round on stderr, tagged with the run (parallel workers share it):
    the API's line (:func:`dsd2.progress.round_text`), without its mid-round epoch lines."""
    from dsd2.progress import TextProgress, run_label

    return TextProgress(run_label(cfg)).round_done


def _pipeline_worker(args: tuple[dict[str, Any], str, int]) -> tuple[str, str]:
    from dsd2 import imp
    from dsd2.threads import Share

    cfg_data, out, processes = args
    share = Share(max(1, processes))  # train.threads=auto: this process's part of the cores

    def run(c: RunConfig, o: str | Path, **kw: Any) -> Path:
        return imp.run(c, o, on_round=_round_line(c), share=share, **kw)

    study = run_pipeline(validate_config(cfg_data), out=out, run=run)
    return str(study.teacher), str(study.student)


def run_pipelines_parallel(configs: list[RunConfig], *, out: str | Path, jobs: int) -> list[tuple[Path, Path]]:
    """One pipeline per config (e.g. one per seed), ``jobs`` processes at a time.

    Separate processes, not threads: on a small CPU two single-threaded runs side by side get
    more done than one run using both cores (see README, "Demo"). With ``train.threads=auto``
    each process uses its share of the cores (``dsd2.threads``).
    """
    if jobs <= 1 or len(configs) <= 1:
        return [(Path(t), Path(s)) for t, s in (_pipeline_worker((c.resolved(), str(out), 1)) for c in configs)]
    processes = min(jobs, len(configs))
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_pipeline_worker, [(c.resolved(), str(out), processes) for c in configs]))
    return [(Path(t), Path(s)) for t, s in results]


# ----------------------------------------------------------------------------- the Python API's `dsd2.pipeline(...)` (run_study)


@dataclass(frozen=True)
class PipelineResult:
    """The runs of one DSD² study: teacher, student and the vanilla baseline of the student's
    architecture (the teacher run itself when they share it)."""

    teacher: RunResult
    student: RunResult
    vanilla: RunResult

    def verdict(self) -> str:
        """What the study found, in plain words: SDD seen or not, the valleys, what each stop
        rule picked and cost (:func:`dsd2.verdict.verdict`, as the demo prints it last)."""
        from dsd2.verdict import verdict_for_runs

        return verdict_for_runs([(self.vanilla.run_dir, self.student.run_dir)], heading="What the study found")


def run_study(
    config: Config,
    overrides: Sequence[str] = (),
    *,
    student: Config | None = None,
    out: str | Path = "runs",
    on_round: Callable[[RoundRow], None] | None = None,
    progress: bool | Callable[[int, int, Any], None] | None = True,
    run_stage: Callable[[RunConfig, Path], Path] | None = None,
) -> PipelineResult:
    """Teacher IMP → teacher round (``distill.round``) → student IMP with KD (``dsd2 pipeline``).

    ``config``/``student``: preset name, YAML file, mapping or RunConfig; ``overrides`` apply to
    both. ``run_stage(cfg, out) -> run_dir`` runs one stage (default: :func:`dsd2.imp.run` with
    ``on_round`` and ``progress``; the CLI passes its own, which prints). ``progress``: True
    (default) prints each stage's run directory and a line per round to stderr, tagged with the
    run's name (:mod:`dsd2.progress`), and at the end the study's verdict
    (:meth:`PipelineResult.verdict`); False prints nothing; a callable is called per epoch."""
    from dsd2 import imp
    from dsd2.progress import callbacks, run_label
    from dsd2.rundir import run_dir_for
    from dsd2.runs import as_config, result
    from dsd2.threads import silent

    def stage(cfg: RunConfig, o: str | Path, **_: Any) -> Path:
        if run_stage is not None:
            return run_stage(cfg, Path(o))
        round_cb, epoch_cb, text = callbacks(progress, on_round, label=run_label(cfg))
        if text is not None:
            text.say(f"run directory: {run_dir_for(cfg, Path(o))}")
        with silent(not progress):  # progress=False prints nothing, not even the busy-machine line
            return imp.run(cfg, o, on_round=round_cb, progress=epoch_cb)

    scfg = as_config(student, overrides) if student is not None else None
    s = run_pipeline(as_config(config, overrides), scfg, out=out, run=stage)
    done = PipelineResult(result(s.teacher), result(s.student), result(s.vanilla))
    if progress is True and run_stage is None:  # the default printer ends with what the study found, as the demo does
        print(done.verdict(), file=sys.stderr, flush=True)
    return done
