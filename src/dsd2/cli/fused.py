"""``dsd2 run CONFIG --seeds 0,1,2``: several seeds of one config, fused into one group on a GPU."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from dsd2.cli import render
from dsd2.cli.render import rounds_table
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.imp.execution import resolve_device


def _silent(line: str) -> None:
    pass


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` as [0, 1, 2]; a clear error for anything else (empty, not ASCII digits, repeated)."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p or not (p.isascii() and p.isdigit()) for p in parts):
        raise UserError(f"--seeds {text!r}: give non-negative integers separated by commas, e.g. --seeds 0,1,2")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r} names a seed twice: each seed is one run")
    return seeds


# benchmarks/results/fused_idle_s6.json, fused_demo_idle_s6.json: on 2 idle cores fused training was
# 0.62-1.15x of the same runs one after another (conv nets slowest), so a CPU default does not fuse
SEQUENTIAL_ON_CPU = (
    "--seeds on a CPU: the runs train one after another (fusing measured no faster on CPUs, slower for "
    "conv nets: docs/fused.md, Speed); --fuse trains them as one fused group anyway"
)


def fuse_by_default(cfg: RunConfig) -> bool:
    """``--seeds`` without ``--fuse``/``--no-fuse``: fuse where the runs train on a GPU."""
    return resolve_device(cfg.train.device).type != "cpu"


def run_seeds(
    config: str, overrides: list[str], seeds_text: str, out: Path, *, fuse: bool | None, quiet: bool, plugins: list[str]
) -> list[Path]:
    """One run of ``config`` per seed, each in the run directory ``dsd2 run CONFIG seed=S`` would
    write; fused (docs/fused.md) when ``fuse`` is True, one after another when False, and when
    None fused on a GPU only (``fuse_by_default``)."""
    from dsd2 import rundir
    from dsd2.config import load_config
    from dsd2.fused.group import run_group
    from dsd2.imp import run

    seeds = parse_seeds(seeds_text)
    if (Path(config) / rundir.CONFIG).is_file():
        raise UserError(f"{config} is a run directory: --seeds starts new runs from a config or preset (resume a run without --seeds)")
    if any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
        raise UserError("--seeds sets each run's seed: drop the seed= override")
    cfgs = [load_config(config, [*overrides, f"seed={s}"], plugins=plugins) for s in seeds]
    say: Callable[[str], None] = _silent if quiet else render.err_console.print

    def done(k: int, row) -> None:
        say(f"seed {seeds[k]}: round {row.round} {100 * row.sparsity:.2f}% sparse, test {100 * (row.test_acc or 0):.2f}%")

    # where `dsd2 run CONFIG seed=S` puts each run (found once: it may scan --out for an older
    # run), and what it says of it (reused, moved, a new run beside an older one), read before training
    targets = [rundir.run_dir_for(c, out) for c in cfgs]
    notes = [
        [n for n in (rundir.finished_note(c, d), rundir.moved_note(c, d), rundir.classifier_default_note(c, d, out)) if n]
        for c, d in zip(cfgs, targets)
    ]
    if fuse is None:
        fuse = fuse_by_default(cfgs[0])
        if not fuse and len(cfgs) > 1:
            say(SEQUENTIAL_ON_CPU)
    if fuse:
        dirs = run_group(cfgs, out, say=say, on_round=done, run_dirs=targets)
    else:
        dirs = [run(c, out, run_dir=d, on_round=functools.partial(done, k)) for k, (c, d) in enumerate(zip(cfgs, targets))]
    for seed, cfg, d, said in zip(seeds, cfgs, dirs, notes):
        for note in said:
            render.console.print(f"seed {seed}: {note}")
        render.console.print(rounds_table(rundir.read_rounds(d), title=f"{cfg.name} seed {seed}: {cfg.model.name} on {cfg.dataset.name}"))
        render.console.print(f"run directory: {d}")
    return dirs
