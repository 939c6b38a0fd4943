"""How close a fused group's rounds.csv is to the same runs trained separately (docs/fused.md).

Runs the demo setting (LeNet-300-100, Fashion-MNIST 5k subset, 40% noise), shortened by
overrides, for several seeds: once as one fused group (dsd2.fused.group.run_group), once run by
run (dsd2.imp.run), on CPU in fp32. Writes, per round: the largest |fused - separate| of every
accuracy column and of train_loss over the seeds, the smallest masks overlap (|A∩B| / |A∪B| of
the kept weights) and the wall times. Usage::

    python benchmarks/fused_exactness.py [--seeds 0,1] [--out benchmarks/results] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from dsd2 import imp, rundir, store
from dsd2.config import load_config
from dsd2.fused.group import run_group

COLUMNS = ("train_acc_noisy", "train_acc_clean", "train_acc_flipped", "unflipped_acc", "val_acc", "test_acc", "entropy", "train_loss")
DEFAULT = ["train.epochs=4", "prune.rounds=8", "train.threads=2"]


def masks_overlap(a: Path, b: Path, r: int) -> float:
    """|A∩B| / |A∪B| of the weights two runs keep at round ``r``."""
    ma = store.load_tensors(rundir.round_masks_path(a, r))
    mb = store.load_tensors(rundir.round_masks_path(b, r))
    inter = sum(int((ma[k] & mb[k]).sum()) for k in ma)
    return inter / sum(int((ma[k] | mb[k]).sum()) for k in ma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("overrides", nargs="*", default=DEFAULT)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cfgs = [load_config("demo_fmnist", [*args.overrides, f"seed={s}"]) for s in seeds]
    result: dict = {
        "what": "fused group vs separate runs, demo_fmnist shortened, CPU fp32",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_before": os.popen("uptime").read().strip(),
        "overrides": args.overrides,
        "seeds": seeds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        fused = run_group(cfgs, Path(tmp) / "fused")
        result["fused_wall_s"] = time.perf_counter() - t
        t = time.perf_counter()
        separate = [imp.run(c, Path(tmp) / "separate") for c in cfgs]
        result["separate_wall_s"] = time.perf_counter() - t
        rows = []
        frs = [store.read_csv(d / "rounds.csv") for d in fused]
        srs = [store.read_csv(d / "rounds.csv") for d in separate]
        for r in range(len(frs[0])):
            row: dict = {"round": r, "sparsity": frs[0][r]["sparsity"]}
            for col in COLUMNS:
                diffs = [abs(f[r][col] - s[r][col]) for f, s in zip(frs, srs) if f[r][col] is not None and s[r][col] is not None]
                row[f"max_abs_diff_{col}"] = max(diffs) if diffs else None
            row["min_mask_overlap"] = min(masks_overlap(f, s, r) for f, s in zip(fused, separate))
            rows.append(row)
            print(json.dumps(row))
        result["rounds"] = rows
    result["load_after"] = os.popen("uptime").read().strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_exactness.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'fused_exactness.json'}; fused {result['fused_wall_s']:.1f}s, separate {result['separate_wall_s']:.1f}s")


if __name__ == "__main__":
    main()
