"""The sweep file: its schema, loading (files, presets, ``sweep.*`` overrides), validation, and
expansion into cells, each a validated run config.

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
    resources: {num_cpus: 1, num_gpus: 0.25}   # per run process, for Ray; processes: N runs DDP
    retries: 1
    plugins: [my_pkg.dsd2_ext]         # imported first; every cell's config records them

Order of application for a cell: base → ``overrides`` → grid values (a grid key wins over a
file override of the same key; a command-line override of a grid key is refused) → (teacher only)
``distill`` reset to defaults → ``teacher_overrides``. A grid key may name a whole section
(``model: [{name: mlp}, {name: lenet5}]``); so may an override (``model={name: resnet18_cifar}``),
which is how a teacher gets a different architecture (Figure 1: ResNet-18 teacher, VGG-like
student).

Loading and expanding a sweep needs neither Ray nor data; torch only for the model checks
(built on the meta device).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from dsd2.config import PRESET_DIR, RunConfig, apply_overrides, config_hash, load_yaml_text, read_yaml, validate_config
from dsd2.errors import UserError
from dsd2.plugins import check_module_name, merge
from dsd2.study import teacher_config
from dsd2.sweep.shapes import dataset_key, has_model_facts, meta_model

SWEEP_PRESET_DIR = PRESET_DIR / "sweeps"

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME = 120


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    num_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs per run (Ray task); torch threads at most max(1, round(num_cpus)) (train.threads=auto: 1 for small models).",
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs per run process (fractions share a GPU).")
    processes: int = Field(
        1,
        ge=1,
        description="Processes per run: >1 runs the cell data-parallel (torchrun in the cell's task); "
        "num_cpus and num_gpus are per process, a cell reserves processes times them on one node.",
    )

    @field_validator("processes")
    @classmethod
    def _whole_gpus(cls, v: int, info: ValidationInfo) -> int:
        # DDP over NCCL wants one GPU per rank: two ranks on one GPU fail, half a GPU each cannot work
        gpus = info.data.get("num_gpus", 0.0)
        if v > 1 and gpus not in (0, 1):
            raise ValueError(f"processes: {v} needs num_gpus 0 (CPU, gloo) or 1 (one whole GPU per process), got {gpus:g}")
        return v

    @property
    def threads(self) -> int:
        """Torch threads of one run process."""
        return max(1, round(self.num_cpus))

    @property
    def cell_cpus(self) -> float:
        """CPUs a cell's task reserves (all its processes)."""
        return self.num_cpus * self.processes

    @property
    def cell_gpus(self) -> float:
        """GPUs a cell's task reserves: whole ones under DDP, so Ray places the job on one node."""
        return self.num_gpus * self.processes


class SweepSpec(BaseModel):
    """A validated sweep file. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$", description="Sweep name: cells are <name>_<params>; files in out/<name>/."
    )
    description: str = Field("", description="Free text.")
    base: str = Field(description="Preset name or path (relative to the sweep file, then the working directory) of the base run config.")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides applied to every cell.")
    grid: dict[str, list[Any]] = Field(description="Config key -> list of values; the cells are the cartesian product.")
    pipeline: bool = Field(False, description="Each cell is a DSD² pipeline (vanilla teacher IMP, then the KD student).")
    teacher_overrides: list[str] = Field(default_factory=list, description="Pipelines: overrides applied to the teacher config only.")
    resources: Resources = Field(default_factory=Resources)
    retries: int = Field(1, ge=0, description="Extra attempts for a failed run (each resumes from its last finished round).")
    plugins: list[str] = Field(
        default_factory=list, description="Plugin modules (docs/plugins.md), added to every cell's plugins (after the base config's)."
    )

    _source_dir: Path | None = PrivateAttr(default=None)

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        return merge(check_module_name(n) for n in v)

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


@dataclass
class Cell:
    """One grid point. ``config`` is the cell's run (pipelines: the student, before
    ``distill.teacher`` is set); ``teacher_config`` the pipeline's vanilla teacher or None."""

    index: int
    name: str
    params: dict[str, Any]
    config: RunConfig
    teacher_config: RunConfig | None = None


