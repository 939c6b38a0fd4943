"""Measure the curve bank: real IMP curves on settings that differ from the demo.

The phase labels, the best-fit choice and the stop rules are validated on these curves
(tests/data/curves/, docs/curve_bank.md). Each entry is one dsd2 run; students are DSD² runs
distilled from the entry named in ``teacher``. Only rounds.csv and entropy.csv are kept (in the
bank, or under ``--keep DIR`` for a measurement that must not replace it).

    .venv/bin/python benchmarks/curve_bank.py --out runs/bank --jobs 2 [NAME ...]

One thread per run; ``--jobs`` runs side by side, or ``--fuse`` trains the entries that share a
model and schedule as fused groups (docs/fused.md). Runs resume, so a killed bank continues.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

DEST = Path(__file__).resolve().parent.parent / "tests" / "data" / "curves"

FMNIST = {"name": "fashion_mnist", "root": "./data", "val_size": 5000, "train_subset": 5000, "augment": False}
ADAM = {"batch_size": 128, "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "schedule": "cosine", "device": "cpu", "threads": 1}


def fmnist(model: dict[str, Any], epochs: int, noise: float, seed: int, rounds: int = 30) -> dict[str, Any]:
    return {
        "seed": seed,
        "dataset": FMNIST,
        "noise": {"kind": "symmetric" if noise > 0 else "none", "rate": noise},
        "model": model,
        "train": {**ADAM, "epochs": epochs},
        "prune": {"rounds": rounds, "rate": 0.2, "method": "global_magnitude", "retrain": "lr_rewind"},
        "entropy": {"enabled": True},
    }


LENET300 = {"name": "lenet_300_100"}
LENET5 = {"name": "lenet5"}
VGG23 = {"name": "vgg_like", "depth": 2, "gamma": 3}
MNIST1D = {
    "seed": 0,
    "dataset": {"name": "mnist1d", "root": None, "val_size": 500},
    "noise": {"kind": "symmetric", "rate": 0.4},
    "model": {"name": "mlp", "hidden": [512, 512]},
    "train": {**ADAM, "epochs": 60},
    "prune": {"rounds": 26, "rate": 0.2},
    "entropy": {"enabled": True},
}

VIT = {"name": "vit", "patch_size": 7, "dim": 64, "depth": 2, "heads": 2, "mlp_ratio": 4.0, "pool": "mean"}


def fmnist_vit(epochs: int, noise: float, seed: int) -> dict[str, Any]:
    """The preset fmnist_vit_tiny (GELU blocks; AdamW, cosine with warm-up; 40% of the block
    Linears per round, 10 rounds to 99.4%) at another noise rate, seed or length."""
    return {
        **fmnist(VIT, epochs, noise, seed, rounds=10),
        "train": {**ADAM, "optimizer": "adamw", "epochs": epochs, "warmup_epochs": 2},
        "prune": {
            "rounds": 10,
            "rate": 0.4,
            "method": "global_magnitude",
            "retrain": "lr_rewind",
            "include_classifier": False,
            "exclude_first_conv": True,
        },
    }


SGD = {**ADAM, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "multistep", "milestones": [0.5, 0.75]}
# Fashion-MNIST's look-alike classes: T-shirt<->shirt, pullover<->coat, sandal->sneaker->ankle boot.
FMNIST_LOOKALIKE = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 9}


def variant(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``base`` with some sections' fields replaced (the added curves: one change each)."""
    return {**base, **{k: {**base[k], **v} for k, v in sections.items()}}


