"""How small can the memorisation probe (noise.probe) be while the phase labels stay right?

Simulated on the curve bank (tests/data/curves/): for every curve whose labels come from
memorisation, the memorisation column (``train_acc_flipped``, measured on thousands of flipped
samples) is replaced by what a probe of ``m`` samples would read, ``Binomial(m, mem) / m`` drawn
independently at each round, and the labels are compared with those of the full column. The probe
size is chosen on one half of the curves (split by setting, seeds of a setting together) and
checked on the other half. What it does not simulate: a real probe is one fixed set of samples
(its rounds are correlated, not independent draws) and a probe of 1% of the samples is memorised
with other dynamics than 40% noise (docs/phases.md, "Memorisation probe").

    PYTHONPATH=src .venv/bin/python benchmarks/probe_size.py [--seeds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dsd2.bank import Curve, load_bank
from dsd2.compare import eval_size, memorisation, phase_labels
from dsd2.phases import PhaseParams

BANK = Path(__file__).resolve().parent.parent / "tests" / "data" / "curves"
SIZES = (25, 50, 100, 200, 300, 500, 700, 1000, 2000)


def memorisation_curves(curves: list[Curve]) -> list[Curve]:
    """The curves labelled from memorisation: the flipped samples' column peaks at or above
    ``min_memorisation``."""
    floor = PhaseParams().min_memorisation
    return [c for c in curves if (m := memorisation(c.rows)) is not None and max(m) >= floor]


def probe_labels(curve: Curve, m: int, rng: np.random.Generator) -> list[str]:
    """The labels when memorisation is read off a probe of ``m`` samples."""
    rows = [
        {**r, "train_acc_flipped": None, "train_acc_probe": int(rng.binomial(m, float(r["train_acc_flipped"]))) / m} for r in curve.rows
    ]
    return phase_labels(rows)


def boundaries_ok(labels: list[str], exp: dict[str, Any]) -> bool:
    """Whether the labels put every boundary where the reader of the bank did (expected.yaml)."""
    n = len(labels)
    light_end = next((i for i, lab in enumerate(labels) if lab != "light"), n)
    if not exp["light_end"][0] <= light_end <= exp["light_end"][1]:
        return False
    for phase, key in (("sweet", "sweet_start"), ("collapsed", "collapse_start")):
        got = next((i for i, lab in enumerate(labels) if lab == phase), None)
        if (got is not None) if exp[key] is None else (got is None or not exp[key][0] <= got <= exp[key][1]):
            return False
    return True


def changes(curves: list[Curve], m: int | None, seeds: int, expected: dict[str, Any]) -> dict[str, Any]:
    """Per curve, over ``seeds`` draws of a probe of ``m`` samples (None: as many as the curve's
    flipped samples, the noise of the measurement itself): draws that changed any label, rounds
    changed, and draws that moved a boundary out of the reader's range."""
    out: dict[str, Any] = {}
    for c in curves:
        full = phase_labels(c.rows)
        size = m or eval_size(c.rows, "train_acc_flipped") or 0
        rng = np.random.default_rng(zlib.crc32(f"{c.name}/{m}".encode()))
        changed_draws = changed_rounds = wrong = 0
        for _ in range(seeds):
            lab = probe_labels(c, size, rng)
            diff = sum(a != b for a, b in zip(full, lab, strict=True))
            changed_draws += diff > 0
            changed_rounds += diff
            wrong += not boundaries_ok(lab, expected[c.name])
        out[c.name] = {
            "size": size,
            "draws_changed": changed_draws,
            "rounds_changed": changed_rounds,
            "rounds": len(full) * seeds,
            "out_of_range": wrong,
        }
    return out


def fallback(curves: list[Curve], expected: dict[str, Any]) -> dict[str, Any]:
    """The labels without any memorisation signal (what such a run gets without a probe)."""
    out: dict[str, Any] = {}
    for c in curves:
        full = phase_labels(c.rows)
        lab = phase_labels([{**r, "train_acc_flipped": None} for r in c.rows])
        diff = sum(a != b for a, b in zip(full, lab, strict=True))
        out[c.name] = {
            "draws_changed": int(diff > 0),
            "rounds_changed": diff,
            "rounds": len(full),
            "out_of_range": int(not boundaries_ok(lab, expected[c.name])),
        }
    return out


def halves(curves: list[Curve]) -> tuple[list[Curve], list[Curve]]:
    settings = sorted({c.setting for c in curves})
    a = set(settings[0::2])
    return [c for c in curves if c.setting in a], [c for c in curves if c.setting not in a]


def smallest(table: dict[int, dict[str, Any]], names: list[str], key: str) -> int | None:
    """The smallest probe size from which on (every larger size too) no draw has ``key`` on ``names``."""
    best = None
    for m in sorted(table, reverse=True):
        if any(table[m][n][key] for n in names):
            break
        best = m
    return best


def _line(what: str, t: dict[str, Any], draws_per_curve: int) -> str:
    draws = sum(v["draws_changed"] for v in t.values())
    rounds = sum(v["rounds_changed"] for v in t.values())
    total = sum(v["rounds"] for v in t.values())
    wrong = sum(v["out_of_range"] for v in t.values())
    hit = sorted(n for n, v in t.items() if v["out_of_range"])
    n = len(t) * draws_per_curve
    return f"{what:>8} | {draws:>4}/{n:<4} | {rounds:>4}/{total:<5} ({100 * rounds / total:4.1f}%) | {wrong:>4}/{n:<4} {', '.join(hit)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    expected = yaml.safe_load((BANK / "expected.yaml").read_text())
    curves = memorisation_curves(load_bank(BANK))
    # curves whose full labels already miss the reader's range cannot tell a probe's error
    curves = [c for c in curves if boundaries_ok(phase_labels(c.rows), expected[c.name])]
    table = {m: changes(curves, m, args.seeds, expected) for m in SIZES}
    own = changes(curves, None, args.seeds, expected)
    fit, check = halves(curves)
    print(f"{len(curves)} bank curves labelled from memorisation (within the reader's ranges); {args.seeds} draws per curve and size")
    print("    size | draws changing a label | rounds changed | draws with a boundary out of the reader's range")
    for m in SIZES:
        print(_line(str(m), table[m], args.seeds))
    sizes = sorted({v["size"] for v in own.values()})
    print(_line("own", own, args.seeds) + f"   (own: a redraw at the curve's own flipped count, {sizes[0]}-{sizes[-1]})")
    print(_line("none", fallback(curves, expected), 1) + "   (none: accuracy alone, no memorisation signal)")
    names = [c.name for c in curves]
    for a, b in ((fit, check), (check, fit)):  # both folds: choose on one half, check on the other
        chosen = smallest(table, [c.name for c in a], "out_of_range")
        print(f"boundaries right: chosen on {len(a)} curves ({', '.join(sorted({c.setting for c in a}))}): m = {chosen}")
        if chosen is not None:
            bad = {c.name: table[chosen][c.name]["out_of_range"] for c in b if table[chosen][c.name]["out_of_range"]}
            print(f"  checked on the other {len(b)} curves at m = {chosen}: {bad or 'no draw out of range'}")
    print(f"boundaries right on all {len(names)} curves from m = {smallest(table, names, 'out_of_range')}")
    if args.json:
        args.json.write_text(json.dumps({"sizes": {str(m): t for m, t in table.items()}, "own": own}, indent=1))


if __name__ == "__main__":
    main()
