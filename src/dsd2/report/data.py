"""Read run directories for the report: one :class:`RunData` per run, seeds grouped together.

A run's *role* in a study is ``student`` when it has ``teacher.json`` (a DSD² run), ``teacher``
when a student among the inputs names it as its teacher, and ``vanilla`` otherwise.

:func:`group_runs` puts runs together that differ only by ``seed`` and ``name``: their resolved
``config.yaml`` files are equal once those two keys are removed. A student's ``distill.teacher``
is a path to its teacher run, which differs between seeds (each seed distils from its own
teacher), so it is compared through the teacher's own grouping key when the teacher run can be
read, and as the path otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsd2 import rundir, safe_read, store
from dsd2.errors import UserError
from dsd2.file_schemas import EarlyStop, TeacherFile
from dsd2.rundir import RoundRow

ROLES = ("vanilla", "teacher", "student")


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    config: dict[str, Any]
    config_text: str
    meta: dict[str, Any]
    rows: list[RoundRow]
    columns: list[str]
    entropy_rows: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    teacher: dict[str, Any] | None = None
    early_stop: dict[str, Any] | None = None
    noise: dict[str, Any] | None = None  # noise.json: realised rate, per-class flip rates, confusion
    role: str = "vanilla"
    # what legends and headings call the run instead of its config name: a sweep cell's grid
    # point ("noise.rate=0.2, model.depth=3") rather than its internal cell name
    display: str | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.meta.get("seed"))

    @property
    def is_student(self) -> bool:
        return self.teacher is not None

    @property
    def title(self) -> str:
        """The run's name for people: :attr:`display` when set, else the config name."""
        return self.display or self.name

    @property
    def label(self) -> str:
        return f"{self.role}: {self.title} (seed {self.seed})"

    def column(self, key: str) -> list[Any]:
        return [r.get(key) for r in self.rows]

    def has(self, key: str) -> bool:
        return any(r.get(key) is not None for r in self.rows)


@dataclass
class RunGroup:
    """Runs whose configs are equal except for ``seed`` and ``name``."""

    key: str
    runs: list[RunData]

    @property
    def role(self) -> str:
        roles = {r.role for r in self.runs}
        for role in ("student", "teacher"):
            if role in roles:
                return role
        return "vanilla"

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    @property
    def label(self) -> str:
        first = self.runs[0]
        if len(self.runs) == 1:
            return f"{self.role}: {first.title} (seed {first.seed})"
        seeds = ", ".join(str(s) for s in self.seeds)
        return f"{self.role}: {first.title} (seeds {seeds}; mean ± std)"