# ----------------------------------------------------------------------------- loading


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
    raise UserError(f"sweep file {path_or_preset} not found (give a YAML path or a sweep preset: {', '.join(list_sweep_presets())})")


def _format_spec_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid sweep file ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (sweep keys: {', '.join(SweepSpec.model_fields)}; config keys go in overrides or grid)")
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


def _apply_sweep_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], path: Path) -> tuple[dict[str, Any], list[str]]:
    """``sweep.<field>=value`` items change ``data``; the rest (run-config overrides) are returned."""
    run_overrides: list[str] = []
    for item in overrides:
        key = _override_key(item)
        if key != "sweep" and not key.startswith("sweep."):
            run_overrides.append(item)
            continue
        rest = key[len("sweep.") :]
        if not rest:
            raise UserError(f"override {item!r}: name a sweep field, e.g. sweep.retries=2")
        value = apply_overrides({}, [f"x={item.partition('=')[2]}"])["x"]
        if rest.startswith("grid."):
            grid = data.get("grid")
            data["grid"] = {**(grid if isinstance(grid, dict) else {}), rest[len("grid.") :]: value}
        else:
            data = apply_overrides(data, [f"{rest}={item.partition('=')[2]}"])
    if run_overrides:
        ov = data.get("overrides") or []
        if not isinstance(ov, list):
            raise UserError(f"{path}: overrides must be a list of key.sub=value strings")
        data["overrides"] = list(ov) + run_overrides
    return data, run_overrides


