"""Taking back a run's start: a start that fails, or a fused group one of whose runs cannot
start, leaves no half-made run directory and no run that says it was extended but trained nothing."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dsd2 import rundir, store


@dataclass(frozen=True)
class StartUndo:
    """What a run's start changed that can be put back: the directory it created (``fresh``), or
    the config.yaml and meta.json it found there (``before``; an extension rewrites both)."""

    run_dir: Path
    fresh: bool
    before: Mapping[Path, bytes] = field(default_factory=dict)

    @classmethod
    def found(cls, run_dir: Path, *, fresh: bool) -> StartUndo:
        """Before the start (its lock held): the bytes of ``run_dir``'s config.yaml and meta.json."""
        paths = [rundir.config_path(run_dir), rundir.meta_path(run_dir)]
        before = {p: p.read_bytes() for p in paths} if all(p.is_file() for p in paths) else {}
        return cls(run_dir, fresh, before)

    def __call__(self) -> None:
        if self.fresh:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        for path, data in self.before.items():
            if not path.is_file() or path.read_bytes() != data:
                store.atomic_write_bytes(path, data)