def _read_csv_with_header(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows = rundir.read_table(path.parent, path.name)
    header = safe_read.read_text(path, max_bytes=safe_read.MAX_TABLE_BYTES).splitlines()[:1]
    columns = header[0].split(",") if header else []
    return rows, columns


def load_run(path: str | Path) -> RunData:
    """Read a run directory; :class:`UserError` when it is not one or has no finished round."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass dsd2 run directories (folders with rounds.csv)")
    rounds = rundir.rounds_csv_path(path)
    if not rounds.is_file():
        raise UserError(f"{path} is not a dsd2 run directory (no rounds.csv): pass the folder a run wrote")
    rows, columns = _read_csv_with_header(rounds)
    if not rows:
        raise UserError(f"{rounds} has no finished round yet: wait for round 0 to finish, or resume the run")
    if any(r.get("sparsity") is None or r.get("round") is None for r in rows):
        raise UserError(f"{rounds} lacks the round or sparsity of some rows; it is corrupt: resume the run to rewrite it")
    config_path = rundir.config_path(path)
    config_text = safe_read.read_text(config_path, max_bytes=safe_read.MAX_YAML_BYTES) if config_path.exists() else ""
    config = safe_read.parse_yaml(config_text, source=str(config_path)) if config_path.exists() else {}
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a mapping; it is corrupt")
    meta = rundir.read_meta(path) if rundir.meta_path(path).exists() else {}
    entropy_rows = rundir.read_table(path, rundir.ENTROPY_CSV) if rundir.entropy_csv_path(path).is_file() else []
    timings_path, teacher_path, early_path = rundir.timings_csv_path(path), rundir.teacher_path(path), rundir.early_stop_path(path)
    timings = store.read_csv(timings_path) if timings_path.exists() else []
    teacher = store.read_json_dict(teacher_path, TeacherFile) if teacher_path.exists() else None
    early = store.read_json_dict(early_path, EarlyStop) if early_path.exists() else None
    round_rows = [RoundRow.from_dict(r, source=rounds) for r in rows]
    rundir.check_round_order(round_rows, rounds)
    return RunData(
        path=path,
        config=config,
        config_text=config_text,
        meta=meta if isinstance(meta, dict) else {},
        rows=round_rows,
        columns=columns,
        entropy_rows=entropy_rows,
        timings=timings,
        teacher=teacher if isinstance(teacher, dict) else None,
        early_stop=early if isinstance(early, dict) else None,
        noise=rundir.read_noise(path),
        role="student" if teacher is not None else "vanilla",
    )


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return str(a) == str(b)


def assign_roles(runs: Sequence[RunData]) -> None:
    """Set ``role`` on every run: student (has teacher.json), teacher (a student's teacher), vanilla."""
    for run in runs:
        run.role = "student" if run.is_student else "vanilla"
    for run in runs:
        found = teacher_of(run, runs)
        if found is not None and not found.is_student:
            found.role = "teacher"


def teacher_of(student: RunData, runs: Sequence[RunData]) -> RunData | None:
    """The run among ``runs`` that ``student`` was distilled from, if present: the one in the folder
    teacher.json names or, when that folder holds no run any more (a moved study), the one run of
    the same folder name (<name>-<hash>: the same config and curve)."""
    if not student.teacher or not student.teacher.get("run_dir"):
        return None
    recorded = str(student.teacher["run_dir"])
    others = [other for other in runs if other is not student]
    for other in others:
        if _same_dir(other.path, recorded):
            return other
    if rundir.config_path(recorded).is_file():
        return None  # the teacher is still where it was, and not among these runs
    named = [other for other in others if Path(other.path).name == Path(recorded).name]
    return named[0] if len(named) == 1 else None


def load_runs(run_dirs: Iterable[str | Path | RunData]) -> list[RunData]:
    """Read several run directories (roles assigned); :class:`UserError` when there are none."""
    runs = [r if isinstance(r, RunData) else load_run(r) for r in run_dirs]
    if not runs:
        raise UserError("no run directories given: pass one or more dsd2 run directories")
    assign_roles(runs)
    return runs


def config_key(config: dict[str, Any], _depth: int = 0) -> str:
    """The grouping key of a resolved config: everything except ``seed`` and ``name``."""
    cfg = {k: v for k, v in config.items() if k not in ("seed", "name")}
    distill = cfg.get("distill")
    if isinstance(distill, dict) and distill.get("teacher"):
        teacher = Path(str(distill["teacher"]))
        tkey: str = str(distill["teacher"])
        tcfg_path = rundir.config_path(teacher)
        if _depth < 8 and tcfg_path.is_file():
            try:
                tcfg = store.read_yaml_file(tcfg_path)
                if isinstance(tcfg, dict):
                    tkey = "teacher-config:" + config_key(tcfg, _depth + 1)
            except UserError:
                pass
        cfg["distill"] = {**distill, "teacher": tkey}
    return json.dumps(cfg, sort_keys=True, default=str)


def group_runs(run_dirs: Iterable[str | Path | RunData]) -> list[RunGroup]:
    """Group runs whose resolved configs are equal except for ``seed`` and ``name``.

    Groups keep the order of their first run in the input; runs keep their input order.
    """
    runs = list(run_dirs)
    loaded = [r for r in runs if isinstance(r, RunData)]
    data = loaded if runs and len(loaded) == len(runs) else load_runs(runs)
    if not data:
        raise UserError("no run directories given: pass one or more dsd2 run directories")
    groups: dict[str, RunGroup] = {}
    for run in data:
        key = config_key(run.config)
        groups.setdefault(key, RunGroup(key=key, runs=[])).runs.append(run)
    for g in groups.values():
        g.runs.sort(key=lambda r: (not isinstance(r.seed, int), r.seed if isinstance(r.seed, int) else 0, str(r.path)))
    return list(groups.values())
