"""Options and choices shared by several commands."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer


class Rule(StrEnum):
    """Stop rules `dsd2 stop` can apply offline."""

    plain = "plain"
    entropy = "entropy"


class Select(StrEnum):
    """Which round a stop rule keeps."""

    best = "best"
    last_good = "last_good"


def plugin_option(recorded: bool = False) -> Any:
    """``--plugin MODULE`` (repeatable): a module to import first, for what it registers."""
    where = (
        "recorded in the run's config.yaml, so later commands on the run load it"
        if recorded
        else "a run's recorded plugins load without it"
    )
    return typer.Option(
        None,
        "--plugin",
        metavar="<module>",
        help=f"Plugin module to import first (it registers models, datasets, ...); repeatable; {where} (docs/plugins.md).",
    )


def load_plugins(plugins: list[str] | None) -> None:
    from dsd2.plugins import load_plugins as load

    load(plugins or [])


def quiet_option() -> Any:
    return typer.Option(False, "--quiet", "-q", help="No progress output.")


def out_option(help: str = "Folder for run directories.") -> Any:
    return typer.Option(Path("runs"), "--out", "-o", help=help)
