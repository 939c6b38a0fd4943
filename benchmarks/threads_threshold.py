"""The FLOPs-per-step threshold below which one torch thread trains faster than two.

For a ladder of model sizes (MLPs on 40 features, LeNet-300-100, LeNet-5, VGG-like on 32×32),
times ``--steps`` training steps (forward, backward, Adam step; batch 128, data resident in
memory, as in dsd2's loop) at 1 and at 2 torch threads, alternating, ``--repeats`` times after
a warm-up; the statistic is the median seconds per step. The step's FLOPs are counted with
:func:`dsd2.flops.step_flops` (dense forward + backward). The threshold written to the JSON is
the geometric mean of the largest step that is not at least ``--gain`` faster on two threads and
the smallest step that is (``dsd2.threads.THRESHOLD_FLOPS_PER_STEP`` holds the value used).

Run on an otherwise idle machine (the script prints the load average it started with)::

    python benchmarks/threads_threshold.py [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from dsd2.flops import step_flops
from dsd2.models import build_model

BATCH = 128

CASES = {
    "mlp[16,16]/40": dict(model="mlp", opts={"hidden": [16, 16]}, shape=(40,)),
    "mlp[64,64]/40": dict(model="mlp", opts={"hidden": [64, 64]}, shape=(40,)),
    "mlp[256,256]/40": dict(model="mlp", opts={"hidden": [256, 256]}, shape=(40,)),
    "lenet_300_100/28x28": dict(model="lenet_300_100", opts={}, shape=(1, 28, 28)),
    "mlp[1024,1024]/40": dict(model="mlp", opts={"hidden": [1024, 1024]}, shape=(40,)),
    "lenet5/28x28": dict(model="lenet5", opts={}, shape=(1, 28, 28)),
    "mlp[2048,2048,2048]/40": dict(model="mlp", opts={"hidden": [2048, 2048, 2048]}, shape=(40,)),
    "vgg_like(d2,g1)/32x32": dict(model="vgg_like", opts={"depth": 2, "gamma": 1}, shape=(3, 32, 32)),
    "vgg_like(d5,g3)/32x32": dict(model="vgg_like", opts={"depth": 5, "gamma": 3}, shape=(3, 32, 32)),
}


def _model(case):
    torch.manual_seed(0)
    shape = case["shape"]
    c, size = (shape[0], shape[1]) if len(shape) == 3 else (1, shape[0])
    return build_model(case["model"], num_classes=10, in_channels=c, input_size=size, **case["opts"])


def _steps(model, opt, x, y, n):
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def measure(case, steps: int, repeats: int) -> dict:
    model = _model(case)
    x = torch.randn(BATCH, *case["shape"])
    y = torch.randint(0, 10, (BATCH,))
    flops = step_flops(model, x).dense_step
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # calibrate the step count so one sample takes about 0.3 s
    torch.set_num_threads(1)
    _steps(model, opt, x, y, 3)
    one = _steps(model, opt, x, y, 3)
    n = max(3, min(steps, int(0.3 / max(one, 1e-6))))
    samples: dict[int, list[float]] = {1: [], 2: []}
    for t in (1, 2):  # warm-up at each thread count
        torch.set_num_threads(t)
        _steps(model, opt, x, y, max(1, n // 3))
    for _ in range(repeats):
        for t in (1, 2):
            torch.set_num_threads(t)
            samples[t].append(_steps(model, opt, x, y, n))
    med = {t: statistics.median(v) for t, v in samples.items()}
    return {
        "step_flops": flops,
        "steps_per_sample": n,
        "median_s_per_step": {"1": med[1], "2": med[2]},
        "speedup_2_over_1": med[1] / med[2],
        "samples_s_per_step": {str(t): v for t, v in samples.items()},
    }


def threshold(results: dict, gain: float) -> float | None:
    pts = sorted((r["step_flops"], r["speedup_2_over_1"]) for r in results.values())
    wins = [f for f, s in pts if s >= gain]
    if not wins:
        return None
    smallest_win = min(wins)
    below = [f for f, s in pts if s < gain and f < smallest_win]
    return math.sqrt(max(below) * smallest_win) if below else smallest_win


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="Most steps per sample.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gain", type=float, default=1.1, help="Two threads count as better when this much faster.")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    load = os.getloadavg()
    results = {}
    for name, case in CASES.items():
        results[name] = r = measure(case, args.steps, args.repeats)
        print(
            f"{name:28s} {r['step_flops'] / 1e6:12.1f} MFLOP/step  1 thread {1e3 * r['median_s_per_step']['1']:8.2f} ms  "
            f"2 threads {1e3 * r['median_s_per_step']['2']:8.2f} ms  speed-up {r['speedup_2_over_1']:.2f}",
            flush=True,
        )
    thr = threshold(results, args.gain)
    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "loadavg_at_start": load,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "method": f"median s/step of {args.repeats} samples per thread count (1 and 2, alternating, after a warm-up), batch {BATCH}, Adam",
        "gain": args.gain,
        "threshold_flops_per_step": thr,
        "cases": results,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "threads_threshold.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"threshold: {thr if thr is None else f'{thr:.3g}'} FLOPs per step -> {path}")


if __name__ == "__main__":
    main()
