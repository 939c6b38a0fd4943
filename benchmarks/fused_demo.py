"""The demo's wall time fused against today's, on the same machine: ``dsd2 demo`` vs ``dsd2 demo --fuse``.

Each side runs the whole command in a fresh process (``python -m dsd2 demo --out TMP [--fuse]
OVERRIDES``), into its own temporary folder, so both pay the same imports, data loading, tables
and report; today's side runs its pipelines ``--jobs`` processes at a time (the demo's default
2), the fused side trains the seeds' teachers as one group, then their students. ``--how api``
times the pipelines alone (``dsd2.study.run_pipelines_parallel`` vs
``dsd2.fused.pipelines.run_pipelines_fused``), without the report.

Shortened by overrides (default: 8 epochs, 6 rounds; the demo itself is 60 epochs × 30 rounds,
~15 min a side on 2 cores): the ratio of a shortened demo is close to the full one's because both
are dominated by training, but ``--full`` runs the demo as it ships. Statistic: the wall time
of each side, ``--repeats`` times, the sides alternating (today first on even repeats), and the
ratio of the medians. The machine (platform, cores, torch) and its load (load average) before
and after every sample are recorded: on a shared machine the numbers are only comparable within
a file. Usage::

    python benchmarks/fused_demo.py [--repeats 1] [--seeds 0,1] [--how cli|api] [--full] [--name fused_demo] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

SHORT = ["train.epochs=8", "prune.rounds=6"]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cli(fuse: bool, seeds: str, jobs: int, overrides: list[str], out: Path) -> tuple[float, list[str]]:
    """Wall time of the command, and its lines about threads or fusing (what it ran with)."""
    cmd = [sys.executable, "-m", "dsd2", "demo", "--out", str(out), "--seeds", seeds, "--jobs", str(jobs)]
    cmd += (["--fuse"] if fuse else []) + overrides
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    said = sorted({line.strip() for line in done.stderr.splitlines() if "thread" in line or "fused:" in line})
    return wall, said


def _api(fuse: bool, seeds: str, jobs: int, overrides: list[str], out: Path) -> tuple[float, list[str]]:
    from dsd2.config import load_config

    configs = [load_config("demo_fmnist", [*overrides, f"seed={s}"]) for s in seeds.split(",")]
    t = time.perf_counter()
    if fuse:
        from dsd2.fused.pipelines import run_pipelines_fused

        run_pipelines_fused(configs, out=out, say=lambda line: print(f"  {line}", flush=True))
    else:
        from dsd2.study import run_pipelines_parallel

        run_pipelines_parallel(configs, out=out, jobs=jobs)
    return time.perf_counter() - t, []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--jobs", type=int, default=2, help="today's side: pipelines side by side (the demo's default)")
    ap.add_argument("--how", choices=("cli", "api"), default="cli")
    ap.add_argument("--full", action="store_true", help="the demo as it ships (no shortening overrides)")
    ap.add_argument("--name", default="fused_demo", help="result file name under --out (NAME.json)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("overrides", nargs="*", help=f"overrides of the demo preset (default: {' '.join(SHORT)})")
    args = ap.parse_args()
    overrides = [] if args.full else (args.overrides or SHORT)
    side = _cli if args.how == "cli" else _api
    result: dict = {
        "what": "wall time of the demo, today's (pipelines side by side, --jobs processes) vs fused (dsd2 demo --fuse)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "processor": platform.processor()},
        "how": args.how,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "overrides": overrides,
        "statistic": "median wall time of each side over the repeats (sides alternating); speedup = today / fused",
        "load_before": _load(),
        "samples": [],
    }
    walls: dict[str, list[float]] = {"today": [], "fused": []}
    for r in range(args.repeats):
        for name in ("today", "fused") if r % 2 == 0 else ("fused", "today"):
            before = _load()
            with tempfile.TemporaryDirectory() as tmp:
                wall, said = side(name == "fused", args.seeds, args.jobs, overrides, Path(tmp))
            walls[name].append(wall)
            result["samples"].append({"side": name, "wall_s": wall, "load_before": before, "load_after": _load(), "said": said})
            print(f"{name}: {wall:.1f} s (load {before[0]} -> {_load()[0]})", flush=True)
    result["today_s"] = statistics.median(walls["today"])
    result["fused_s"] = statistics.median(walls["fused"])
    result["speedup"] = result["today_s"] / result["fused_s"]
    result["load_after"] = _load()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"today {result['today_s']:.1f} s, fused {result['fused_s']:.1f} s: x{result['speedup']:.2f}; wrote {path}")


if __name__ == "__main__":
    main()
