"""Fingerprints of fused training, to show a speed change left the numbers bit-identical.

Two parts, both on CPU in fp32, seconds each:

* ``train_fused``: K=3 runs of LeNet-300-100, LeNet-5 and VGG-like(2,2) (BatchNorm, CIFAR
  augmentation) from ``benchmarks/fused.py``'s setup, 2 epochs; sha256 of every run's trained
  weights and buffers and of its epoch logs;
* ``run_group``: small fused IMP groups written to run directories: the tests' tiny MNIST-1D MLP
  (3 seeds, 2 epochs, 3 rounds) and demo_fmnist shortened (LeNet-300-100 on Fashion-MNIST, 2 seeds,
  1 epoch, 2 rounds, 1,000 training samples; skipped when the data are not found); sha256 of each
  run's rounds.csv without its timing columns, and of its round states and masks.

Run it on the code before and after a change and compare (``--compare BEFORE.json``)::

    python benchmarks/fused_digest.py --out /tmp/before.json
    python benchmarks/fused_digest.py --out /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import bench
import fused as fb

from dsd2 import rundir, store
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.fused import train_fused

TIMING = ("wall_s", "train_s", "eval_s", "time_s")  # columns that differ run to run


def _sha(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def engine_digests() -> dict:
    out = {}
    cases = {"lenet_300_100": 512, "lenet5": 256}
    bench.CASES["vgg_like(2,2)"] = ("vgg_like", {"depth": 2, "gamma": 2}, (3, 32, 32), 128, bench.CIFAR_AUG)
    cases["vgg_like(2,2)"] = 128
    for case, n in cases.items():
        models, sources, wm, gens = fb._runs(case, 3, n)
        schedule = fb.SCHEDULE.__class__(epochs=2, lr=0.01, momentum=0.9, weight_decay=1e-4)
        logs = train_fused(models, sources, schedule, batch_size=64, generators=gens, weights=[w for w, _ in wm], masks=[m for _, m in wm])
        out[case] = [{"state": _sha(m.state_dict()), "logs": [vars(x) for x in log]} for m, log in zip(models, logs)]
    return out


def _run_digest(d: Path) -> dict:
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_rounds(d)]
    states = {}
    for r in store.finished_rounds(d):
        states[f"{r}/state"] = _sha(store.load_tensors(rundir.round_state_path(d, r)))
        states[f"{r}/masks"] = _sha(store.load_tensors(rundir.round_masks_path(d, r)))
    return {"rounds": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16], "rows": rows, "files": states}


def group_digests() -> dict:
    from dsd2.fused.group import run_group

    from conftest import tiny_config

    groups = {
        "tiny_mnist1d": [
            tiny_config(
                "train.epochs=2", "prune.rounds=3", "model.hidden=[32, 32]", "entropy.batch_size=700", "train.threads=1", f"seed={s}"
            )
            for s in (0, 1, 2)
        ],
    }
    try:
        demo = [
            load_config("demo_fmnist", ["train.epochs=1", "prune.rounds=2", "dataset.train_subset=1000", "train.threads=2", f"seed={s}"])
            for s in (0, 1)
        ]
        groups["demo_fmnist_short"] = demo
    except UserError as err:
        print(f"demo_fmnist skipped: {err}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfgs in groups.items():
            try:
                dirs = run_group(cfgs, Path(tmp) / name, say=print)
            except UserError as err:  # e.g. Fashion-MNIST not found
                print(f"{name} skipped: {err}")
                continue
            out[name] = [_run_digest(d) for d in dirs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="an earlier output of this script: report every difference")
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {"torch": torch.__version__, "engine": engine_digests(), "groups": group_digests()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        same = True
        for part in ("engine", "groups"):
            for name, runs in result[part].items():
                if before[part].get(name) != runs:
                    same = False
                    print(f"DIFFERENT: {part} {name}")
                else:
                    print(f"identical: {part} {name} ({len(runs)} runs)")
        print("bit-identical" if same else "NOT bit-identical")
        sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
