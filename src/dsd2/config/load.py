"""A config from a YAML file or preset, with ``key.sub=value`` overrides, validated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dsd2.config.safe_yaml import check_size, load_yaml_text
from dsd2.config.schema import RunConfig
from dsd2.errors import UserError
from dsd2.plugins import merge

PRESET_DIR = Path(__file__).parent.parent / "presets"


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict, returning a new dict."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key.sub=value (e.g. prune.rounds=10)")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(raw)
    return out


# a hostile or mistyped config must not make a huge error: keys and values are cut short, and
# only the first problems are listed
_MAX_TEXT = 120
_MAX_PROBLEMS = 20


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    problems = err.errors()
    for e in problems[:_MAX_PROBLEMS]:
        loc = _cut(".".join(str(p) for p in e["loc"]) or "<root>")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `dsd2 config` lists the valid keys)"
        lines.append(f"  {loc}: {msg}{_got(e)}" if e["type"] != "extra_forbidden" else f"  {loc}: {msg}")
    if len(problems) > _MAX_PROBLEMS:
        lines.append(f"  ... and {len(problems) - _MAX_PROBLEMS} more")
    return "\n".join(lines)


def _got(e: Any) -> str:
    """`` (got VALUE)``, cut short: a section's own check names its key and value itself (its
    input is the whole section), and a huge value must not make a huge error line."""
    given = e.get("input")
    if e["type"] == "value_error" and isinstance(given, dict):
        return ""
    return f" (got {_cut(repr(given))})"


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    check_size(data, source)
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections (dataset:, model:, ...)")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        preset = PRESET_DIR / f"{p.name if p.suffix else p.name + '.yaml'}"
        if not p.suffix and preset.is_file():
            p = preset
        elif (p / "config.yaml").is_file():  # a run directory: "not found" would be wrong
            raise UserError(f"{path} is a run directory, not a config file: give {p / 'config.yaml'} to start from its settings")
        else:
            raise UserError(f"config file {path} not found (give a YAML path or a preset name: {', '.join(list_presets())})")
    from dsd2.safe_read import MAX_YAML_BYTES, read_text

    try:
        data = load_yaml_text(read_text(p, max_bytes=MAX_YAML_BYTES, what="config file"), source=str(p))
    except yaml.YAMLError as err:
        raise UserError(f"{p} is not valid YAML: {err}") from None
    check_size(data, str(p))
    return data or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, plugins: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The validated config of a YAML file or preset (None: the defaults) with ``overrides``
    applied; ``plugins`` (``--plugin``) are added to its ``plugins`` (imported before validation)."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    if plugins:
        listed = data.get("plugins") or []
        data["plugins"] = merge(listed if isinstance(listed, list) else [listed], plugins)  # a malformed one: the schema says so
    return validate_config(data, source=str(path) if path else "overrides")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
