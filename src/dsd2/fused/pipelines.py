"""DSD² pipelines (vanilla teacher, then student) of several configs as fused groups: the
teachers train as one group, then the students as another (``dsd2 demo --fuse``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dsd2.config import RunConfig
from dsd2.fused.group import run_group


def run_pipelines_fused(configs: Sequence[RunConfig], *, out: str | Path, say: Callable[[str], None] = print) -> list[tuple[Path, Path]]:
    """(teacher, student) run directories of one pipeline per config, as
    :func:`dsd2.study.run_pipeline` makes them, the teachers and the students each trained as
    one fused group. A student whose architecture differs from its teacher's also needs a
    vanilla baseline: those pipelines run as :func:`~dsd2.study.run_pipeline` does, unfused."""
    from dsd2.study import run_pipeline, student_config, teacher_config, vanilla_baseline_config

    teachers = [teacher_config(c) for c in configs]
    teacher_dirs = run_group(teachers, out, say=say)
    students = [student_config(c, None, d) for c, d in zip(configs, teacher_dirs)]
    plain = [vanilla_baseline_config(c, s) is None for c, s in zip(configs, students)]
    student_dirs = dict(zip([i for i, p in enumerate(plain) if p], run_group([s for s, p in zip(students, plain) if p], out, say=say)))
    pairs = []
    for i, cfg in enumerate(configs):
        if i in student_dirs:
            pairs.append((teacher_dirs[i], student_dirs[i]))
        else:
            study = run_pipeline(cfg, out=out)
            pairs.append((study.teacher, study.student))
    return pairs
