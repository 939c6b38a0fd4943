"""Parameter sweeps: a grid of IMP runs (or DSD² pipelines) on Ray or in-process.

A sweep file (YAML) names a base run config, overrides applied to every cell, and a grid
whose cartesian product gives the cells::

    name: noise_sweep
    base: cifar10_vgg_noise50          # preset name or path of a run config
    overrides: [train.epochs=160]      # applied to every cell
    grid:                              # cartesian product; keys are config keys
      seed: [0, 1, 2]
      noise.rate: [0.1, 0.2, 0.5]
    pipeline: false                    # true: each cell is teacher IMP + DSD² student
    teacher_overrides: []              # pipelines: applied to the teacher config only
    resources: {num_cpus: 1, num_gpus: 0.25}   # per cell (per run), for Ray
    retries: 1

Order of application for a cell: base → ``overrides`` → grid values (a grid key wins over a
file override of the same key; a command-line override of a grid key is refused) → (teacher only)
``distill`` reset to defaults → ``teacher_overrides``. A grid key may name a whole section
(``model: [{name: mlp}, {name: lenet5}]``); so may an override (``model={name: resnet18_cifar}``),
which is how a teacher gets a different architecture (Figure 1: ResNet-18 teacher, VGG-like
student).

Every cell is a normal run directory ``out/<cell name>-<hash>`` (pipelines: a teacher run
``out/<sweep>_teacher[_<params>]-<hash>``, shared by cells whose teacher configs are equal,
plus the student run ``out/<cell name>-<hash>``). Cells whose runs are finished are skipped
without starting a task; a failed run is retried up to ``retries`` times and resumes from its
last finished round (``imp.run`` resumes). The sweep's own files go to ``out/<sweep name>/``:

- ``sweep.json``: the spec, and per cell its params, status, attempts, errors and run dirs;
- ``all_rounds.csv``: every row of every cell's ``rounds.csv``, with ``cell``, the grid
  params, ``role`` (run / teacher / student) and ``run_dir`` prepended;
- ``summary.csv``: one row per cell (best selection accuracy, its round and sparsity, dense
  accuracy, recovered-dip depth; pipelines: ``teacher_*`` and ``student_*`` columns);
- ``summary_by_point.csv``: finished cells grouped over ``seed``: ``<metric>_mean`` and
  ``<metric>_std`` (sample std, ddof=1; empty for a single seed) per grid point.

Test hook: the environment variable ``DSD2_SWEEP_FAIL_ONCE=<run name>[@<round>]`` makes the
run named ``<run name>`` (a cell name, or a teacher's name) fail once: the Ray worker process
exits (``os._exit(1)``, as if killed) at the start of the run or right after round
``<round>`` is finished; in-process (sequential backend) it raises instead. A marker file in
``out/<sweep>/.fail_once/`` makes it happen only the first time.

On a Ray cluster (``address=``) every node needs this package installed and ``out`` must be
a path on a filesystem that all nodes and the driver share (it is made absolute on the driver;
the student's ``distill.teacher`` is that absolute teacher path).

This module imports torch and Ray lazily: loading and expanding a sweep does not need them,
except for the model checks (built on the meta device).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from dsd2 import store
from dsd2.config import PRESET_DIR, RunConfig, apply_overrides, read_yaml, validate_config
from dsd2.errors import UserError
from dsd2.pipeline import teacher_config

SWEEP_PRESET_DIR = PRESET_DIR / "sweeps"
FAIL_ONCE_ENV = "DSD2_SWEEP_FAIL_ONCE"

# Effective training throughput used to turn FLOPs into GPU-hours. An ASSUMPTION, not a
# measurement (no GPU was available when this was written): small CIFAR CNNs at batch 128 in
# bf16 reach a few percent of an H100's ~990 TFLOP/s dense bf16 peak; 25 TFLOP/s effective
# (counting 2 FLOPs per multiply-add, forward + backward) is a round, deliberately modest
# figure. Override with ``gpu_tflops=`` / ``--gpu-tflops`` after timing one epoch on your GPU.
DEFAULT_GPU_TFLOPS = 25.0

# What the cost estimate needs to know about a dataset without loading it:
# input shape of one example, classes, original train-set size, default validation size.
DATASET_SHAPES: dict[str, dict[str, Any]] = {
    "cifar10": {"shape": (3, 32, 32), "classes": 10, "train": 50000, "val": 5000},
    "cifar100": {"shape": (3, 32, 32), "classes": 100, "train": 50000, "val": 5000},
    "fashion_mnist": {"shape": (1, 28, 28), "classes": 10, "train": 60000, "val": 5000},
    "mnist1d": {"shape": (40,), "classes": 10, "train": 4000, "val": 500},
}

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME = 120

EventCallback = Callable[["Cell", str], None]


# ----------------------------------------------------------------------------- the spec


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per run (Ray task); torch threads = max(1, round(num_cpus)).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per run (fractions share a GPU).")


class SweepSpec(BaseModel):
    """A validated sweep file. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Sweep name: cells are <name>_<params>; files in out/<name>/.")
    description: str = Field("", description="Free text.")
    base: str = Field(description="Preset name or path (relative to the sweep file, then the working directory) of the base run config.")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides applied to every cell.")
    grid: dict[str, list[Any]] = Field(description="Config key -> list of values; the cells are the cartesian product.")
    pipeline: bool = Field(False, description="Each cell is a DSD² pipeline (vanilla teacher IMP, then the KD student).")
    teacher_overrides: list[str] = Field(default_factory=list, description="Pipelines: overrides applied to the teacher config only.")
    resources: Resources = Field(default_factory=Resources)
    retries: int = Field(1, ge=0, description="Extra attempts for a failed run (each resumes from its last finished round).")

    _source_dir: Path | None = PrivateAttr(default=None)

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("grid must be a mapping of config keys to lists of values, e.g. {seed: [0, 1, 2]}")
        if not v:
            raise ValueError("grid is empty: give at least one key with a list of values, e.g. {seed: [0]}")
        for key, values in v.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
                raise ValueError(f"grid key {key!r} is not a dotted config key such as noise.rate")
            if not isinstance(values, list):
                raise ValueError(f"grid.{key} must be a list of values, e.g. [{values!r}], got {values!r}")
            if not values:
                raise ValueError(f"grid.{key} is an empty list: give at least one value")
            seen = [json.dumps(x, sort_keys=True, default=str) for x in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"grid.{key} lists a value twice: {values!r}")
        return v


