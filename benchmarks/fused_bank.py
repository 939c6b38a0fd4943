"""Curves measured another way against the curve bank: what a user would conclude from each.

``benchmarks/curve_bank.py --fuse --keep DIR`` trains bank entries as fused groups;
``--threads 2 --keep DIR`` trains them unfused on another thread count (the drift any change of
kernels brings, the baseline for fusing's). This script reads the curves kept in DIR and the
bank's own (tests/data/curves, unfused, one thread; or ``--ref DIR``) and compares, per curve: the accuracy columns
round by round, the phase labels (and whether they stay in the ranges a person read off the bank
curve, expected.yaml), the best round and the stop rules' choices (plain and entropy, in both
settings of docs/stop_rules.md).

    .venv/bin/python benchmarks/fused_bank.py DIR [--name fused_bank] [--masks REF_OUT OTHER_OUT]

``--masks`` adds, per round, the overlap of the kept weights (|A∩B| / |A∪B|) between the runs of
two ``--out`` folders, for the curves whose run directories both hold (the bank keeps no masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from dsd2 import bank, rundir
from dsd2.compare import ENTROPY_RULE_DEFAULTS, best_round
from dsd2.phases import classify_phases

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT / "tests" / "data" / "curves"
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ("val_acc", "test_acc", "train_acc_flipped", "unflipped_acc")
RULES = {"plain": ("plain", {}), "entropy": ("entropy", ENTROPY_RULE_DEFAULTS)}
SHORT = {"light": "L", "critical": "K", "sweet": "S", "collapsed": "X", "undetermined": "?"}


def labels(rows: list[dict[str, Any]], n_eval: int) -> list[str]:
    mem = [r["train_acc_flipped"] for r in rows]
    return classify_phases(
        [r["val_acc"] for r in rows],
        memorisation=None if any(m is None for m in mem) else mem,
        fit=[r["unflipped_acc"] for r in rows],
        finished=True,
        n_eval=n_eval,
    ).labels


def boundaries(lab: list[str]) -> dict[str, int | None]:
    first = {p: next((i for i, x in enumerate(lab) if x == p), None) for p in ("sweet", "collapsed")}
    light_end = next((i for i, x in enumerate(lab) if x != "light"), len(lab))
    return {"light_end": light_end, "sweet_start": first["sweet"], "collapse_start": first["collapsed"]}


def in_ranges(b: dict[str, int | None], expected: dict[str, Any]) -> bool:
    def ok(v: int | None, r: list[int] | None) -> bool:
        return v is None if r is None else v is not None and r[0] <= v <= r[1]

    return all(ok(b[k], expected[k]) for k in ("light_end", "sweet_start", "collapse_start"))


def rules(curve: bank.Curve) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for setting, params in bank.SETTINGS.items():
        for label, (rule, extra) in RULES.items():
            o = bank.evaluate(curve, rule, **params, **extra)
            out[f"{setting}/{label}"] = {"selected": o.selected_round, "trained_until": o.trained_until, "ok": o.ok, "test_acc": o.test_acc}
    return out


def one(name: str, ref: bank.Curve, other: bank.Curve, expected: dict[str, Any]) -> dict[str, Any]:
    n = min(len(ref.rows), len(other.rows))
    diffs = {}
    for col in COLUMNS:
        d = [abs(a[col] - b[col]) for a, b in zip(ref.rows[:n], other.rows[:n]) if a[col] is not None and b[col] is not None]
        diffs[col] = {"max_pt": round(100 * max(d), 2), "mean_pt": round(100 * sum(d) / len(d), 2)} if d else None
    lab_ref, lab_other = labels(ref.rows, expected["n_eval"]), labels(other.rows, expected["n_eval"])
    b_ref, b_other = boundaries(lab_ref), boundaries(lab_other)
    best_ref, best_other = best_round(ref.rows), best_round(other.rows)
    return {
        "rounds": [len(ref.rows), len(other.rows)],
        "abs_diff": diffs,
        "labels": ["".join(SHORT[x] for x in lab_ref), "".join(SHORT[x] for x in lab_other)],
        "boundaries": [b_ref, b_other],
        "in_expected_ranges": [in_ranges(b_ref, expected), in_ranges(b_other, expected)],
        "best_round": [best_ref, best_other],
        "best_test_acc": [round(100 * ref.rows[best_ref]["test_acc"], 2), round(100 * other.rows[best_other]["test_acc"], 2)],
        "rules": [rules(ref), rules(other)],
    }


def run_dir_of(out: Path, name: str) -> Path | None:
    found = [d for d in out.glob(f"{name}-*") if d.name[: -len("-0123456789")] == name and rundir.config_path(d).is_file()]
    return found[0] if len(found) == 1 else None


def mask_overlap(a: Path, b: Path) -> list[float]:
    """Per round (from 1), |A∩B| / |A∪B| of the kept weights of two runs of one curve."""
    from fused_exactness import masks_overlap  # this folder's script: python benchmarks/fused_bank.py

    return [round(masks_overlap(a, b, r), 4) for r in range(1, min(len(rundir.read_rounds(a)), len(rundir.read_rounds(b))))]


def compare(other_dir: Path, names: list[str] | None = None, ref_dir: Path = BANK) -> dict[str, Any]:
    expected = yaml.safe_load((BANK / "expected.yaml").read_text())
    ref = {c.name: c for c in bank.load_bank(ref_dir)}
    other = {c.name: c for c in bank.load_bank(other_dir)}
    names = names or sorted(set(ref) & set(other))
    missing = [n for n in names if n not in ref or n not in other]
    if missing:
        raise SystemExit(f"not in both {ref_dir} and {other_dir}: {missing}")
    return {n: one(n, ref[n], other[n], expected[n]) for n in names}


def print_table(res: dict[str, Any]) -> None:
    print(
        "| curve | val max/mean Δ (pt) | test max/mean Δ | memorised max Δ | labels ref / other | in reader's ranges | best round (test %) | rules that chose another round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, r in res.items():
        d = r["abs_diff"]
        mem = d["train_acc_flipped"]["max_pt"] if d["train_acc_flipped"] else "-"
        a, b = r["rules"]
        moved = ", ".join(f"{k} {a[k]['selected']}→{b[k]['selected']}" for k in a if a[k]["selected"] != b[k]["selected"])
        print(
            f"| {n} | {d['val_acc']['max_pt']}/{d['val_acc']['mean_pt']} | {d['test_acc']['max_pt']}/{d['test_acc']['mean_pt']} | {mem} | "
            f"`{r['labels'][0]}` / `{r['labels'][1]}` | {'/'.join('yes' if x else 'no' for x in r['in_expected_ranges'])} | "
            f"{r['best_round'][0]} ({r['best_test_acc'][0]}) / {r['best_round'][1]} ({r['best_test_acc'][1]}) | "
            f"{moved or 'none'} |"
        )


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """What the curves agree on, over all compared curves."""

    def order(lab: str) -> str:  # the phases in order, each once
        return "".join(x for i, x in enumerate(lab) if i == 0 or lab[i - 1] != x)

    shifts: dict[str, list[int]] = {"light_end": [], "sweet_start": [], "collapse_start": []}
    for r in res.values():
        a, b = r["boundaries"]
        for k in shifts:
            if a[k] is not None and b[k] is not None:
                shifts[k].append(abs(a[k] - b[k]))
    overlap = [r["mask_overlap"] for r in res.values() if "mask_overlap" in r]
    return {
        "curves": len(res),
        "same_phase_order": sum(order(r["labels"][0]) == order(r["labels"][1]) for r in res.values()),
        "boundary_shift_rounds": {
            k: {"max": max(v, default=None), "counts": {str(d): v.count(d) for d in sorted(set(v))}} for k, v in shifts.items()
        },
        "in_expected_ranges": [sum(r["in_expected_ranges"][i] for r in res.values()) for i in (0, 1)],
        "same_best_round": sum(r["best_round"][0] == r["best_round"][1] for r in res.values()),
        "best_test_acc_max_diff_pt": round(max(abs(r["best_test_acc"][0] - r["best_test_acc"][1]) for r in res.values()), 2),
        "same_rule_choices": sum(
            all(r["rules"][0][k]["selected"] == r["rules"][1][k]["selected"] for k in r["rules"][0]) for r in res.values()
        ),
        "val_mean_abs_diff_pt": [
            min(r["abs_diff"]["val_acc"]["mean_pt"] for r in res.values()),
            max(r["abs_diff"]["val_acc"]["mean_pt"] for r in res.values()),
        ],
        "val_max_abs_diff_pt": max(r["abs_diff"]["val_acc"]["max_pt"] for r in res.values()),
        "mask_overlap_round1": [min(o[0] for o in overlap), max(o[0] for o in overlap)] if overlap else None,
        "mask_overlap_last": [min(o[-1] for o in overlap), max(o[-1] for o in overlap)] if overlap else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="folder of <curve>/rounds.csv (curve_bank.py --keep DIR)")
    ap.add_argument("names", nargs="*", help="curves (default: all in both)")
    ap.add_argument("--ref", type=Path, default=BANK, help="the curves compared against (default: the bank)")
    ap.add_argument("--masks", nargs=2, type=Path, metavar=("REF_OUT", "OTHER_OUT"), help="run folders to compare masks between")
    ap.add_argument("--name", default=None, help="result file name under benchmarks/results (default: print only)")
    args = ap.parse_args(argv)
    res = compare(args.other, args.names or None, args.ref)
    print_table(res)
    if args.masks:
        for n, r in res.items():
            dirs = [run_dir_of(out, n) for out in args.masks]
            if None not in dirs:
                r["mask_overlap"] = mask_overlap(*dirs)  # type: ignore[arg-type]
                print(f"{n}: masks overlap per round {r['mask_overlap']}")
    agg = summary(res)
    print(json.dumps(agg))
    if args.name:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(
            json.dumps({"ref": str(args.ref), "other": str(args.other), "summary": agg, "curves": res}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
