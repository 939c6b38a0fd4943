"""Runs as the Python API sees them: a config from anything a user may hold, and the typed
result of a run (its directory, config and finished rows).

Kept apart from :mod:`dsd2.rundir` (the files' contract) and :mod:`dsd2.imp` (the round loop):
both :mod:`dsd2.pipeline` and :mod:`dsd2.api` build on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsd2 import rundir
from dsd2.config import RunConfig, apply_overrides, load_config, validate_config
from dsd2.rundir import RoundRow

# What the API accepts as a config: a preset name, a YAML file, a mapping of sections or a RunConfig.
Config = str | Path | Mapping[str, Any] | RunConfig


def as_config(config: Config, overrides: Sequence[str] = ()) -> RunConfig:
    """The RunConfig of ``config`` with ``key.sub=value`` ``overrides`` applied (as the CLI does)."""
    if isinstance(config, RunConfig) and not overrides:
        return config
    if isinstance(config, RunConfig | Mapping):
        data = config.resolved() if isinstance(config, RunConfig) else dict(config)
        return validate_config(apply_overrides(data, list(overrides)), source="config")
    return load_config(str(config), list(overrides))


@dataclass(frozen=True)
class RunResult:
    """A run directory, its config and the rows of its finished rounds (``rounds.csv``, phases
    labelled; refused when edited since dsd2 wrote it)."""

    run_dir: Path
    config: RunConfig
    rows: list[RoundRow]

    @property
    def complete(self) -> bool:
        """Every configured round is finished, or the run's early-stop rule or the channel floor ended it."""
        return rundir.is_complete(self.config, len(self.rows), self.run_dir)


def result(run_dir: str | Path) -> RunResult:
    """The RunResult of an existing run directory (nothing is trained)."""
    run_dir = Path(run_dir)
    cfg = rundir.read_config(run_dir)
    rows = rundir.read_rounds(run_dir) if rundir.rounds_csv_path(run_dir).is_file() else []
    return RunResult(run_dir, cfg, rows)
