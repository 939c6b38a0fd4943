"""Plugins: modules imported for their side effects (``register_model``, ``register_dataset``, ...)
before a config is validated, so that the names they register work everywhere a config does.

Three ways in (docs/plugins.md):

- the config key ``plugins: [my_pkg.dsd2_ext]`` (recorded in the run's config.yaml, so
  ``resume``, ``pipeline``, ``sweep`` workers, ``report`` and ``export`` load it again);
- ``--plugin MODULE`` on every command (added to the config's ``plugins``);
- the entry-point group ``dsd2.plugins`` of installed packages, loaded once per process.

A module is importable as usual (installed, on ``PYTHONPATH``), or from the current directory
(as ``python -m`` would find it). A plugin that fails to import is a :class:`UserError` naming
the module and the error. This module imports only the standard library and :mod:`dsd2.errors`:
:mod:`dsd2.config` calls it before validating, and ``import dsd2`` (and ``dsd2 --help``) must
stay cheap, so nothing is scanned or imported until :func:`load_plugins` is called.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from dsd2.errors import UserError

__all__ = ["ENTRY_POINT_GROUP", "check_module_name", "load_entry_points", "load_plugins", "merge", "plugin_roots"]

ENTRY_POINT_GROUP = "dsd2.plugins"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_loaded: list[str] = []  # plugin modules imported by this process, in order
_entry_points_done = False


def check_module_name(name: str) -> str:
    """``name`` stripped, or a UserError when it is not a dotted module name (``my_pkg.dsd2_ext``)."""
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name.strip()):
        raise UserError(f"plugin {name!r} is not a module name such as my_pkg.dsd2_ext (a file path is not: put its folder on PYTHONPATH)")
    return name.strip()


def merge(*lists: Iterable[str] | None) -> list[str]:
    """The plugin names of ``lists`` in order, each once."""
    out: list[str] = []
    for names in lists:
        for name in names or ():
            if name not in out:
                out.append(name)
    return out


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1]}" if text else type(err).__name__


def _plugin_missing(name: str, err: ModuleNotFoundError) -> bool:
    # the plugin (or its package) itself missing, not a module it imports
    return err.name is not None and (name == err.name or name.startswith(err.name + "."))


def _import(name: str) -> None:
    try:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            cwd = str(Path.cwd())
            if not _plugin_missing(name, err) or cwd in sys.path:
                raise
            sys.path.append(cwd)  # as `python -m` would: a plugin next to the config is found
            importlib.import_module(name)
    except ModuleNotFoundError as err:
        hint = " (is it installed, on PYTHONPATH or in the current directory?)" if _plugin_missing(name, err) else ""
        raise UserError(f"plugin {name} failed to import: {_error_text(err)}{hint}") from None
    except (Exception, SystemExit) as err:  # a plugin's bug must not look like dsd2's, nor exit silently
        raise UserError(f"plugin {name} failed to import: {_error_text(err)}") from None


def load_entry_points() -> list[str]:
    """Load every entry point of the group ``dsd2.plugins`` (once per process); their names."""
    global _entry_points_done
    if _entry_points_done:
        return []
    _entry_points_done = True  # set first: a failing entry point is reported once, not on every config
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except (Exception, SystemExit) as err:
            _entry_points_done = False  # the next call reports it again rather than running without it
            raise UserError(
                f"plugin entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) failed to load: {_error_text(err)}"
            ) from None
        names.append(ep.name)
    return names


def load_plugins(names: Iterable[str] = (), *, paths: Iterable[str] = (), entry_points: bool = True) -> list[str]:
    """Import the plugin modules ``names`` (each once per process) and, unless ``entry_points``
    is false, the ``dsd2.plugins`` entry points; return ``names`` checked.

    ``paths``: folders appended to ``sys.path`` first when missing (a sweep worker gets the
    driver's :func:`plugin_roots`, since it may not start where the driver did).
    """
    checked = [check_module_name(n) for n in names]
    for p in paths:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)
    if entry_points:
        load_entry_points()
    for name in checked:
        if name not in _loaded:
            _import(name)
            _loaded.append(name)
    return checked


def plugin_roots(names: Iterable[str]) -> list[str]:
    """The ``sys.path`` folders the (imported) plugins ``names`` were found in: what another
    process needs on its path to import them too."""
    roots: list[str] = []
    for name in names:
        top = sys.modules.get(name.split(".")[0])
        if top is None:
            continue
        file = getattr(top, "__file__", None)
        files = [str(file)] if file else []
        files += [str(Path(p) / "__init__.py") for p in getattr(top, "__path__", None) or []]  # namespace packages
        for f in files:
            path = Path(f).resolve()
            root = path.parent.parent if path.name == "__init__.py" else path.parent
            if str(root) not in roots:
                roots.append(str(root))
    return roots
