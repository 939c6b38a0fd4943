"""Measured cost: time a few real training steps of a config on this device and extrapolate.

The FLOP count of :mod:`.cost` says how much work a run is; how long it takes depends on the
device, the model's shapes and the data path. :func:`measure` builds the config's model on the
run's device, trains it with :func:`dsd2.train.train` (the training loop a run uses: batched
augmentation, masks, optimiser, one sync per epoch) on synthetic data of the dataset's shape
for a warm-up epoch and a measured epoch of ``steps`` batches each, then times an evaluation
pass. :func:`predict` turns that into wall time per round and for the whole run.

What it leaves out, and why that is small or stated: the entropy pass and the file writes (2.3%
of a demo round on CPU, docs/performance.md); decoding of a streamed image folder (the data are
synthetic uint8 tensors resident on the device, as for built-in datasets); start-up (data
loading, process launch). Unstructured sparsity does not change dense kernels' time, so the
dense step is timed once for every round. A KD student's teacher forward is added in
proportion to its FLOPs (:func:`dsd2.sweep.cost` counts them), not timed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from dsd2.config import RunConfig, choice_options, options_of
from dsd2.errors import UserError
from dsd2.sweep.cost import epochs_per_round, per_example_flops, train_examples, val_examples
from dsd2.sweep.shapes import dataset_info, input_shape, model_key, model_kwargs
from dsd2.threads import Share

DEFAULT_STEPS = 10


@dataclass(frozen=True)
class Measured:
    """One config's measured throughput on one device."""

    device: str
    threads: int
    batch_size: int
    steps: int
    train_examples_per_s: float  # training step (fwd + bwd + optimiser + masks), measured epoch
    eval_examples_per_s: float  # forward pass at the evaluation batch size
    step_flops_per_example: float  # counted (dsd2.flops): dense fwd + bwd of the student
    teacher_flops_per_example: float  # counted: the KD teacher's forward (0 without a teacher)

    @property
    def train_flops_per_s(self) -> float:
        """Achieved training FLOP/s (counted FLOPs / measured time)."""
        return self.step_flops_per_example * self.train_examples_per_s

    @property
    def step_s_per_example(self) -> float:
        """Seconds per training example, the teacher's forward added by its FLOP share."""
        return (1.0 + self.teacher_flops_per_example / self.step_flops_per_example) / self.train_examples_per_s


