"""dsd2's training loop against the reference-style pipeline, the machine's peak, and one IMP round.

Everything is measured in one process, on the same synthetic data, on this machine:

* **peak**: FLOP/s of a large fp32 matmul (and bf16 where the CPU has it), the ceiling a
  training loop can approach;
* **train**: images/s of one training epoch of ``dsd2.train.train`` (device-resident uint8 data,
  batched augmentation, masks re-applied after each step, threads by dsd2's ``auto`` rule) against
  the reference-style pipeline (per-sample PIL transforms in a DataLoader with 2 workers,
  ``torch.nn.utils.prune`` hooks, ``.item()`` every step, torch's default threads), for
  LeNet-300-100, LeNet-5, VGG-like(5,3), VGG-like(5,5) and ResNet-18 (CIFAR) at 0% and 90%
  sparsity; the achieved training FLOP/s (dense forward + backward, counted by torch) against the peak;
* **variants** (what might beat the default on CPU): ``torch.compile`` of the model, bf16
  autocast, and evaluation under ``inference_mode`` with larger batches;
* **round**: one IMP round of a real run broken down into its steps (prune, reset, train,
  evaluate, entropy, FLOP counting, writes); the fixed cost outside training is also given as a
  share of a round at the preset's epoch count, since it does not grow with epochs.

Statistic: median of ``--repeats`` one-epoch runs after a warm-up. Usage::

    python benchmarks/bench.py [--repeats 3] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

import dsd2.train as T
from dsd2.data import AugmentSpec
from dsd2.flops import step_flops
from dsd2.models import build_model, prunable_weights
from dsd2.prune import full_masks, global_magnitude_masks
from dsd2.threads import resolve_threads

CIFAR_AUG = AugmentSpec(crop_padding=4, flip=True)
# name: model, options, input shape, samples per timed epoch (so an epoch takes a few seconds), augmentation
CASES = {
    "lenet_300_100": ("lenet_300_100", {}, (1, 28, 28), 16384, AugmentSpec()),
    "lenet5": ("lenet5", {}, (1, 28, 28), 8192, AugmentSpec()),
    "vgg_like(5,3)": ("vgg_like", {"depth": 5, "gamma": 3}, (3, 32, 32), 1536, CIFAR_AUG),
    "vgg_like(5,5)": ("vgg_like", {"depth": 5, "gamma": 5}, (3, 32, 32), 512, CIFAR_AUG),
    "resnet18_cifar": ("resnet18_cifar", {}, (3, 32, 32), 512, CIFAR_AUG),
}
BATCH = 128
MEAN, STD = 0.5, 0.25


def median_of(fn: Callable[[], float], repeats: int) -> dict:
    fn()  # warm-up (allocator, kernels, DataLoader workers' imports)
    samples = [fn() for _ in range(repeats)]
    return {"median": statistics.median(samples), "samples": samples}


def peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

    def once() -> float:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        return 4 * 2 * n**3 / (time.perf_counter() - t)

    return median_of(once, repeats)["median"]


def _data(shape, n):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(case, sparsity: float):
    name, opts, shape, _, _ = case
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[0], input_size=shape[-1], **opts)
    weights = prunable_weights(model)
    masks = full_masks(weights)
    if sparsity > 0:
        masks = global_magnitude_masks(weights, masks, sparsity)
        T.apply_masks(weights, masks)
    return model, weights, masks


def train_flops_per_image(case) -> float:
    """Dense FLOPs of one training step per image (forward and backward, counted by torch)."""
    model, _, _ = _model(case, 0.0)
    return step_flops(model, torch.zeros(2, *case[2])).dense_per_example


def dsd2_epoch(case, sparsity: float, *, compile_model: bool = False, bf16: bool = False) -> float:
    _, _, shape, n, aug = case
    model, weights, masks = _model(case, sparsity)
    channels_last = len(shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    x, y = _data(shape, n)
    batches = T.Batches(x=x, y=y, mean=(MEAN,) * shape[0], std=(STD,) * shape[0], augment=aug, channels_last=channels_last)
    autocast = (lambda device, amp: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else T.autocast_for
    real, T.autocast_for = T.autocast_for, autocast
    try:
        t = time.perf_counter()
        T.train(
            model,
            batches,
            T.Schedule(epochs=1, lr=0.01),
            batch_size=BATCH,
            generator=torch.Generator().manual_seed(0),
            masks=masks,
            weights=weights,
        )
        return n / (time.perf_counter() - t)
    finally:
        T.autocast_for = real


class _PilDataset(torch.utils.data.Dataset):
    """The reference's data path: a PIL image per sample, transformed one at a time."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = self.x[i]
        pil = Image.fromarray(img[0].numpy()) if img.shape[0] == 1 else Image.fromarray(img.permute(1, 2, 0).numpy())
        return self.transform(pil), self.y[i]


