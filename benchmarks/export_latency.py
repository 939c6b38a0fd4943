"""Does channel pruning pay? CPU inference latency and file size of the unpruned model, the
masked model (zeros in dense shapes, what an unstructured or un-shrunk export is) and the shrunk
model of ``dsd2 export --structured``, at several channel sparsities.

    .venv/bin/python benchmarks/export_latency.py [--repeats 15] [--out benchmarks/results/export_latency_cpu.json]

Channel masks are drawn at random on randomly initialised weights (a fraction of the output
channels of every prunable layer but the classifier, BatchNorm scale and shift zeroed with them,
as dsd2's channel masks do): latency and size depend on the shapes, not on trained values.
Median of ``--repeats`` timed forward passes after 3 warm-up passes, in eval mode under
``torch.inference_mode``; ratios against the unpruned model measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from dsd2.models import build_model, prunable_weights
from dsd2.prune import batchnorm_after
from dsd2.shrink import shrink

MODELS = {
    "lenet5": ((1, 28, 28), {}),
    "vgg_like(5,3)": ((3, 32, 32), {"depth": 5, "gamma": 3}),
    "resnet18": ((3, 32, 32), {}),
}
SPARSITIES = (0.5, 0.75, 0.9)


def _model(label: str) -> tuple[nn.Module, tuple[int, ...]]:
    shape, kw = MODELS[label]
    name = label.split("(")[0]
    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=shape[0], input_size=shape[-1], **kw).eval(), shape


def _channel_pruned(model: nn.Module, fraction: float) -> nn.Module:
    import copy

    model = copy.deepcopy(model)
    weights = prunable_weights(model, include_classifier=False)
    links, mods = batchnorm_after(model, weights), dict(model.named_modules())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, w in weights.items():
            n = w.shape[0]
            dead = torch.randperm(n, generator=gen)[: round(fraction * n)]
            w[dead] = 0
            if key in links:
                mods[links[key]].weight[dead] = 0
                mods[links[key]].bias[dead] = 0
    return model


def _latency_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _bytes(model: nn.Module) -> int:
    return len(save({k: v.contiguous() for k, v in model.state_dict().items()}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_latency_cpu.json"))
    args = ap.parse_args(argv)
    rows = []
    for label in MODELS:
        base, shape = _model(label)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (1, 256):
                x = torch.randn(batch, *shape)
                t_base = _latency_ms(base, x, args.repeats)
                for frac in SPARSITIES:
                    masked = _channel_pruned(base, frac)
                    small, report = shrink(masked, torch.randn(8, *shape))
                    t_masked, t_small = _latency_ms(masked, x, args.repeats), _latency_ms(small, x, args.repeats)
                    row = {
                        "model": label,
                        "threads": threads,
                        "batch": batch,
                        "channel_sparsity": frac,
                        "unpruned_ms": t_base,
                        "masked_ms": t_masked,
                        "shrunk_ms": t_small,
                        "speedup_shrunk": t_base / t_small,
                        "speedup_masked": t_base / t_masked,
                        "params_unpruned": report.params_before,
                        "params_shrunk": report.params_after,
                        "bytes_unpruned": _bytes(base),
                        "bytes_shrunk": _bytes(small),
                        "layers_kept_whole": len(report.kept_whole),
                    }
                    rows.append(row)
                    print(
                        f"{label:14s} t={threads} b={batch:3d} ch-sparsity {frac:.2f}: unpruned {t_base:8.2f} ms, masked "
                        f"{t_masked:8.2f}, shrunk {t_small:8.2f} ({row['speedup_shrunk']:.2f}x), size "
                        f"{row['bytes_unpruned'] / row['bytes_shrunk']:.2f}x smaller",
                        flush=True,
                    )
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "statistic": f"median of {args.repeats} forward passes after 3 warm-up passes, inference_mode, eval",
        "masks": "random channels of randomly initialised weights (BatchNorm scale and shift zeroed with them)",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