def load_sweep(
    path_or_preset: str | Path, overrides: list[str] | tuple[str, ...] = (), *, plugins: list[str] | tuple[str, ...] = ()
) -> SweepSpec:
    """Read, validate and expand (every cell config is validated) a sweep file or preset.

    ``overrides``: ``key=value`` strings. ``sweep.<field>=value`` changes the sweep itself
    (``sweep.retries=2``, ``sweep.pipeline=true``, ``sweep.grid.seed=[0,1,2]``,
    ``sweep.resources.num_gpus=0.5``); anything else is a run-config override appended to
    ``overrides`` (applied to every cell, e.g. ``train.epochs=1``). ``plugins`` (``--plugin``) are
    added to the sweep's ``plugins``.
    """
    path = _sweep_file(path_or_preset)
    from dsd2.safe_read import MAX_YAML_BYTES, read_text

    try:
        data = load_yaml_text(read_text(path, max_bytes=MAX_YAML_BYTES, what="sweep file"), source=str(path)) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping (name:, base:, grid:, ...)")
    data, run_overrides = _apply_sweep_overrides(data, overrides, path)
    if plugins:
        listed = data.get("plugins") or []
        data["plugins"] = merge(listed if isinstance(listed, list) else [listed], plugins)  # a malformed list: the schema says so
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_spec_error(err, str(path))) from None
    for item in run_overrides:  # the grid is applied after the overrides: it would silently win
        for key in spec.grid:
            if _overlaps(_override_key(item), key):
                raise UserError(
                    f"sweep {spec.name}: override {item!r} touches grid key {key!r}; change the grid instead (sweep.grid.{key}=[...])"
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


# ----------------------------------------------------------------------------- names


def value_text(value: Any) -> str:
    """A grid value as it appears in a name: ``0.1``, ``true``, ``16-16``, ``vgg_like-depth-5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "-".join(value_text(v) for v in value)
    if isinstance(value, dict):  # a whole section, e.g. a model: its name, then its options
        head = [value_text(value["name"])] if "name" in value else []
        return "-".join(head + [f"{k}-{value_text(v)}" for k, v in value.items() if k != "name"])
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
    text = "_".join(f"{labels[k]}-{value_text(params[k])}" for k in keys)
    return _NAME_CHARS.sub("-", text).strip("-")


def _bounded(name: str, params: dict[str, Any]) -> str:
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9]}_{digest}"


def _teacher_name(spec: SweepSpec, params: dict[str, Any]) -> str:
    """Teacher runs are named by the grid keys that can change them."""
    tkeys = [_override_key(o) for o in spec.teacher_overrides]
    keys = [k for k in params if not _overlaps(k, "distill") and not any(_overlaps(k, t) for t in tkeys)]
    text = param_string(params, keys) if keys else ""
    return _bounded(f"{spec.name}_teacher" + (f"_{text}" if text else ""), {k: params[k] for k in keys})


# ----------------------------------------------------------------------------- cells


def cell_error(spec: SweepSpec, name: str, params: dict[str, Any], msg: str, what: str = "") -> UserError:
    """An error naming the sweep, the cell and its grid values."""
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return UserError(f"sweep {spec.name}, cell {name} ({shown}){what}: {msg}")


def _check_model_and_data(cfg: RunConfig) -> None:
    """Unknown dataset, model, model option or invalid option value: raise UserError.

    Builds the model on the meta device (no memory, no time) when the dataset's registry entry
    gives its classes and input shape; otherwise checks the options against the builder's signature.
    """
    from dsd2.models.registry import validate_options

    try:
        dataset_key(cfg)
    except UserError as err:
        raise UserError(f"dataset.name: {err}") from None
    validate_options(cfg.model.name, cfg.model.options)
    if has_model_facts(cfg):
        meta_model(cfg)


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


# Above this many cells expansion (validation of every cell) takes minutes: refuse early.
MAX_CELLS = 10_000


def expand(spec: SweepSpec) -> list[Cell]:
    """The cells of ``spec`` (cartesian product of the grid, in grid order), validated."""
    _check_spec(spec)
    size = math.prod(len(v) for v in spec.grid.values())
    if size > MAX_CELLS:
        raise UserError(f"sweep {spec.name}: the grid has {size:,} cells, more than {MAX_CELLS:,}: split it into smaller sweeps")
    base = apply_overrides(_base_data(spec), spec.overrides)
    if spec.plugins:  # every run records them (config.yaml): its resume, report and export load them
        listed = base.get("plugins") or []
        base["plugins"] = merge(listed if isinstance(listed, list) else [listed], spec.plugins)
    keys = list(spec.grid)
    cells: list[Cell] = []
    names: set[str] = set()
    seen: dict[str, str] = {}  # hash of a cell's config without its name -> the cell that has it
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
            raise cell_error(spec, name, params, str(err)) from None
        data["name"] = name
        if spec.pipeline and (data.get("distill") or {}).get("teacher"):
            raise cell_error(spec, name, params, "distill.teacher is set, but a pipeline sweep trains the teacher itself")
        try:
            cfg = validate_config(data, source="cell config")
            _check_model_and_data(cfg)
        except UserError as err:
            raise cell_error(spec, name, params, str(err)) from None
        # a plain cell: the run id's settings (options of unselected choices left out) and
        # prune.rounds, which counts here (cells with other round counts are other cells); a
        # pipeline cell is a student whose teacher is set later: its distill settings count
        key = cfg.digest() if spec.pipeline else f"{config_hash(cfg)}:{cfg.prune.rounds}"
        if key in seen:
            raise cell_error(
                spec,
                name,
                params,
                f"it is the same run as cell {seen[key]} (grid values that mean the same, e.g. 0 and 0.0, or an option "
                "this run does not read, e.g. distill.* without a teacher)",
            )
        seen[key] = name
        tcfg = None
        if spec.pipeline:
            try:
                tcfg = teacher_config(data, name=_teacher_name(spec, params), overrides=spec.teacher_overrides)
                _check_model_and_data(tcfg)
            except UserError as err:
                raise cell_error(spec, name, params, str(err), what=", teacher") from None
        cells.append(Cell(index, name, params, cfg, tcfg))
    return cells