def reference_epoch(case, sparsity: float) -> float:
    from torchvision import transforms

    _, _, shape, n, aug = case
    model, _, masks = _model(case, sparsity)
    modules = dict(model.named_modules())
    for name, m in masks.items():
        torch_prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", m)
    tf = [transforms.ToTensor(), transforms.Normalize((MEAN,) * shape[0], (STD,) * shape[0])]
    if aug.crop_padding:
        tf = [transforms.RandomCrop(shape[-1], padding=aug.crop_padding), transforms.RandomHorizontalFlip(), *tf]
    loader = torch.utils.data.DataLoader(
        _PilDataset(*_data(shape, n), transforms.Compose(tf)), batch_size=BATCH, shuffle=True, num_workers=2
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    t = time.perf_counter()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    return n / (time.perf_counter() - t)


def eval_throughput(case, *, inference: bool, batch: int, n: int = 4096) -> float:
    model, _, _ = _model(case, 0.9)
    _, _, shape, _, _ = case
    channels_last = len(shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = _data(shape, n)
    batches = T.Batches(x=x, y=y, mean=(MEAN,) * shape[0], std=(STD,) * shape[0], channels_last=channels_last)
    ctx = torch.inference_mode() if inference else torch.no_grad()
    t = time.perf_counter()
    with ctx:
        T.logits_of(model, batches, batch_size=batch)
    return n / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- one IMP round, broken down

ROUND_STEPS = ("prune_step", "reset_weights", "train_round", "_evaluate", "_measure_entropy", "_round_flops", "save_round", "write_tables")


def round_breakdown(preset: str, overrides: list[str], preset_epochs: int) -> dict:
    """Seconds per step of rounds 0 and 1 of a real run (each step timed by wrapping it)."""
    from dsd2 import imp
    from dsd2.config import load_config

    spent: dict[str, list[float]] = defaultdict(list)
    originals = {name: getattr(imp, name) for name in ROUND_STEPS}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name].append(time.perf_counter() - t)

        return wrapper

    cfg = load_config(preset, ["prune.rounds=1", *overrides])
    with tempfile.TemporaryDirectory() as out, contextlib.ExitStack() as stack:
        for name, fn in originals.items():
            setattr(imp, name, timed(name, fn))
            stack.callback(setattr, imp, name, fn)
        t = time.perf_counter()
        imp.run(cfg, out)
        total = time.perf_counter() - t
    per_step = {k: statistics.median(v) for k, v in spent.items()}  # median over the two rounds
    train_s = per_step.pop("train_round")
    outside = sum(per_step.values())
    epoch_s = train_s / cfg.train.epochs
    return {
        "config": f"{preset} {' '.join(['prune.rounds=1', *overrides])}",
        "seconds_per_step": {"train_round": train_s, **per_step},
        "whole_run_s": total,
        "outside_training_share_measured": outside / (outside + train_s),
        "preset_epochs": preset_epochs,
        "outside_training_share_at_preset_epochs": outside / (outside + epoch_s * preset_epochs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a few samples per case (checks the script, not the machine)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    if args.quick:
        global CASES
        CASES = {k: (*v[:3], 256, v[4]) for k, v in CASES.items()}
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "cores": torch.get_num_threads(),
        },
        "statistic": f"median of {args.repeats} after a warm-up",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    default_threads = torch.get_num_threads()
    peak = {"fp32": peak_flops(torch.float32)}
    with contextlib.suppress(RuntimeError):
        peak["bf16"] = peak_flops(torch.bfloat16)
    results["peak_flops"] = peak
    print("peak GFLOP/s", {k: round(v / 1e9, 1) for k, v in peak.items()})

    train: dict = {}
    for name, case in CASES.items():
        flops = train_flops_per_image(case)
        dsd2_threads = resolve_threads(flops * BATCH).threads
        for sparsity in (0.0, 0.9):
            torch.set_num_threads(default_threads)
            ref = median_of(lambda case=case, s=sparsity: reference_epoch(case, s), args.repeats)
            torch.set_num_threads(dsd2_threads)
            ours = median_of(lambda case=case, s=sparsity: dsd2_epoch(case, s), args.repeats)
            r = {
                "reference_img_s": ref,
                "dsd2_img_s": ours,
                "dsd2_threads": dsd2_threads,
                "speedup": ours["median"] / ref["median"],
                "dsd2_train_flops_per_s": ours["median"] * flops,
                "fraction_of_fp32_peak": ours["median"] * flops / peak["fp32"],
            }
            train[f"{name} @ {sparsity:.0%}"] = r
            print(
                f"{name} @ {sparsity:.0%}: dsd2 {ours['median']:.0f} img/s vs reference {ref['median']:.0f} = {r['speedup']:.2f}x; {r['fraction_of_fp32_peak']:.1%} of fp32 peak"
            )
    results["train"] = train

    variants: dict = {}
    for name in ("vgg_like(5,3)", "resnet18_cifar"):
        case = CASES[name]
        torch.set_num_threads(default_threads)
        base = median_of(lambda case=case: dsd2_epoch(case, 0.9), args.repeats)["median"]
        row = {"default_img_s": base}
        with contextlib.suppress(Exception):  # a variant that fails is recorded as missing, not fatal
            row["bf16_autocast"] = median_of(lambda case=case: dsd2_epoch(case, 0.9, bf16=True), args.repeats)["median"] / base
        with contextlib.suppress(Exception):
            row["torch_compile"] = median_of(lambda case=case: dsd2_epoch(case, 0.9, compile_model=True), args.repeats)["median"] / base
        ev = median_of(lambda case=case: eval_throughput(case, inference=False, batch=1000), args.repeats)["median"]
        row["eval_default_img_s"] = ev
        row["eval_inference_mode"] = (
            median_of(lambda case=case: eval_throughput(case, inference=True, batch=1000), args.repeats)["median"] / ev
        )
        row["eval_batch_4096"] = (
            median_of(lambda case=case: eval_throughput(case, inference=False, batch=4096), args.repeats)["median"] / ev
        )
        variants[name] = row
        print(name, "variants (ratio to the default):", {k: round(v, 2) for k, v in row.items() if not k.endswith("img_s")})
    results["variants_at_90pct"] = variants

    torch.set_num_threads(default_threads)
    epochs = ["train.epochs=2"] if args.quick else []
    results["round"] = {"demo_fmnist": round_breakdown("demo_fmnist", epochs, preset_epochs=60)}
    print("round breakdown:", json.dumps(results["round"], indent=1))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("bench_cpu_quick.json" if args.quick else "bench_cpu.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
