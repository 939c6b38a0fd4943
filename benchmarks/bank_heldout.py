"""The stop rules' defaults on curves they were not fitted on: the curve bank's later additions.

``dsd2.compare.ENTROPY_RULE_DEFAULTS`` was fitted on the bank as it stood (docs/stop_rules.md).
Curves added afterwards (SGD, pair-flip, look-alike noise, rate 0.4, neuron and
channel pruning, two students) are a held-out test of those defaults as they are, without
refitting: this script applies the plain rule, the entropy rule with the defaults, "never stop"
and the oracle to them in both settings and writes the table to
``benchmarks/results/bank_heldout.json``.

    .venv/bin/python benchmarks/bank_heldout.py [CURVE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dsd2 import bank
from dsd2.compare import ENTROPY_RULE_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT / "tests" / "data" / "curves"
# the curves added after ENTROPY_RULE_DEFAULTS was fitted
ADDED = (
    "fm_lenet300_e20_n40_s0_sgd",
    "fm_lenet300_e40_n40_s0_sgd",
    "fm_lenet300_e20_n40_s0_pairflip",
    "fm_lenet300_e20_n40_s0_lookalike",
    "fm_lenet300_e20_n40_s0_r40",
    "fm_lenet300_e20_n40_s0_neurons",
    "fm_lenet5_e20_n40_s0_channels",
    "fm_lenet300_e20_n40_s0_sgd_dsd2",
    "fm_vgg23_e15_n40_s0_dsd2",
)
RULES = {
    "plain": ("plain", {}),
    "entropy (defaults)": ("entropy", ENTROPY_RULE_DEFAULTS),
    "never stop": ("never", {}),
    "oracle": ("oracle", {}),
}


def table(names: list[str]) -> dict[str, dict[str, object]]:
    curves = [c for c in bank.load_bank(BANK) if c.name in names]
    missing = sorted(set(names) - {c.name for c in curves})
    if missing:
        raise SystemExit(f"not in {BANK}: {missing}")
    out: dict[str, dict[str, object]] = {}
    for setting, params in bank.SETTINGS.items():
        rows: dict[str, object] = {}
        for label, (rule, extra) in RULES.items():
            outcomes = [bank.evaluate(c, rule, **params, **extra) for c in curves]
            ok, cost = bank.score(outcomes)
            rows[label] = {
                "successes": ok,
                "curves": len(outcomes),
                "mean_cost": round(-cost, 3),
                "per_curve": {o.curve: {"ok": o.ok, "selected": o.selected_round, "trained_until": o.trained_until} for o in outcomes},
            }
        out[setting] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="curves (default: the nine added after the fit)")
    args = ap.parse_args(argv)
    names = args.names or list(ADDED)
    result = {"defaults": ENTROPY_RULE_DEFAULTS, "curves": names, "settings": bank.SETTINGS, "table": table(names)}
    dest = ROOT / "benchmarks" / "results" / "bank_heldout.json"
    dest.write_text(json.dumps(result, indent=1) + "\n")
    for setting, rows in result["table"].items():
        print(f"{setting}:")
        for label, r in rows.items():
            print(f"  {label:20s} {r['successes']}/{r['curves']} at mean cost {r['mean_cost']:.2f}")
    print(f"written {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
