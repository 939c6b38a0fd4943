"""Training-loop throughput of dsd2's trainer, with the baselines measured in the same run.

Measures images/s of ``dsd2.train.train`` (data resident on the device, batched augmentation,
masks re-applied after every step) for a few models, against:

* a conventional loop: per-sample torchvision transforms in a DataLoader (2 workers), masks
  applied with ``torch.nn.utils.prune`` forward hooks and a ``.item()`` per step;
* the same dsd2 loop with 1 vs 2 CPU threads and fused vs for-each optimisers.

Each configuration runs ``--repeats`` times (after one warm-up epoch); the JSON reports the
median images/s and every sample. Usage::

    python benchmarks/train_throughput.py [--device cpu|cuda] [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

from dsd2.data import AugmentSpec
from dsd2.models import build_model, prunable_weights
from dsd2.prune import full_masks, global_magnitude_masks
from dsd2.train import Batches, Schedule, train

CASES = {
    "lenet_300_100/fmnist-like": dict(model="lenet_300_100", opts={}, shape=(1, 28, 28), n=5000, aug=AugmentSpec(), optimizer="adam"),
    "vgg_like(d5,g3)/cifar-like": dict(
        model="vgg_like", opts={"depth": 5, "gamma": 3}, shape=(3, 32, 32), n=4096, aug=AugmentSpec(4, True), optimizer="sgd"
    ),
}


def _data(case, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (case["n"], *case["shape"]), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (case["n"],), generator=g)
    return x.to(device), y.to(device)


def _pruned_model(case, device, sparsity_rounds=10):
    torch.manual_seed(0)
    c, h, _ = case["shape"]
    model = build_model(case["model"], num_classes=10, in_channels=c, input_size=h, **case["opts"]).to(device)
    weights = prunable_weights(model)
    masks = full_masks(weights)
    for _ in range(sparsity_rounds):  # ~89% sparsity, as in the middle of an IMP study
        masks = global_magnitude_masks(weights, masks, 0.2)
    return model, weights, masks


def dsd2_epoch(case, device, *, fused: bool, channels_last: bool) -> float:
    model, weights, masks = _pruned_model(case, device)
    x, y = _data(case, device)
    if channels_last and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    data = Batches(
        x=x, y=y, mean=(0.5,) * case["shape"][0], std=(0.25,) * case["shape"][0], augment=case["aug"], channels_last=channels_last
    )
    sched = Schedule(epochs=1, lr=0.01, optimizer=case["optimizer"])
    import dsd2.train as T

    real = T.make_optimizer
    if not fused:
        T.make_optimizer = lambda params, s: (
            torch.optim.SGD(params, lr=s.lr, momentum=0.9, foreach=True)
            if s.optimizer == "sgd"
            else torch.optim.Adam(params, lr=s.lr, foreach=True)
        )
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train(model, data, sched, batch_size=128, generator=gen, masks=masks, weights=weights)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return case["n"] / (time.perf_counter() - t)
    finally:
        T.make_optimizer = real


def conventional_epoch(case, device) -> float:
    """PIL-free but per-sample transforms in a DataLoader, prune hooks, .item() each step."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.transforms import v2

    model, weights, masks = _pruned_model(case, device)
    modules = dict(model.named_modules())
    for name, m in masks.items():
        torch_prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", m)
    x, y = _data(case, "cpu")
    tf = [v2.ToDtype(torch.float32, scale=True)]
    if case["aug"].crop_padding:
        tf = [v2.RandomCrop(case["shape"][1], padding=case["aug"].crop_padding), v2.RandomHorizontalFlip()] + tf
    tf.append(v2.Normalize([0.5] * case["shape"][0], [0.25] * case["shape"][0]))
    transform = v2.Compose(tf)

    class DS(TensorDataset):
        def __getitem__(self, i):
            return transform(x[i]), y[i]

    loader = DataLoader(DS(x, y), batch_size=128, shuffle=True, num_workers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return case["n"] / (time.perf_counter() - t)


def measure(fn, repeats: int) -> dict:
    fn()  # warm-up
    samples = [fn() for _ in range(repeats)]
    return {"median_img_per_s": statistics.median(samples), "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    device = torch.device(args.device)
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads_default": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "torch": torch.__version__,
        },
        "statistic": f"median of {args.repeats} one-epoch runs after a warm-up epoch (images/s)",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cases": {},
    }
    default_threads = torch.get_num_threads()
    for name, case in CASES.items():
        r: dict = {}
        torch.set_num_threads(default_threads)
        r["conventional"] = measure(lambda case=case: conventional_epoch(case, device), args.repeats)
        r["dsd2"] = measure(lambda case=case: dsd2_epoch(case, device, fused=True, channels_last=True), args.repeats)
        r["dsd2_foreach_optimizer"] = measure(lambda case=case: dsd2_epoch(case, device, fused=False, channels_last=True), args.repeats)
        if device.type == "cpu":
            torch.set_num_threads(1)
            r["dsd2_1_thread"] = measure(lambda case=case: dsd2_epoch(case, device, fused=True, channels_last=True), args.repeats)
            torch.set_num_threads(default_threads)
        base = r["conventional"]["median_img_per_s"]
        r["ratios_vs_conventional"] = {
            k: v["median_img_per_s"] / base for k, v in r.items() if isinstance(v, dict) and "median_img_per_s" in v
        }
        results["cases"][name] = r
        print(name, {k: round(v, 2) for k, v in r["ratios_vs_conventional"].items()}, f"(conventional {base:.0f} img/s)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_throughput_{device.type}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
