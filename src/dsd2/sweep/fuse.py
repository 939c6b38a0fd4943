"""``dsd2 sweep … --fuse``: the cells that can train together, grouped, and run as fused groups.

Cells are grouped by :func:`fuse_key`: their configs equal but for what a fused group lets each
run keep to itself (seed, noise, name, number of rounds, early stop, the teacher's path). A
pipeline sweep's teachers are grouped among themselves and trained first, then its students.
The groups train through :func:`dsd2.fused.group.run_group` into the cells' own run directories;
the sweep then runs as without ``--fuse`` and finds those runs finished (anything a group could
not finish, it retries unfused), so sweep.json, the summaries and the report are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.sweep.scheduler import Job, State, place_student

# config keys a fused group lets differ from run to run (dotted paths into RunConfig.resolved())
PER_RUN_KEYS = ("seed", "name", "noise", "prune.rounds", "early_stop", "distill.teacher", "dataset.label_key")


def fuse_key(cfg: RunConfig) -> str:
    """What must be equal for two runs to train in one fused group, as a canonical string."""
    data: dict[str, Any] = cfg.resolved()
    for key in PER_RUN_KEYS:
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(data, sort_keys=True, default=str)


def fuse_groups(jobs: dict[str, Job]) -> list[list[Job]]:
    """The pending jobs in fused groups: teachers first, then the others; within each stage,
    jobs with equal :func:`fuse_key`, in the sweep's order."""
    groups: list[list[Job]] = []
    for stage in (("teacher",), ("run", "student")):
        by_key: dict[str, list[Job]] = {}
        for job in jobs.values():
            if job.role in stage and job.state is State.PENDING:
                by_key.setdefault(fuse_key(job.config), []).append(job)
        groups.extend(by_key.values())
    return groups


def describe_groups(groups: list[list[Job]]) -> list[str]:
    """One line per group for the dry run: its size and run ids."""
    lines = [f"fused groups: {len(groups)} (sizes {', '.join(str(len(g)) for g in groups) or '-'})"]
    for n, group in enumerate(groups, 1):
        lines.append(f"  group {n} ({len(group)} runs): " + ", ".join(j.key for j in group))
    return lines


def run_groups(groups: list[list[Job]], say: Callable[[str], None]) -> None:
    """Train every group fused into its jobs' run directories. A group that fails is left to the
    sweep (which resumes its runs unfused, with its retries); one line says so."""
    from dsd2.fused.group import run_group

    for n, group in enumerate(groups, 1):
        say(f"fused group {n}/{len(groups)}: {len(group)} runs")
        for job in group:
            place_student(job)  # its teacher trained in an earlier group
        try:
            run_group([j.config for j in group], group[0].run_dir.parent, say=say, run_dirs=[j.run_dir for j in group])
        except (UserError, RuntimeError) as err:
            say(f"fused group {n} stopped ({str(err).splitlines()[0][:200]}); the sweep retries its runs unfused")
