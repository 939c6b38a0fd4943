"""Fused training (dsd2.fused) against K sequential runs: aggregate training images/s.

For LeNet-300-100, LeNet-5 and VGG-like(5,3) and K = 1, 2, 4, 8 runs (different seeds, labels and
masks, 50% sparsity, SGD with momentum and weight decay, the batch size and augmentation of
benchmarks/bench.py), one epoch of ``n`` samples per run:

* **fused**: :func:`dsd2.fused.train_fused` trains the K runs as one computation;
* **sequential**: K calls of :func:`dsd2.train.train`, one after the other (today's way);
* **processes** (``--processes``): K separate processes side by side, process k training run k
  with ``--process-threads`` threads (default 1; today's ``dsd2 demo``/sweep way of filling the
  cores), each warmed up first, timed from the first start to the last end;

aggregate images/s = K × n / wall time, and the training FLOP/s it implies (dense forward +
backward per image, counted by torch) as a share of the measured fp32 matmul peak. A ``choice``
section times one training step of K=4 LeNet-5 and VGG-like runs in the two fused forms that
were considered: hand-stacked weights (grouped convolutions, batched matmuls; what dsd2.fused
uses) and ``torch.func`` (``stack_module_state`` + ``vmap`` over ``functional_call``).

Statistic: median of ``--repeats`` timed epochs after one warm-up, fused and sequential
samples taken alternately. The machine's load (uptime)
before and after is recorded: on a shared machine the numbers are only comparable within a file.
Usage::

    python benchmarks/fused.py [--repeats 3] [--ks 1,2,4,8] [--cases 'lenet5;lenet_300_100'] [--processes]
        [--process-threads 1] [--samples 0.5] [--no-choice] [--name fused] [--out benchmarks/results]

A few minutes: ``--cases lenet_300_100 --ks 1,4 --repeats 3 --processes --no-choice --name fused_k4``.
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


def _runs(case_name: str, k: int, n: int, first: int = 0):
    """K runs: models (seeds first..first+K-1) with 50%-sparse masks, sources (same images, own
    labels), generators; run i is the same whichever K it is built in."""
    name, opts, shape, _, aug = bench.CASES[case_name]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    channels_last = len(shape) == 3 and shape[0] == 3
    models, sources, wm = [], [], []
    for seed in range(first, first + k):
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
    gens = [torch.Generator().manual_seed(1000 + s) for s in range(first, first + k)]
    return models, sources, wm, gens


SCHEDULE = T.Schedule(epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4)


def fused_epoch(case_name: str, k: int, n: int) -> float:
    models, sources, wm, gens = _runs(case_name, k, n)
    t = time.perf_counter()
    train_fused(models, sources, SCHEDULE, batch_size=bench.BATCH, generators=gens, weights=[w for w, _ in wm], masks=[m for _, m in wm])
    return k * n / (time.perf_counter() - t)


def sequential_epochs(case_name: str, k: int, n: int, first: int = 0) -> float:
    models, sources, wm, gens = _runs(case_name, k, n, first)
    t = time.perf_counter()
    for model, src, gen, (w, m) in zip(models, sources, gens, wm):
        T.train(model, src, SCHEDULE, batch_size=bench.BATCH, generator=gen, weights=w, masks=m)
    return k * n / (time.perf_counter() - t)


def _process_worker(case_name: str, n: int, seed: int, threads: int, repeats: int) -> None:
    """One of K separate processes: one run (``seed``), a warm-up epoch, then, once the parent
    says go (a line on stdin, sent when all K are ready), ``repeats`` epochs back to back (their
    models and data built before, so the timed span is training alone, as in the other rows);
    prints its start and end."""
    torch.set_num_threads(threads)
    sequential_epochs(case_name, 1, n, seed)  # warm-up
    prepared = [_runs(case_name, 1, n, seed) for _ in range(repeats)]
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.time()
    for models, sources, wm, gens in prepared:
        T.train(models[0], sources[0], SCHEDULE, batch_size=bench.BATCH, generator=gens[0], weights=wm[0][0], masks=wm[0][1])
    print(json.dumps({"seed": seed, "start": t0, "end": time.time()}), flush=True)


def separate_processes(case_name: str, k: int, n: int, repeats: int, threads: int) -> dict:
    """Aggregate img/s of K processes side by side, process i training run i (``threads``
    threads each), started together once all are ready: K × n × repeats / (last end − first start)."""
    import subprocess

    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import fused; fused._process_worker({case_name!r}, {n}, %d, {threads}, {repeats})"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code % s], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for s in range(k)
    ]
    for p in procs:  # the barrier: every process has built its runs and warmed up
        if p.stdout is None or p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a separate process of {case_name} K={k} failed before it was ready")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    spread = max(o["start"] for o in outs) - min(o["start"] for o in outs)
    return {"img_s": k * n * repeats / span, "span_s": span, "threads_each": threads, "start_spread_s": spread}


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
    ap.add_argument("--processes", action="store_true", help="also K separate processes side by side, one run each")
    ap.add_argument("--process-threads", type=int, default=1, help="threads of each separate process (default 1)")
    ap.add_argument("--samples", type=float, default=1.0, help="scale the samples per run of every case (0.25: a quarter)")
    ap.add_argument("--no-choice", action="store_true", help="skip the stacked-vs-vmap choice rows")
    ap.add_argument("--name", default="fused", help="result file name under --out (NAME.json), so a partial run keeps fused.json")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    result: dict = {
        "what": "aggregate training images/s of K fused runs (dsd2.fused.train_fused) vs K sequential dsd2.train.train runs"
        + (" and K separate processes side by side" if args.processes else ""),
        "argv": sys.argv[1:],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "load_before": _load(),
        "repeats": args.repeats,
        "statistic": "median of repeats after one warm-up; fused and sequential samples alternate"
        + ("; processes: K x n x repeats / (last end - first start), each process warmed up first" if args.processes else ""),
        "sparsity": SPARSITY,
        "batch_size": bench.BATCH,
    }
    peak = bench.peak_flops(torch.float32)
    result["peak_fp32_gflops"] = peak / 1e9
    rows = []
    for case in args.cases.split(";"):
        if case not in CASES:
            ap.error(f"--cases: unknown case {case!r}; choose from {';'.join(CASES)}")
        n = max(bench.BATCH, int(CASES[case] * args.samples))
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
                proc = separate_processes(case, k, n, args.repeats, args.process_threads)
                row["processes_img_s"] = proc["img_s"]
                row["processes_pct_peak"] = 100 * proc["img_s"] * per_image / peak
                row["fused_vs_processes"] = f["median"] / proc["img_s"]
                row["processes"] = proc
                print(
                    f"{case:15s} K={k}: {k} separate processes ({proc['threads_each']} thread(s) each) {proc['img_s']:8.0f} img/s "
                    f"({row['processes_pct_peak']:4.1f}% peak); fused x{row['fused_vs_processes']:.2f} of it",
                    flush=True,
                )
            rows.append(row)
            print(
                f"{case:15s} K={k}: fused {row['fused_img_s']:8.0f} img/s ({row['fused_pct_peak']:4.1f}% peak)  "
                f"sequential {row['sequential_img_s']:8.0f} img/s ({row['sequential_pct_peak']:4.1f}% peak)  x{row['speedup']:.2f}",
                flush=True,
            )
    result["rows"] = rows
    choice = []
    for case in () if args.no_choice else ("lenet5", "vgg_like(5,3)"):
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
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
