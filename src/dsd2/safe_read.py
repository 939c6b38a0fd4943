"""The one door every file dsd2 reads goes through: regular file, bounded size, bounded depth, schema.

A run folder, an export, a sweep folder or a data folder may come from someone else, or be
damaged. Before its bytes are parsed a file must be a regular file (a FIFO would block the
reader forever, ``/dev/zero`` never ends, a directory is not a file); its size must be below a cap
chosen for what it is; JSON and YAML must nest no deeper than :data:`MAX_DEPTH` (a parser's
recursion, and every later walk over the data, stays bounded). Then a typed schema
(:mod:`dsd2.file_schemas`) says whether the data is what dsd2 wrote. Every failure is a
:class:`UserError` naming the file and the way out.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dsd2.errors import UserError

# The deepest nesting any dsd2 file has is about 6 (a config's model options); user configs and
# sweep specs stay far below this. Deeper is refused before any recursive code sees it.
MAX_DEPTH = 64
# Caps by kind of file. Metadata files are kilobytes; tables grow with rounds (a few MB at most).
MAX_JSON_BYTES = 16 << 20
MAX_YAML_BYTES = 4 << 20
MAX_TABLE_BYTES = 64 << 20
# A YAML alias repeated inside aliases ("billion laughs") is tiny on disk and huge once expanded
# (every walk over the data, a schema's included, visits each copy): count the nodes as expanded
# and stop early.
MAX_YAML_NODES = 100_000

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular(path: str | Path, *, what: str = "") -> os.stat_result:
    """The ``stat`` of ``path`` (symlinks followed) when it is a regular file; a UserError naming
    it otherwise. Nothing is opened: a FIFO or device is refused without blocking or reading."""
    label = f"{what} {path}".strip()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{label} is missing") from None
    except NotADirectoryError:
        raise UserError(f"{Path(path).parent} is a file, not a dsd2 run directory (nor a folder holding {Path(path).name})") from None
    except OSError as err:
        raise UserError(f"cannot read {label}: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{label} is {_kind(st.st_mode)}, not a regular file: replace it with the file dsd2 expects")
    return st


def read_bytes(path: str | Path, *, max_bytes: int, what: str = "") -> bytes:
    """The bytes of a regular file no larger than ``max_bytes``. Opened non-blocking and checked
    again on the open descriptor, so a file swapped for a FIFO after the check cannot hang us."""
    label = f"{what} {path}".strip()
    check_regular(path, what=what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UserError(f"cannot read {label}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{label} is {_kind(st.st_mode)}, not a regular file: replace it with the file dsd2 expects")
        if st.st_size > max_bytes:
            raise UserError(f"{label} is {st.st_size} bytes, more than the {max_bytes} a file of this kind may have: it is not dsd2's")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # grew while we read it
                raise UserError(f"{label} is more than {max_bytes} bytes: it is not dsd2's")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise UserError(f"cannot read {label}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, *, max_bytes: int, what: str = "") -> str:
    raw = read_bytes(path, max_bytes=max_bytes, what=what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{f'{what} {path}'.strip()} is not UTF-8 text ({err.reason} at byte {err.start}): it is binary or corrupt"
        ) from None


def depth(data: Any) -> int:
    """How deeply lists and mappings nest in ``data`` (0 for a scalar); iterative, so any depth is safe."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse_json(text: str | bytes, *, source: str, hint: str = "", max_depth: int = MAX_DEPTH) -> Any:
    """JSON with at most ``max_depth`` levels of nesting (deeper: refused, never a RecursionError)."""
    tail = f"; {hint}" if hint else ""
    if _json_too_deep(text, max_depth):
        raise UserError(f"{source} nests deeper than {max_depth} levels: it is not dsd2's{tail}")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{source} is corrupt ({err}){tail}") from None
    except RecursionError:
        raise UserError(f"{source} nests too deeply: it is not dsd2's{tail}") from None
    return data


def _json_too_deep(text: str | bytes, max_depth: int) -> bool:
    """A cheap upper bound on the nesting: brackets counted outside strings would be exact, but
    counting all opening brackets first is enough to skip the exact scan for ordinary files."""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if s.count("[") + s.count("{") <= max_depth:
        return False
    level, in_str, escaped = 0, False, False
    for ch in s:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            level += 1
            if level > max_depth:
                return True
        elif ch in "]}":
            level -= 1
    return False


def check_yaml_depth(text: str, *, source: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse YAML nesting deeper than ``max_depth``, from the parser's events (PyYAML's parser is
    a loop; only its composer recurses, and it runs after this check)."""
    if text.count("[") + text.count("{") + text.count(":") + text.count("-") <= max_depth:
        return
    level = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                level += 1
                if level > max_depth:
                    raise UserError(f"{source} nests deeper than {max_depth} levels: refused")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                level -= 1
    except yaml.YAMLError:
        return  # the loader that follows reports the syntax error with its position


def check_size(data: Any, source: str, limit: int = MAX_YAML_NODES) -> None:
    """Refuse a parsed YAML document that expands to more than ``limit`` nodes."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise UserError(f"{source} expands to more than {limit} values (YAML aliases nested in aliases?): refused")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_yaml(text: str, *, source: str, hint: str = "", max_depth: int = MAX_DEPTH) -> Any:
    """YAML (safe types only) with at most ``max_depth`` levels of nesting and
    :data:`MAX_YAML_NODES` values once its aliases are expanded."""
    tail = f"; {hint}" if hint else ""
    check_yaml_depth(text, source=source, max_depth=max_depth)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{source} is corrupt ({yaml_reason(err)}){tail}") from None
    except RecursionError:
        raise UserError(f"{source} nests too deeply: refused{tail}") from None
    check_size(data, source)
    return data


def yaml_reason(err: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own text spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0] if str(err) else type(err).__name__
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


M = TypeVar("M", bound=BaseModel)


def validate(data: Any, schema: type[M], *, source: str, hint: str = "") -> M:
    """``data`` as ``schema``; a UserError naming the first wrong keys otherwise."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the top level'}: {e['msg']}" for e in err.errors()[:3])
        more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
        tail = f"; {hint}" if hint else ""
        raise UserError(f"{source} is not what dsd2 writes ({problems}{more}){tail}") from None


def read_json(path: str | Path, schema: type[M] | None = None, *, hint: str = "", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file through every check; with ``schema``, the validated model."""
    data = parse_json(read_bytes(path, max_bytes=max_bytes), source=str(path), hint=hint)
    return validate(data, schema, source=str(path), hint=hint) if schema is not None else data


def read_yaml(path: str | Path, schema: type[M] | None = None, *, hint: str = "", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """A YAML file through every check; with ``schema``, the validated model."""
    data = parse_yaml(read_text(path, max_bytes=max_bytes), source=str(path), hint=hint)
    return validate(data, schema, source=str(path), hint=hint) if schema is not None else data
