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


# The stop rule's knobs, shared by `stop` and `compare` (the same words for the same option).
def tolerance_option() -> Any:
    return typer.Option(0.0, help="Accuracy drop tolerated before a round counts as a drop: a fraction, 0.03 for 3 points.")


def patience_option() -> Any:
    return typer.Option(1, help="Consecutive dropped rounds needed to stop.")


def select_option() -> Any:
    return typer.Option(Select.best, help="best: most accurate round trained; last_good: sparsest round before the stop.")
