"""Fused training (dsd2.fused) against K sequential runs: aggregate training images/s.

For LeNet-300-100, LeNet-5 and VGG-like(5,3) and K = 1, 2, 4, 8 runs (different seeds, labels and
masks, 50% sparsity, SGD with momentum and weight decay, the batch size and augmentation of
benchmarks/bench.py), one epoch of ``n`` samples per run:

* **fused**: :func:`dsd2.fused.train_fused` trains the K runs as one computation;
* **sequential**: K calls of :func:`dsd2.train.train`, one after the other (today's way);

aggregate images/s = K × n / wall time, and the training FLOP/s it implies (dense forward +
backward per image, counted by torch) as a share of the measured fp32 matmul peak. A ``choice``
section times one training step of K=4 LeNet-5 and VGG-like runs in the two fused forms that
were considered: hand-stacked weights (grouped convolutions, batched matmuls; what dsd2.fused
uses) and ``torch.func`` (``stack_module_state`` + ``vmap`` over ``functional_call``).

Statistic: median of ``--repeats`` timed epochs after one warm-up, fused and sequential
samples taken alternately. The machine's load (uptime)
before and after is recorded: on a shared machine the numbers are only comparable within a file.
Usage::

    python benchmarks/fused.py [--repeats 3] [--ks 1,2,4,8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench

import dsd2.train as T
from dsd2.fused import fold, stack, train_fused, unfold
from dsd2.models import build_model, prunable_weights
from dsd2.prune import apply_masks, full_masks, global_magnitude_masks

# name: bench case, samples per run per timed epoch
CASES = {"lenet_300_100": 2048, "lenet5": 1024, "vgg_like(5,3)": 256}
SPARSITY = 0.5


def _load() -> dict:
    la = os.getloadavg()
    return {"loadavg_1_5_15": [round(x, 2) for x in la], "cpus": os.cpu_count(), "uptime": os.popen("uptime").read().strip()}


def _runs(case_name: str, k: int, n: int):
    """K runs: models (seeds 0..K-1) with 50%-sparse masks, sources (same images, own labels), generators."""
    name, opts, shape, _, aug = bench.CASES[case_name]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    channels_last = len(shape) == 3 and shape[0] == 3
    models, sources, wm = [], [], []
    for seed in range(k):
        torch.manual_seed(seed)
        model = build_model(name, num_classes=10, in_channels=shape[0], input_size=shape[-1], **opts)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        weights = prunable_weights(model)
        masks = global_magnitude_masks(weights, full_masks(weights), SPARSITY)
        apply_masks(weights, masks)
        y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(100 + seed))
        mean, std = (bench.MEAN,) * shape[0], (bench.STD,) * shape[0]
        sources.append(T.Batches(x=x, y=y, mean=mean, std=std, augment=aug, channels_last=channels_last))
        models.append(model)
        wm.append((weights, masks))
    gens = [torch.Generator().manual_seed(1000 + s) for s in range(k)]
    return models, sources, wm, gens


SCHEDULE = T.Schedule(epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4)


def fused_epoch(case_name: str, k: int, n: int) -> float:
    models, sources, wm, gens = _runs(case_name, k, n)
    t = time.perf_counter()
    train_fused(models, sources, SCHEDULE, batch_size=bench.BATCH, generators=gens, weights=[w for w, _ in wm], masks=[m for _, m in wm])
    return k * n / (time.perf_counter() - t)


def sequential_epochs(case_name: str, k: int, n: int) -> float:
    models, sources, wm, gens = _runs(case_name, k, n)
    t = time.perf_counter()
    for model, src, gen, (w, m) in zip(models, sources, gens, wm):
        T.train(model, src, SCHEDULE, batch_size=bench.BATCH, generator=gen, weights=w, masks=m)
    return k * n / (time.perf_counter() - t)


def _process_worker(case_name: str, n: int, seed: int, threads: int, start_at: float, repeats: int) -> None:
    """One of K separate processes: one run, a warm-up epoch, then ``repeats`` epochs from ``start_at``."""
    torch.set_num_threads(threads)
    sequential_epochs(case_name, 1, n)  # warm-up
    while time.time() < start_at:
        time.sleep(0.01)
    t0 = time.time()
    for _ in range(repeats):
        sequential_epochs(case_name, 1, n)
    print(json.dumps({"seed": seed, "start": t0, "end": time.time()}))


def separate_processes(case_name: str, k: int, n: int, repeats: int, cores: int) -> float:
    """Aggregate img/s of K processes training one run each at the same time (threads: the
    cores shared out, at least 1), from the first start to the last end."""
    import subprocess

    threads = max(1, cores // k)
    start_at = time.time() + 8 + 2 * k  # time for the K interpreters to import torch and warm up
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import fused; fused._process_worker({case_name!r}, {n}, %d, {threads}, {start_at}, {repeats})"
    procs = [subprocess.Popen([sys.executable, "-c", code % s], stdout=subprocess.PIPE, text=True) for s in range(k)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if min(o["start"] for o in outs) > start_at + 1:
        print(f"  (processes started {min(o['start'] for o in outs) - start_at:.1f} s late)", flush=True)
    return k * n * repeats / (max(o["end"] for o in outs) - min(o["start"] for o in outs))


def choice_step(case_name: str, k: int, form: str, steps: int = 5) -> float:
    """Images/s of ``steps`` forward+backward steps of K runs in one fused form (stacked | vmap)."""
    name, opts, shape, _, _ = bench.CASES[case_name]
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(name, num_classes=10, in_channels=shape[0], input_size=shape[-1], **opts))
    xs = [torch.randn(bench.BATCH, *shape) for _ in range(k)]
    ys = torch.randint(0, 10, (k, bench.BATCH))
    if form == "stacked":
        fused = stack(models)
        xf = fold(xs)

        def step() -> None:
            logits = unfold(fused(xf), k)
            F.cross_entropy(logits.reshape(k * bench.BATCH, -1), ys.reshape(-1)).backward()

    else:
        params, bufs = torch.func.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        xv = torch.stack(xs)
        fn = torch.func.vmap(lambda p, b, x: torch.func.functional_call(base, (p, b), (x,)))

        def step() -> None:
            logits = fn(params, bufs, xv)
            F.cross_entropy(logits.reshape(k * bench.BATCH, -1), ys.reshape(-1)).backward()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * k * bench.BATCH / (time.perf_counter() - t)


def _interleaved(a, b, repeats: int) -> tuple[dict, dict]:
    """Median of ``repeats`` samples of each, taken alternately after one warm-up each, so a
    burst of load from elsewhere hits both sides alike."""
    a(), b()
    sa, sb = [], []
    for _ in range(repeats):
        sa.append(a())
        sb.append(b())
    return {"median": statistics.median(sa), "samples": sa}, {"median": statistics.median(sb), "samples": sb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--cases", default=";".join(CASES), help="models, separated by ';'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--processes", action="store_true", help="also K separate processes, one run each, at the same time")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    result: dict = {
        "what": "aggregate training images/s of K fused runs (dsd2.fused.train_fused) vs K sequential dsd2.train.train runs",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "load_before": _load(),
        "repeats": args.repeats,
        "statistic": "median of repeats after one warm-up; fused and sequential samples alternate",
        "sparsity": SPARSITY,
        "batch_size": bench.BATCH,
    }
    peak = bench.peak_flops(torch.float32)
    result["peak_fp32_gflops"] = peak / 1e9
    rows = []
    for case in args.cases.split(";"):
        n = CASES[case]
        per_image = bench.train_flops_per_image(bench.CASES[case])
        for k in ks:
            f, s = _interleaved(functools.partial(fused_epoch, case, k, n), functools.partial(sequential_epochs, case, k, n), args.repeats)
            row = {
                "model": case,
                "K": k,
                "samples_per_run": n,
                "fused_img_s": f["median"],
                "sequential_img_s": s["median"],
                "speedup": f["median"] / s["median"],
                "fused_pct_peak": 100 * f["median"] * per_image / peak,
                "sequential_pct_peak": 100 * s["median"] * per_image / peak,
                "fused_samples": f["samples"],
                "sequential_samples": s["samples"],
            }
            if args.processes:
                row["processes_img_s"] = separate_processes(case, k, n, args.repeats, args.threads)
                row["processes_pct_peak"] = 100 * row["processes_img_s"] * per_image / peak
                print(f"{case:15s} K={k}: {k} separate processes {row['processes_img_s']:8.0f} img/s", flush=True)
            rows.append(row)
            print(
                f"{case:15s} K={k}: fused {row['fused_img_s']:8.0f} img/s ({row['fused_pct_peak']:4.1f}% peak)  "
                f"sequential {row['sequential_img_s']:8.0f} img/s ({row['sequential_pct_peak']:4.1f}% peak)  x{row['speedup']:.2f}",
                flush=True,
            )
    result["rows"] = rows
    choice = []
    for case in ("lenet5", "vgg_like(5,3)"):
        for form in ("stacked", "vmap"):
            choice.append(
                {
                    "model": case,
                    "K": 4,
                    "form": form,
                    "img_s": bench.median_of(functools.partial(choice_step, case, 4, form), args.repeats)["median"],
                }
            )
            print(f"choice {case} K=4 {form}: {choice[-1]['img_s']:.0f} img/s", flush=True)
    result["choice"] = choice
    result["load_after"] = _load()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fused.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
