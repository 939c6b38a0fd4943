"""Which round of a run to export: ``best``, ``last_good`` or a round index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dsd2 import compare, rundir, store
from dsd2.config import EarlyStopConfig, RunConfig
from dsd2.errors import UserError


def select_round(run_dir: Path, choice: str | int, cfg: RunConfig, rows: list[rundir.RoundRow]) -> tuple[int, dict[str, Any]]:
    """(round index, how it was selected) for ``choice`` in {"best", "last_good", <int>} on the
    run's checksummed rows. ``best`` and ``last_good`` need the run's whole curve."""
    if not rows:
        raise UserError(f"{run_dir} has no finished round yet: nothing to export")
    if isinstance(choice, int) or re.fullmatch(r"-?[0-9]{1,9}", str(choice)):  # ASCII digits: "²".isdigit() is True
        idx = int(choice)
        if not 0 <= idx < len(rows):
            raise UserError(
                f"round {idx} of {run_dir} is not finished (finished: 0..{len(rows) - 1}); give --round best, last_good or one of those"
            )
        return idx, {"selected_by": "round"}
    if choice not in ("best", "last_good"):
        raise UserError(f"--round {str(choice)[:40]!r}: give best, last_good or a round index (0 to 999999999)")
    if store.is_locked(run_dir):
        raise UserError(f"{run_dir} is still running (another dsd2 process holds its lock): --round {choice} needs its whole curve")
    if not rundir.is_complete(cfg, len(rows), run_dir):
        raise UserError(
            f"{run_dir} has {len(rows)} of {cfg.prune.rounds + 1} rounds: --round {choice} needs the whole curve; "
            f"`dsd2 resume {run_dir}` finishes it, or give --round N (0..{len(rows) - 1})"
        )
    col = compare.selection_column(rows)
    if choice == "best":
        return compare.best_round(rows, col), {"selected_by": "best", "selected_on": col}
    es = cfg.early_stop
    if es.rule == "none":  # no rule of its own: the plain rule with the config's defaults (docs/export.md)
        es = EarlyStopConfig(rule="plain")
    decision = compare.decide(rows, es.rule, tolerance=es.tolerance, patience=es.patience, select="last_good", options=es.rule_options)
    assert decision is not None and decision.selected_round is not None  # plain and entropy always decide on rows
    rule = {"rule": es.rule, "tolerance": es.tolerance, "patience": es.patience, "select": "last_good", "reason": decision.reason}
    return decision.selected_round, {"selected_by": "last_good", "selected_on": col, "stop_rule": rule}