def list_sweep_presets() -> list[str]:
    return sorted(p.stem for p in SWEEP_PRESET_DIR.glob("*.yaml"))


def _sweep_file(path_or_preset: str | Path) -> Path:
    p = Path(path_or_preset)
    if p.is_file():
        return p
    if not p.suffix:
        preset = SWEEP_PRESET_DIR / f"{p.name}.yaml"
        if preset.is_file():
            return preset
    raise UserError(
        f"sweep file {path_or_preset} not found (give a YAML path or a sweep preset: {', '.join(list_sweep_presets())})"
    )


def _format_spec_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid sweep file ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(
                f"  {loc}: unknown key (sweep keys: {', '.join(SweepSpec.model_fields)}; config keys go in overrides or grid)"
            )
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _override_key(item: str) -> str:
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r} is not of the form key.sub=value (e.g. prune.rounds=10)")
    return key.strip()


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def load_sweep(path_or_preset: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read, validate and expand (every cell config is validated) a sweep file or preset.

    ``overrides``: ``key=value`` strings. ``sweep.<field>=value`` changes the sweep itself
    (``sweep.retries=2``, ``sweep.pipeline=true``, ``sweep.grid.seed=[0,1,2]``,
    ``sweep.resources.num_gpus=0.5``); anything else is a run-config override appended to
    ``overrides`` (applied to every cell, e.g. ``train.epochs=1``).
    """
    path = _sweep_file(path_or_preset)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping (name:, base:, grid:, ...)")
    run_overrides: list[str] = []
    for item in overrides:
        key = _override_key(item)
        if key == "sweep" or key.startswith("sweep."):
            rest = key[len("sweep."):]
            if not rest:
                raise UserError(f"override {item!r}: name a sweep field, e.g. sweep.retries=2")
            value = apply_overrides({}, [f"x={item.partition('=')[2]}"])["x"]
            if rest.startswith("grid."):
                grid = data.get("grid")
                data["grid"] = {**(grid if isinstance(grid, dict) else {}), rest[len("grid."):]: value}
            else:
                data = apply_overrides(data, [f"{rest}={item.partition('=')[2]}"])
        else:
            run_overrides.append(item)
    if run_overrides:
        ov = data.get("overrides") or []
        if not isinstance(ov, list):
            raise UserError(f"{path}: overrides must be a list of key.sub=value strings")
        data["overrides"] = list(ov) + run_overrides
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_spec_error(err, str(path))) from None
    for item in run_overrides:  # the grid is applied after the overrides: it would silently win
        for key in spec.grid:
            if _overlaps(_override_key(item), key):
                raise UserError(
                    f"sweep {spec.name}: override {item!r} touches grid key {key!r}; change the grid instead "
                    f"(sweep.grid.{key}=[...])"
                )
    spec._source_dir = path.parent.resolve()
    expand(spec)  # validates every cell up front
    return spec


def _check_spec(spec: SweepSpec) -> None:
    for item in [*spec.overrides, *spec.teacher_overrides]:
        _override_key(item)
    for key in spec.grid:
        if key == "name" or key.startswith("name."):
            raise UserError(f"sweep {spec.name}: grid key 'name' is not allowed (the sweep names its cells)")
        if spec.pipeline and _overlaps(key, "distill.teacher"):
            raise UserError(f"sweep {spec.name}: grid key {key!r}: a pipeline sweep sets distill.teacher itself")
    if spec.teacher_overrides and not spec.pipeline:
        raise UserError(f"sweep {spec.name}: teacher_overrides only apply to pipeline sweeps (set pipeline: true)")


# ----------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One grid point. ``config`` is the cell's run (pipelines: the student, before
    ``distill.teacher`` is set); ``teacher_config`` the pipeline's vanilla teacher or None."""

    index: int
    name: str
    params: dict[str, Any]
    config: RunConfig
    teacher_config: RunConfig | None = None


def _base_data(spec: SweepSpec) -> dict[str, Any]:
    base = Path(spec.base)
    if not base.is_absolute() and spec._source_dir is not None and (spec._source_dir / base).is_file():
        base = spec._source_dir / base
    data = read_yaml(base)
    if not isinstance(data, dict):
        raise UserError(f"sweep {spec.name}: base {spec.base}: the top level must be a mapping of sections")
    return data


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"grid key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = json.loads(json.dumps(value))


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "-".join(_value_text(v) for v in value)
    if isinstance(value, dict):  # a whole section, e.g. a model: its name, then its options
        head = [_value_text(value["name"])] if "name" in value else []
        return "-".join(head + [f"{k}-{_value_text(v)}" for k, v in value.items() if k != "name"])
    return str(value)


def _labels(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that is unique among ``keys`` (dots → '.')."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if sum(1 for k in keys if k == label or k.endswith("." + label)) == 1:
                break
        out[key] = label
    return out


def param_string(params: dict[str, Any], keys: list[str] | None = None) -> str:
    """``seed-0_rate-0.1`` for ``{seed: 0, noise.rate: 0.1}`` (sanitised to [A-Za-z0-9_.-])."""
    keys = list(params) if keys is None else keys
    labels = _labels(keys)
    text = "_".join(f"{labels[k]}-{_value_text(params[k])}" for k in keys)
    return _NAME_CHARS.sub("-", text).strip("-")


def _bounded(name: str, params: dict[str, Any]) -> str:
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9]}_{digest}"