# name -> (config, teacher name or None). Students distil (alpha 1, T 10) from their teacher's best round.
BANK: dict[str, tuple[dict[str, Any], str | None]] = {
    "fm_lenet300_e6_n40_s0": (fmnist(LENET300, 6, 0.4, 0), None),
    "fm_lenet300_e6_n40_s1": (fmnist(LENET300, 6, 0.4, 1), None),
    "fm_lenet300_e20_n40_s0": (fmnist(LENET300, 20, 0.4, 0), None),
    "fm_lenet300_e20_n40_s1": (fmnist(LENET300, 20, 0.4, 1), None),
    "fm_lenet300_e20_n10_s0": (fmnist(LENET300, 20, 0.1, 0), None),
    "fm_lenet300_e20_n20_s0": (fmnist(LENET300, 20, 0.2, 0), None),
    "fm_lenet300_e20_n60_s0": (fmnist(LENET300, 20, 0.6, 0), None),
    "fm_lenet300_e20_n0_s0": (fmnist(LENET300, 20, 0.0, 0), None),
    "mnist1d_mlp_e60_n40_s0": (MNIST1D, None),
    "fm_lenet5_e20_n40_s0": (fmnist(LENET5, 20, 0.4, 0, rounds=26), None),
    "fm_lenet300_e60_n40_s0": (fmnist(LENET300, 60, 0.4, 0), None),
    "fm_vgg23_e15_n40_s0": (fmnist(VGG23, 15, 0.4, 0, rounds=26), None),
    "fm_lenet300_e60_n40_s1": (fmnist(LENET300, 60, 0.4, 1), None),
    "fm_lenet300_e60_n20_s0": (fmnist(LENET300, 60, 0.2, 0), None),
    "fm_vit_e20_n40_s0": (fmnist_vit(20, 0.4, 0), None),
    "fm_vit_e20_n40_s1": (fmnist_vit(20, 0.4, 1), None),
    "fm_vit_e20_n20_s0": (fmnist_vit(20, 0.2, 0), None),
    "fm_vit_e20_n40_s2": (fmnist_vit(20, 0.4, 2), None),
    "fm_vit_e40_n40_s0": (fmnist_vit(40, 0.4, 0), None),
    # added after the rest (the stop-rule defaults were fitted without them), one change each from fm_lenet300_e20_n40_s0 (or the LeNet-5/VGG curves)
    "fm_lenet300_e20_n40_s0_sgd": (variant(fmnist(LENET300, 20, 0.4, 0), train={**SGD, "epochs": 20}), None),
    "fm_lenet300_e40_n40_s0_sgd": (variant(fmnist(LENET300, 40, 0.4, 0), train={**SGD, "epochs": 40}), None),
    "fm_lenet300_e20_n40_s0_pairflip": (variant(fmnist(LENET300, 20, 0.4, 0), noise={"kind": "pairflip"}), None),
    "fm_lenet300_e20_n40_s0_lookalike": (
        variant(fmnist(LENET300, 20, 0.4, 0), noise={"kind": "asymmetric", "class_map": FMNIST_LOOKALIKE}),
        None,
    ),
    "fm_lenet300_e20_n40_s0_r40": (variant(fmnist(LENET300, 20, 0.4, 0, rounds=14), prune={"rate": 0.4}), None),
    "fm_lenet300_e20_n40_s0_neurons": (variant(fmnist(LENET300, 20, 0.4, 0, rounds=20), prune={"allocation": "channel_uniform"}), None),
    "fm_lenet5_e20_n40_s0_channels": (variant(fmnist(LENET5, 20, 0.4, 0, rounds=20), prune={"allocation": "channel_uniform"}), None),
    "fm_lenet300_e20_n40_s0_dsd2": (fmnist(LENET300, 20, 0.4, 0), "fm_lenet300_e20_n40_s0"),
    "fm_lenet300_e20_n40_s0_sgd_dsd2": (variant(fmnist(LENET300, 20, 0.4, 0), train={**SGD, "epochs": 20}), "fm_lenet300_e20_n40_s0_sgd"),
    "fm_vgg23_e15_n40_s0_dsd2": (fmnist(VGG23, 15, 0.4, 0, rounds=26), "fm_vgg23_e15_n40_s0"),
    "fm_lenet300_e60_n40_s0_dsd2": (fmnist(LENET300, 60, 0.4, 0), "fm_lenet300_e60_n40_s0"),
    "fm_lenet300_e6_n40_s0_dsd2": (fmnist(LENET300, 6, 0.4, 0), "fm_lenet300_e6_n40_s0"),
    "fm_lenet5_e20_n40_s0_dsd2": (fmnist(LENET5, 20, 0.4, 0, rounds=26), "fm_lenet5_e20_n40_s0"),
}