def _synthetic(cfg: RunConfig, rows: int, device: Any) -> Any:
    """A resident :class:`dsd2.train.Batches` of ``rows`` uint8 examples of the dataset's shape,
    with the augmentation a built-in image dataset uses when ``dataset.augment`` is on."""
    import torch

    from dsd2.data.augment import AugmentSpec
    from dsd2.train import make_source

    shape = input_shape(cfg)
    classes = int(dataset_info(cfg, ("num_classes",))["num_classes"])
    gen = torch.Generator().manual_seed(0)
    if len(shape) == 3:
        x = torch.randint(0, 256, (rows, *shape), dtype=torch.uint8, generator=gen)
        crop = cfg.dataset.augment and shape[0] == 3  # colour images get crop + flip (CIFAR, image folders)
        spec = AugmentSpec(crop_padding=max(1, shape[-1] // 8), flip=True) if crop else AugmentSpec()
        mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    else:
        x = torch.randn((rows, *shape), generator=gen)
        spec, mean, std = AugmentSpec(), (0.0,), (1.0,)
    y = torch.randint(0, classes, (rows,), generator=gen)
    return make_source(x, y, mean=mean, std=std, device=device, augment=spec, channels_last=cfg.train.channels_last)


def measure(cfg: RunConfig, *, steps: int = DEFAULT_STEPS, teacher: RunConfig | None = None, share: Share = Share()) -> Measured:
    """Train ``cfg``'s model for a warm-up epoch and a measured epoch of ``steps`` batches of
    synthetic data on the run's device; time an evaluation pass of the same rows. ``teacher``: the
    KD teacher's config, read from ``distill.teacher``'s run directory when not given (several
    teachers and self-distillation, whose logits are cached once per round, add none). ``share``:
    the runs that will train side by side (their threads are what ``train.threads=auto`` gives
    each, so the measurement uses as many)."""
    from dsd2.imp import resolve_device, set_threads

    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if teacher is None and cfg.distill.teacher is not None and not cfg.distill.self_distill:
        from dsd2.rundir import read_config

        teacher = read_config(cfg.distill.teacher)
    device = resolve_device(cfg.train.device)
    batch = cfg.train.batch_size
    from dsd2.memory_bound import check_batch_fits
    from dsd2.sweep.shapes import meta_model

    check_batch_fits(meta_model(cfg), input_shape(cfg), batch, device)  # before a batch that cannot fit is allocated
    data = _synthetic(cfg, batch * steps, device)
    model = _built_model(cfg, device)
    threads = set_threads(cfg, device, model, data, None, share=share)
    train_s = _time_training(cfg, model, data, device)
    eval_s = _time_evaluation(model, data, cfg.train.eval_batch_size)
    _, step, tfwd = per_example_flops(cfg, teacher)
    rows = data.num_rows
    return Measured(
        device=str(device),
        threads=threads,
        batch_size=batch,
        steps=steps,
        train_examples_per_s=rows / train_s,
        eval_examples_per_s=rows / eval_s,
        step_flops_per_example=step,
        teacher_flops_per_example=tfwd,
    )


def _built_model(cfg: RunConfig, device: Any) -> Any:
    """``cfg``'s model on ``device``, built from ``cfg.seed`` (in channels_last when the run uses it)."""
    import torch

    from dsd2.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, **model_kwargs(cfg), **cfg.model.options).to(device)
    if cfg.train.channels_last and len(input_shape(cfg)) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def _time_training(cfg: RunConfig, model: Any, data: Any, device: Any) -> float:
    """Seconds of a training epoch over ``data`` with :func:`dsd2.train.train`: the faster of the
    second and third of three (the first warms caches, the allocator and the kernels' choice; of
    two timed epochs, one that another process interrupted does not decide: the demo's estimate
    once read 265 min for a 14-minute study while a sweep started beside it)."""
    import torch

    from dsd2.registry import OPTIMIZERS
    from dsd2.train import Schedule, train

    t = cfg.train
    schedule = Schedule(
        epochs=3,
        lr=t.lr,
        optimizer=t.optimizer,
        momentum=options_of(cfg, OPTIMIZERS, "sgd").momentum,
        weight_decay=t.weight_decay,
        kind="constant",
        optimizer_options=choice_options(cfg, OPTIMIZERS),
    )
    stamps: list[float] = []
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    train(
        model,
        data,
        schedule,
        batch_size=t.batch_size,
        generator=gen,
        amp=t.amp,
        on_epoch_end=lambda log, m: stamps.append(time.perf_counter()),
    )
    return min(stamps[1] - stamps[0], stamps[2] - stamps[1])  # warm caches, allocator, kernels chosen


def _time_evaluation(model: Any, data: Any, batch_size: int) -> float:
    """Seconds of an evaluation pass over ``data`` after a warm-up pass, ending in one sync as the run's evaluation."""
    import torch

    model.eval()
    with torch.no_grad():
        for xb in data.ordered(batch_size):  # warm-up pass, then the timed one
            model(xb)
        t0 = time.perf_counter()
        for xb in data.ordered(batch_size):
            out = model(xb)
        float(out.sum())  # one sync, as the run's evaluation
        return time.perf_counter() - t0


def eval_examples_per_round(cfg: RunConfig) -> int:
    """Examples a round evaluates: the training set (clean/noisy fit, memorisation), the
    validation split and the test set."""
    test = int(dataset_info(cfg, ("train_size",)).get("test_size") or 0)
    return train_examples(cfg) + val_examples(cfg) + test


def predict(cfg: RunConfig, m: Measured) -> dict[str, Any]:
    """Wall time per round and for the run (round 0 + ``prune.rounds``) from a measurement, and
    the run's dense training PFLOPs in the run tables' convention (fwd + bwd, 2 FLOPs per
    multiply-add, all epochs, + the teacher's forward)."""
    n = train_examples(cfg)
    n_eval = eval_examples_per_round(cfg)
    eval_s = n_eval / m.eval_examples_per_s
    rounds = epochs_per_round(cfg)
    round_s = [e * n * m.step_s_per_example + eval_s for e in rounds]
    flops = (m.step_flops_per_example + m.teacher_flops_per_example) * n * sum(rounds)
    out = {
        "run": cfg.name,
        "model": cfg.model.name,
        "measured": {**asdict(m), "train_flops_per_s": m.train_flops_per_s},
        "train_examples": n,
        "eval_examples_per_round": n_eval,
        "epochs_per_round": rounds,
        "round_s": round_s,
        "total_s": sum(round_s),
        "train_pflops": flops / 1e15,
    }
    if not all(math.isfinite(s) and s > 0 for s in round_s):
        raise UserError(f"the measurement gave a non-finite time ({round_s[0]!r} s for round 0): run it again with more --steps")
    return out


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_prediction(p: dict[str, Any]) -> str:
    """A short plain-text report (fits 80 columns)."""
    m = p["measured"]
    rounds = p["round_s"]
    lines = [
        f"Measured on {m['device']} ({m['threads']} thread(s)), {m['steps']} steps of batch {m['batch_size']} after a warm-up epoch:",
        f"  training  {m['train_examples_per_s']:,.0f} examples/s  ({m['train_flops_per_s'] / 1e9:,.1f} GFLOP/s counted)",
        f"  evaluation {m['eval_examples_per_s']:,.0f} examples/s",
        f"Predicted for {p['run']} ({p['train_examples']:,} training examples, {p['eval_examples_per_round']:,} evaluated per round):",
        f"  round 0        {p['epochs_per_round'][0]:>4} epochs  {_duration(rounds[0])}",
    ]
    if len(rounds) > 1:
        lines.append(f"  rounds 1-{len(rounds) - 1:<5} {p['epochs_per_round'][1]:>4} epochs  {_duration(rounds[1])} each")
    lines += [
        f"  whole run      {_duration(p['total_s'])}, {p['train_pflops']:.4g} PFLOPs dense training",
        "Left out: entropy pass and writes (~2% of a round), data loading, early stopping.",
    ]
    return "\n".join(lines)


def measured_throughput(steps: int = DEFAULT_STEPS) -> Callable[[RunConfig, RunConfig | None], tuple[float, str]]:
    """The ``throughput`` of :func:`dsd2.sweep.cost.estimate_cost` for ``--measure``: each
    distinct (model, data shape, batch, device) is timed once. The rate is the student step's
    achieved FLOP/s; the cost estimate charges a KD teacher's forward FLOPs at that rate too, the
    teacher added by FLOP share as :attr:`Measured.step_s_per_example` does."""
    cache: dict[str, Measured] = {}

    def rate(cfg: RunConfig, teacher: RunConfig | None) -> tuple[float, str]:
        t = cfg.train
        key = json.dumps([model_key(cfg), t.batch_size, t.device, t.optimizer, t.channels_last, t.amp, cfg.dataset.augment])
        if key not in cache:
            cache[key] = measure(cfg, steps=steps)
        return cache[key].train_flops_per_s, cache[key].device

    return rate