def _cell_error(spec: SweepSpec, name: str, params: dict[str, Any], msg: str, what: str = "") -> UserError:
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return UserError(f"sweep {spec.name}, cell {name} ({shown}){what}: {msg}")


def _check_model_and_data(cfg: RunConfig) -> None:
    """Unknown dataset, model, model option or invalid option value: raise UserError.

    Builds the model on the meta device (no memory, no time) when the dataset's input shape
    is known; otherwise checks the option names against the builder's signature.
    """
    from dsd2.data import list_datasets
    from dsd2.models.registry import validate_options

    ds = cfg.dataset.name.strip().lower().replace("-", "_")
    if ds not in list_datasets():
        close = difflib.get_close_matches(ds, list_datasets(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"dataset.name: unknown dataset {cfg.dataset.name!r}.{hint} Registered: {', '.join(list_datasets())}")
    validate_options(cfg.model.name, cfg.model.options)
    if ds in DATASET_SHAPES:
        _meta_model(cfg)


def _model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    info = DATASET_SHAPES[cfg.dataset.name.strip().lower().replace("-", "_")]
    shape = info["shape"]
    return {"num_classes": info["classes"], "in_channels": shape[0] if len(shape) == 3 else 1, "input_size": shape[-1]}


_META_CACHE: dict[str, Any] = {}


def _model_key(cfg: RunConfig) -> str:
    return json.dumps([cfg.dataset.name, cfg.model.model_dump(mode="json")], sort_keys=True)


def _meta_model(cfg: RunConfig):
    """The model of ``cfg`` built on the meta device (cached per model + dataset)."""
    key = _model_key(cfg)
    if key not in _META_CACHE:
        import torch

        from dsd2.models import build_model

        with torch.device("meta"):
            _META_CACHE[key] = build_model(cfg.model.name, **_model_kwargs(cfg), **cfg.model.options)
    return _META_CACHE[key]


def _teacher_name(spec: SweepSpec, params: dict[str, Any]) -> str:
    """Teacher runs are named by the grid keys that can change them."""
    tkeys = [_override_key(o) for o in spec.teacher_overrides]
    keys = [k for k in params if not _overlaps(k, "distill") and not any(_overlaps(k, t) for t in tkeys)]
    text = param_string(params, keys) if keys else ""
    return _bounded(f"{spec.name}_teacher" + (f"_{text}" if text else ""), {k: params[k] for k in keys})


def expand(spec: SweepSpec) -> list[Cell]:
    """The cells of ``spec`` (cartesian product of the grid, in grid order), validated."""
    _check_spec(spec)
    base = apply_overrides(_base_data(spec), spec.overrides)
    keys = list(spec.grid)
    cells: list[Cell] = []
    names: set[str] = set()
    for index, values in enumerate(itertools.product(*(spec.grid[k] for k in keys))):
        params = dict(zip(keys, values))
        name = _bounded(f"{spec.name}_{param_string(params)}", params)
        if name in names:
            name = _bounded(f"{name}_{index}", params)
        names.add(name)
        data = json.loads(json.dumps(base))
        try:
            for k, v in params.items():
                _set_path(data, k, v)
        except UserError as err:
            raise _cell_error(spec, name, params, str(err)) from None
        data["name"] = name
        if spec.pipeline and (data.get("distill") or {}).get("teacher"):
            raise _cell_error(spec, name, params, "distill.teacher is set, but a pipeline sweep trains the teacher itself")
        try:
            cfg = validate_config(data, source="cell config")
            _check_model_and_data(cfg)
        except UserError as err:
            raise _cell_error(spec, name, params, str(err)) from None
        tcfg = None
        if spec.pipeline:
            try:
                tcfg = teacher_config(data, name=_teacher_name(spec, params), overrides=spec.teacher_overrides)
                _check_model_and_data(tcfg)
            except UserError as err:
                raise _cell_error(spec, name, params, str(err), what=", teacher") from None
        cells.append(Cell(index, name, params, cfg, tcfg))
    return cells


# ----------------------------------------------------------------------------- jobs and workers


@dataclass
class _Job:
    key: str
    role: Literal["run", "teacher", "student"]
    config: RunConfig
    run_dir: Path
    deps: list[str]
    cells: list[int]
    attempts: int = 0
    state: str = "pending"  # pending, skipped, running, done, failed
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def run_is_finished(cfg: RunConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds every round of ``cfg`` (or its early stop fired)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        return False
    try:
        done = store.finished_rounds(run_dir)
    except UserError:
        return False  # a corrupt round: let the run itself report it
    if len(done) >= cfg.prune.rounds + 1:
        return True
    es = run_dir / "early_stop.json"
    if cfg.early_stop.rule != "none" and done and es.is_file():
        try:
            return store.read_json(es).get("stop_round") is not None
        except UserError:
            return False
    return False


def _fail_hook(spec_value: str | None, name: str, marker_dir: str) -> tuple[bool, int | None]:
    """(armed, round) for the DSD2_SWEEP_FAIL_ONCE test hook."""
    if not spec_value:
        return False, None
    target, _, rnd = spec_value.partition("@")
    if target != name:
        return False, None
    marker = Path(marker_dir) / name
    if marker.exists():
        return False, None
    return True, int(rnd) if rnd else None


def _execute(payload: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one IMP run; never raises for a failing run (returns ok=False)."""
    t0 = time.perf_counter()
    in_process = payload["in_process"]
    old_threads = None
    try:
        import torch

        from dsd2 import imp

        old_threads = torch.get_num_threads()
        torch.set_num_threads(payload["threads"])
        cfg = validate_config(payload["config"], source="sweep cell config")
        armed, at_round = _fail_hook(payload.get("fail_once"), cfg.name, payload["marker_dir"])

        def fail() -> None:
            marker = Path(payload["marker_dir"]) / cfg.name
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("failed once\n")
            if in_process:
                raise RuntimeError(f"simulated failure ({FAIL_ONCE_ENV})")
            os._exit(1)

        if armed and at_round is None:
            fail()
        on_round = None
        if armed:

            def on_round(row: dict[str, Any]) -> None:
                if row["round"] == at_round:
                    fail()

        run_dir = Path(payload["run_dir"])
        imp.run(cfg, run_dir.parent, run_dir=run_dir, on_round=on_round)
        return {"ok": True, "wall_s": time.perf_counter() - t0}
    except UserError as err:
        return {"ok": False, "error": str(err), "wall_s": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - reported per cell, the sweep goes on
        return {
            "ok": False,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "wall_s": time.perf_counter() - t0,
        }
    finally:
        if in_process and old_threads is not None:
            import torch

            torch.set_num_threads(old_threads)


def _ray_error_text(err: BaseException) -> str:
    import ray.exceptions as rex

    if isinstance(err, rex.WorkerCrashedError):
        return "the worker process died (killed, out of memory or crashed) before the run finished"
    if isinstance(err, rex.TaskCancelledError):
        return "the task was cancelled"
    if isinstance(err, rex.OutOfMemoryError):
        return "Ray killed the task: the node ran out of memory"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


class _Sequential:
    def __init__(self) -> None:
        self._done: list[tuple[str, dict[str, Any]]] = []

    def submit(self, key: str, payload: dict[str, Any]) -> None:
        self._done.append((key, _execute({**payload, "in_process": True})))

    def wait(self) -> tuple[str, dict[str, Any]]:
        return self._done.pop(0)

    def cancel_all(self) -> None:
        self._done.clear()


class _Ray:
    def __init__(self, resources: Resources, address: str | None, max_parallel: int | None) -> None:
        import logging

        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(
                include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, logging_level=logging.WARNING
            )
            if address:
                ray.init(address=address, **kwargs)
            else:
                ncpu = os.cpu_count() or 1
                if max_parallel:
                    ncpu = max(1, math.ceil(max_parallel * resources.num_cpus))
                ray.init(num_cpus=ncpu, **kwargs)
            self.started = True
        if not address:
            total = ray.cluster_resources()
            for res, want in (("CPU", resources.num_cpus), ("GPU", resources.num_gpus)):
                have = total.get(res, 0.0)
                if want > have:
                    self.close()
                    raise UserError(
                        f"each cell asks for {want:g} {res}(s) (resources.num_{res.lower()}s) but the Ray cluster has "
                        f"{have:g}: lower it (sweep.resources.num_{res.lower()}s=...) or pass --address of a bigger cluster"
                    )
        self.remote = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=0)(_execute)
        self.inflight: dict[Any, str] = {}

    def submit(self, key: str, payload: dict[str, Any]) -> None:
        ref = self.remote.remote({**payload, "in_process": False})
        self.inflight[ref] = key

    def wait(self) -> tuple[str, dict[str, Any]]:
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        ref = ready[0]
        key = self.inflight.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            result = {"ok": False, "error": _ray_error_text(err)}
        return key, result

    def cancel_all(self) -> None:
        for ref in list(self.inflight):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        self.inflight.clear()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


# ----------------------------------------------------------------------------- results


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


def _plain(value: Any) -> Any:
    """A CSV-friendly grid value (lists and mappings as JSON)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


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
    path = Path(run_dir) / "rounds.csv"
    return store.read_csv(path) if path.is_file() else []


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
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


def _write_outputs(
    spec: SweepSpec,
    sweep_dir: Path,
    cells: list[Cell],
    results: list[CellResult],
    meta: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    keys = list(spec.grid)
    all_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for cell, res in zip(cells, results):
        prefix = {"cell": cell.name, **{k: _plain(v) for k, v in cell.params.items()}}
        runs = [("teacher", res.teacher_dir), ("student", res.run_dir)] if spec.pipeline else [("run", res.run_dir)]
        row: dict[str, Any] = {**prefix, "status": res.status, "attempts": res.attempts}
        for role, run_dir in runs:
            rows = _rows(run_dir)
            for r in rows:
                all_rows.append({**prefix, "role": role, "run_dir": run_dir, **r})
            stats = run_summary(rows)
            if spec.pipeline:
                row[f"{role}_dir"] = run_dir
                row.update({f"{role}_{k}": v for k, v in stats.items()})
            else:
                row["run_dir"] = run_dir
                row.update(stats)
        row["error"] = res.error
        summary.append(row)
    if spec.pipeline:
        metrics = [f"{role}_{m}" for role in ("teacher", "student") for m in RUN_METRICS]
    else:
        metrics = list(RUN_METRICS)
    by_point = group_by_point(summary, keys, metrics)
    store.write_csv(sweep_dir / "all_rounds.csv", all_rows)
    store.write_csv(sweep_dir / "summary.csv", summary)
    store.write_csv(sweep_dir / "summary_by_point.csv", by_point)
    _write_sweep_json(spec, sweep_dir, results, meta)
    return summary, by_point


def _write_sweep_json(spec: SweepSpec, sweep_dir: Path, results: list[CellResult], meta: dict[str, Any]) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    store.write_json(
        sweep_dir / "sweep.json",
        {
            **meta,
            "spec": spec.model_dump(mode="json"),
            "counts": counts,
            "cells": [r.as_dict() for r in results],
        },
    )


# ----------------------------------------------------------------------------- running


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _build_jobs(spec: SweepSpec, cells: list[Cell], out: Path) -> tuple[dict[str, _Job], list[list[str]]]:
    """Jobs keyed by run id, and each cell's job keys (teacher first for pipelines)."""
    from dsd2.pipeline import student_config

    jobs: dict[str, _Job] = {}
    cell_jobs: list[list[str]] = []
    for cell in cells:
        if spec.pipeline:
            tcfg = cell.teacher_config
            assert tcfg is not None
            tkey = tcfg.run_id()
            tdir = out / tkey
            if tkey not in jobs:
                jobs[tkey] = _Job(tkey, "teacher", tcfg, tdir, [], [])
            jobs[tkey].cells.append(cell.index)
            scfg = student_config(tcfg, cell.config, tdir)
            skey = scfg.run_id()
            jobs[skey] = _Job(skey, "student", scfg, out / skey, [tkey], [cell.index])
            cell_jobs.append([tkey, skey])
        else:
            key = cell.config.run_id()
            jobs[key] = _Job(key, "run", cell.config, out / key, [], [cell.index])
            cell_jobs.append([key])
    return jobs, cell_jobs


def run_sweep(
    spec: SweepSpec,
    *,
    out: str | Path = "runs",
    backend: Literal["ray", "sequential"] = "ray",
    address: str | None = None,
    max_parallel: int | None = None,
    on_event: EventCallback | None = None,
) -> SweepResult:
    """Run (or resume) every cell of ``spec``; return the per-cell results and summaries.

    ``on_event(cell, status)`` is called with status ``skipped`` (finished before: no task
    started), ``started``, ``retrying``, ``finished`` or ``failed``; for the teacher stage of a
    pipeline the status is prefixed with ``"teacher "`` (once per cell that uses the teacher).
    Ray is initialised (and shut down at the end) unless it already is: ``address`` connects
    to a cluster; locally ``num_cpus`` is ``max_parallel × resources.num_cpus`` or the CPU count.
    ``max_parallel`` caps the runs in flight (None: as many as the resources allow).
    """
    if backend not in ("ray", "sequential"):
        raise UserError(f"unknown sweep backend {backend!r}: use ray or sequential")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"max_parallel must be >= 1, got {max_parallel}")
    out = Path(out).expanduser().resolve()
    cells = expand(spec)
    sweep_dir = out / spec.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs, cell_jobs = _build_jobs(spec, cells, out)
    meta = {"out": str(out), "backend": backend, "address": address, "started": _now()}
    threads = max(1, round(spec.resources.num_cpus))
    fail_once = os.environ.get(FAIL_ONCE_ENV) or None

    def emit(job: _Job, status: str) -> None:
        if on_event is None:
            return
        label = f"teacher {status}" if job.role == "teacher" else status
        for i in job.cells:
            on_event(cells[i], label)

    def results() -> list[CellResult]:
        out_rows = []
        for cell, keys in zip(cells, cell_jobs):
            js = [jobs[k] for k in keys]
            main = js[-1]
            teacher = js[0] if spec.pipeline else None
            failed = [j for j in js if j.state == "failed"]
            if failed:
                status = "failed"
            elif all(j.state in ("done", "skipped") for j in js):
                status = "finished"
            else:
                status = "pending"
            error = None
            if failed:
                j = failed[0]
                error = (f"teacher run failed: {j.errors[-1]}" if j.role == "teacher" and main is not j else j.errors[-1]) if j.errors else "failed"
            errors = [f"teacher: {e}" for e in (teacher.errors if teacher else [])] + list(main.errors)
            out_rows.append(
                CellResult(
                    name=cell.name,
                    params=cell.params,
                    status=status,
                    skipped=all(j.state == "skipped" for j in js),
                    attempts=main.attempts,
                    run_dir=str(main.run_dir),
                    error=error,
                    errors=errors,
                    teacher_dir=str(teacher.run_dir) if teacher else None,
                    teacher_attempts=teacher.attempts if teacher else 0,
                    wall_s=sum(j.wall_s for j in js),
                )
            )
        return out_rows

    with store.run_lock(sweep_dir):
        for job in jobs.values():
            if run_is_finished(job.config, job.run_dir):
                job.state = "skipped"
                emit(job, "skipped")
        _write_sweep_json(spec, sweep_dir, results(), meta)
        pending = [j for j in jobs.values() if j.state == "pending"]
        runner: _Sequential | _Ray | None = None
        try:
            if pending:
                runner = _Ray(spec.resources, address, max_parallel) if backend == "ray" else _Sequential()
            limit = 1 if backend == "sequential" else (max_parallel or len(jobs))
            running = 0

            def payload(job: _Job) -> dict[str, Any]:
                return {
                    "config": job.config.resolved(),
                    "run_dir": str(job.run_dir),
                    "threads": threads,
                    "fail_once": fail_once,
                    "marker_dir": str(sweep_dir / ".fail_once"),
                }

            def submit(job: _Job, retry: bool = False) -> None:
                nonlocal running
                job.attempts += 1
                job.state = "running"
                emit(job, "retrying" if retry else "started")
                assert runner is not None
                runner.submit(job.key, payload(job))
                running += 1

            while True:
                # propagate dependency failures, then start what is ready
                for job in jobs.values():
                    if job.state != "pending":
                        continue
                    dep_states = [jobs[d].state for d in job.deps]
                    if "failed" in dep_states:
                        job.state = "failed"
                        job.errors.append(f"teacher run failed: {jobs[job.deps[0]].errors[-1] if jobs[job.deps[0]].errors else ''}")
                        emit(job, "failed")
                    elif all(s in ("done", "skipped") for s in dep_states) and running < limit:
                        submit(job)
                if running == 0:
                    break
                assert runner is not None
                key, res = runner.wait()
                running -= 1
                job = jobs[key]
                job.wall_s += float(res.get("wall_s") or 0.0)
                if res.get("ok"):
                    job.state = "done"
                    emit(job, "finished")
                else:
                    msg = res.get("error") or "unknown error"
                    job.errors.append(msg)
                    if res.get("traceback"):
                        store.atomic_write_text(sweep_dir / "errors" / f"{job.config.name}.attempt{job.attempts}.txt", res["traceback"])
                    if job.attempts <= spec.retries:
                        submit(job, retry=True)
                    else:
                        job.state = "failed"
                        emit(job, "failed")
                _write_sweep_json(spec, sweep_dir, results(), meta)
        except BaseException:
            if runner is not None:
                runner.cancel_all()
            meta["interrupted"] = _now()
            _write_sweep_json(spec, sweep_dir, results(), meta)
            raise
        finally:
            if isinstance(runner, _Ray):
                runner.close()
        meta["finished"] = _now()
        res_list = results()
        summary, by_point = _write_outputs(spec, sweep_dir, cells, res_list, meta)
    return SweepResult(spec, sweep_dir, res_list, summary, by_point)


# ----------------------------------------------------------------------------- cost estimate


def train_examples(cfg: RunConfig) -> int:
    """Training examples per epoch of ``cfg`` (from the dataset table; no data is loaded)."""
    key = cfg.dataset.name.strip().lower().replace("-", "_")
    if key not in DATASET_SHAPES:
        raise UserError(f"no size known for dataset {cfg.dataset.name!r} (known: {', '.join(DATASET_SHAPES)})")
    info = DATASET_SHAPES[key]
    n = info["train"]
    val = min(info["val"], n // 5) if cfg.dataset.val_size is None else cfg.dataset.val_size
    left = max(0, n - val)
    return min(cfg.dataset.train_subset, left) if cfg.dataset.train_subset else left


def epochs_total(cfg: RunConfig) -> int:
    """Epochs over all rounds (round 0 + ``prune.rounds``), as ``imp.run`` trains them."""
    t, p = cfg.train, cfg.prune
    if p.retrain == "finetune":
        per_round = p.finetune_epochs or t.epochs
    elif p.retrain == "late_rewind":
        per_round = t.epochs - p.rewind_epoch
    else:
        per_round = t.epochs
    return t.epochs + p.rounds * per_round


_STEP_CACHE: dict[str, tuple[float, float, float]] = {}


def _per_example(cfg: RunConfig, teacher: RunConfig | None) -> tuple[float, float, float]:
    """(student forward, student step = fwd + bwd, teacher forward) FLOPs per example."""
    key = json.dumps([_model_key(cfg), _model_key(teacher) if teacher else None])
    if key not in _STEP_CACHE:
        import torch

        from dsd2.flops import step_flops

        model = _meta_model(cfg)
        tmodel = _meta_model(teacher) if teacher is not None else None
        shape = DATASET_SHAPES[cfg.dataset.name.strip().lower().replace("-", "_")]["shape"]
        batch = torch.zeros((2, *shape), device="meta")
        step = step_flops(model, batch, teacher=tmodel)
        _STEP_CACHE[key] = (step.fwd_per_example, (step.dense_fwd + step.dense_bwd) / step.batch_size, step.teacher_fwd_per_example)
    return _STEP_CACHE[key]


def _model_label(cfg: RunConfig) -> str:
    opts = ",".join(f"{k}={_value_text(v)}" for k, v in cfg.model.options.items())
    return f"{cfg.model.name}({opts})" if opts else cfg.model.name


def _run_estimate(cfg: RunConfig, role: str, teacher: RunConfig | None, gpu_tflops: float) -> dict[str, Any]:
    fwd, step, tfwd = _per_example(cfg, teacher)
    n = train_examples(cfg)
    ep = epochs_total(cfg)
    flops = (step + tfwd) * n * ep
    paper = (1.5 * fwd + 0.5 * tfwd) * n * ep  # 3 x student MACs + 1 x teacher MACs per example
    return {
        "role": role,
        "run": cfg.name,
        "model": _model_label(cfg),
        "dataset": cfg.dataset.name,
        "train_examples": n,
        "epochs_total": ep,
        "rounds": cfg.prune.rounds,
        "fwd_flops_per_example": fwd,
        "step_flops_per_example": step + tfwd,
        "teacher_fwd_flops_per_example": tfwd,
        "pflops": flops / 1e15,
        "paper_pflops": paper / 1e15,
        "gpu_hours": flops / (gpu_tflops * 1e12) / 3600.0,
    }


def estimate_cost(spec: SweepSpec, *, gpu_tflops: float = DEFAULT_GPU_TFLOPS, cells: list[Cell] | None = None) -> dict[str, Any]:
    """Training FLOPs of every cell, estimated before running (no data loaded, no training).

    Per run: the model is built on the meta device; :func:`dsd2.flops.step_flops` counts one
    training step on a batch of 2 (forward + backward, 2 FLOPs per multiply-add; KD students
    add the teacher's forward); × training examples × epochs over all ``rounds + 1`` rounds.
    Dense FLOPs (sparsity not credited: unstructured sparsity does not speed up GPU
    training), evaluation and entropy passes left out (< 1% at 160 epochs), early stopping not
    anticipated: an upper bound. ``paper_pflops`` is the paper's convention (3 × MACs per
    example, 1 × for the teacher forward). GPU-hours assume ``gpu_tflops`` TFLOP/s effective
    (default :data:`DEFAULT_GPU_TFLOPS`, an assumption, not measured). A teacher shared by
    several pipeline cells counts once in the totals.
    """
    if not gpu_tflops > 0:
        raise UserError(f"gpu_tflops must be > 0, got {gpu_tflops}")
    cells = expand(spec) if cells is None else cells
    per_cell = []
    unique: dict[str, dict[str, Any]] = {}
    for cell in cells:
        runs = []
        try:
            if spec.pipeline:
                assert cell.teacher_config is not None
                t = _run_estimate(cell.teacher_config, "teacher", None, gpu_tflops)
                s = _run_estimate(cell.config, "student", cell.teacher_config, gpu_tflops)
                runs = [t, s]
                unique.setdefault("teacher:" + cell.teacher_config.run_id(), t)
                unique["student:" + cell.name] = s
            else:
                r = _run_estimate(cell.config, "run", None, gpu_tflops)
                runs = [r]
                unique["run:" + cell.name] = r
        except UserError as err:
            raise _cell_error(spec, cell.name, cell.params, str(err), what=", cost estimate") from None
        per_cell.append(
            {
                "cell": cell.name,
                "params": cell.params,
                "runs": runs,
                "pflops": sum(r["pflops"] for r in runs),
                "paper_pflops": sum(r["paper_pflops"] for r in runs),
                "gpu_hours": sum(r["gpu_hours"] for r in runs),
            }
        )
    total = sum(r["pflops"] for r in unique.values())
    return {
        "sweep": spec.name,
        "gpu_tflops": gpu_tflops,
        "assumption": (
            f"GPU-hours assume {gpu_tflops:g} TFLOP/s effective training throughput (2 FLOPs per multiply-add). "
            "Not measured: no GPU was available when this default was set; time one epoch on your GPU and pass --gpu-tflops."
        ),
        "convention": "dense training FLOPs (fwd + bwd, + teacher fwd for KD), all rounds, no early stop, evaluation excluded",
        "cells": per_cell,
        "runs": len(unique),
        "total_pflops": total,
        "total_paper_pflops": sum(r["paper_pflops"] for r in unique.values()),
        "total_gpu_hours": sum(r["gpu_hours"] for r in unique.values()),
    }


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def format_cost(estimate: dict[str, Any]) -> str:
    """A plain-text table of :func:`estimate_cost`'s result (one line per run)."""
    header = ("cell", "role", "model", "epochs", "examples", "GFLOP/ex-step", "PFLOPs", "GPU-h")
    lines_data = []
    seen = set()
    for c in estimate["cells"]:
        for r in c["runs"]:
            shared = r["role"] == "teacher" and r["run"] in seen
            seen.add(r["run"])
            lines_data.append(
                (
                    c["cell"],
                    r["role"] + (" (shared)" if shared else ""),
                    r["model"],
                    str(r["epochs_total"]),
                    str(r["train_examples"]),
                    f"{r['step_flops_per_example'] / 1e9:.4g}",
                    _num(r["pflops"]),
                    _num(r["gpu_hours"]),
                )
            )
    widths = [max(len(h), *(len(row[i]) for row in lines_data)) if lines_data else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [f"Cost estimate for sweep {estimate['sweep']} ({estimate['convention']}):", fmt.format(*header)]
    out += [fmt.format(*row) for row in lines_data]
    out.append(
        f"total: {estimate['runs']} runs, {_num(estimate['total_pflops'])} PFLOPs "
        f"(paper convention 3×MACs: {_num(estimate['total_paper_pflops'])} PFLOPs), "
        f"≈ {_num(estimate['total_gpu_hours'])} GPU-hours at {estimate['gpu_tflops']:g} TFLOP/s"
    )
    out.append(estimate["assumption"])
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI entry


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.2f}"


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
    console: Any = None,
) -> int:
    """``dsd2 sweep``: print the cost estimate, run (unless ``dry_run``), print the cells.

    Returns 0 when every cell finished (or on a dry run), 1 when some failed. UserErrors
    (bad sweep file, bad cell config) propagate for the CLI to print.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    spec = load_sweep(path, list(overrides))
    cells = expand(spec)
    try:
        cost = format_cost(estimate_cost(spec, gpu_tflops=gpu_tflops, cells=cells))
    except UserError as err:  # e.g. a dataset without a known input shape: run anyway
        cost = f"cost estimate unavailable: {err}"
    console.print(cost, highlight=False, markup=False, soft_wrap=True)
    if dry_run:
        console.print(f"dry run: {len(cells)} cells of sweep {spec.name}, nothing started (out: {out})", markup=False)
        return 0
    done = {"n": 0}

    def on_event(cell: Cell, status: str) -> None:
        if status in ("finished", "failed", "skipped"):
            done["n"] += 1
        console.print(f"[{done['n']}/{len(cells)}] {cell.name}: {status}", highlight=False, markup=False)

    result = run_sweep(spec, out=out, backend=backend, address=address, max_parallel=max_parallel, on_event=on_event)  # type: ignore[arg-type]
    table = Table(title=f"sweep {spec.name}")
    table.add_column("cell")
    table.add_column("status")
    table.add_column("tries", justify="right")
    prefixes = ["teacher_", "student_"] if spec.pipeline else [""]
    for p in prefixes:
        who = p.rstrip("_") + " " if p else ""
        table.add_column(f"{who}best acc %", justify="right")
        table.add_column(f"{who}@ sparsity %", justify="right")
        table.add_column(f"{who}dip pt", justify="right")
    table.add_column(f"run dir (in {Path(out)}) / error")
    for cell, row in zip(result.cells, result.summary):
        status = "skipped (done)" if cell.skipped else cell.status
        vals = []
        for p in prefixes:
            dip = row.get(f"{p}dip_depth")
            vals += [_pct(row.get(f"{p}best_acc")), _pct(row.get(f"{p}best_sparsity")), "" if dip is None else f"{100 * dip:.2f}"]
        table.add_row(cell.name, status, str(cell.attempts), *vals, cell.error or Path(cell.run_dir).name)
    console.print(table)
    console.print(f"summaries: {result.sweep_dir}/summary.csv, summary_by_point.csv, all_rounds.csv, sweep.json", markup=False)
    if any(c.status == "finished" for c in result.cells):
        from dsd2.report.sweep import write_sweep_report

        console.print(f"report: {write_sweep_report(result.sweep_dir)}", markup=False)
    if not result.ok:
        console.print(f"{len(result.failed)} of {len(result.cells)} cells failed; run the sweep again to retry them (finished runs are skipped)", markup=False)
        return 1
    return 0