def config_of(name: str, out: str, threads: int = 1):
    """The entry's run config; a student's names its teacher's run directory (which must exist).
    ``threads``: ``train.threads``, an execution setting outside the run id (the bank used 1)."""
    from dsd2.config import validate_config
    from dsd2.rundir import run_dir_for

    data, teacher = BANK[name]
    data = {**data, "name": name, "train": {**data["train"], "threads": threads}}
    if teacher is not None:
        teacher_dir = str(run_dir_for(config_of(teacher, out), out))
        data = {**data, "distill": {"teacher": teacher_dir, "round": "best", "alpha": 1.0, "temperature": 10.0}}
    return validate_config(data, source=name)


def _keep(name: str, run_dir: Path, keep: Path = DEST) -> None:
    dest = keep / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("rounds.csv", "entropy.csv"):
        shutil.copyfile(run_dir / f, dest / f)


def run_fused(names: list[str], out: str, keep: Path = DEST, threads: int = 1) -> None:
    """``--fuse``: the entries that can train together (dsd2.sweep.fuse.fuse_key: same model,
    data and schedule) as fused groups (docs/fused.md), teachers before students."""
    from dsd2.fused.group import run_group
    from dsd2.sweep.fuse import fuse_key

    for stage in ([n for n in names if BANK[n][1] is None], [n for n in names if BANK[n][1] is not None]):
        groups: dict[str, list[str]] = {}
        for n in stage:
            groups.setdefault(fuse_key(config_of(n, out, threads)), []).append(n)
        for group in groups.values():
            print(f"fused group: {', '.join(group)}", flush=True)
            for n, run_dir in zip(group, run_group([config_of(n, out, threads) for n in group], out)):
                _keep(n, run_dir, keep)


def run_one(name: str, out: str, keep: Path = DEST, threads: int = 1) -> str:
    from dsd2 import imp

    teacher = BANK[name][1]
    if teacher is not None:
        run_one(teacher, out, keep, threads)  # finished: resolves to its directory without training
    cfg = config_of(name, out, threads)

    def line(row: dict[str, Any]) -> None:
        print(f"[{name}] round {row['round']:>2} sparsity {100 * row['sparsity']:6.2f}% val {100 * row['val_acc']:.2f}%", flush=True)

    run_dir = imp.run(cfg, out, on_round=line)
    _keep(name, run_dir, keep)
    return str(run_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="bank entries (default: all)")
    ap.add_argument("--out", default="runs/bank")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--fuse", action="store_true", help="train the entries that share a model and schedule as fused groups")
    ap.add_argument(
        "--keep",
        type=Path,
        default=DEST,
        help="where each curve's rounds.csv and entropy.csv are copied (default: the bank, tests/data/curves)",
    )
    ap.add_argument("--threads", type=int, default=1, help="train.threads of every run (the bank used 1; outside the run id)")
    args = ap.parse_args(argv)
    names = args.names or list(BANK)
    unknown = [n for n in names if n not in BANK]
    if unknown:
        print(f"unknown bank entries: {unknown}; known: {list(BANK)}", file=sys.stderr)
        return 2
    # teachers first, so students find them finished
    names.sort(key=lambda n: BANK[n][1] is not None)
    if args.fuse:
        run_fused(names, args.out, args.keep, args.threads)
        return 0
    teachers = [n for n in names if BANK[n][1] is None]
    students = [n for n in names if BANK[n][1] is not None]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(run_one, teachers, [args.out] * len(teachers), [args.keep] * len(teachers), [args.threads] * len(teachers)))
        list(pool.map(run_one, students, [args.out] * len(students), [args.keep] * len(students), [args.threads] * len(students)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
