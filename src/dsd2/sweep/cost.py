"""What a sweep will cost, before anything runs: training FLOPs per run and GPU-hours.

No data is loaded and nothing is trained: models are built on the meta device and one
training step is counted with :func:`dsd2.flops.step_flops`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from typing import Any

from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.sweep.shapes import COST_FACTS, dataset_info, input_shape, meta_model, model_key
from dsd2.sweep.spec import Cell, Resources, SweepSpec, cell_error, expand, value_text

# Effective training throughput used to turn FLOPs into GPU-hours. An ASSUMPTION, not a
# measurement (no GPU was available when this was written): small CIFAR CNNs at batch 128 in
# bf16 reach a few percent of an H100's ~990 TFLOP/s dense bf16 peak; 25 TFLOP/s effective
# (counting 2 FLOPs per multiply-add, forward + backward) is a round, deliberately modest
# figure. Override with ``gpu_tflops=`` / ``--gpu-tflops`` after timing one epoch on your GPU.
DEFAULT_GPU_TFLOPS = 25.0

_STEP_CACHE: dict[str, tuple[float, float, float]] = {}


def val_examples(cfg: RunConfig) -> int:
    """Validation examples of ``cfg``, carved from the training set as :func:`dsd2.data.load_dataset`
    does, from the dataset registry's metadata (no data is loaded)."""
    from dsd2.data.core import DEFAULT_VAL_SIZE

    info = dataset_info(cfg, COST_FACTS)
    default_val = info.get("default_val_size", DEFAULT_VAL_SIZE)
    return min(default_val, int(info["train_size"]) // 5) if cfg.dataset.val_size is None else cfg.dataset.val_size


def train_examples(cfg: RunConfig) -> int:
    """Training examples per epoch of ``cfg``: the training set less the validation split, or
    ``dataset.train_subset`` of it (no data is loaded)."""
    left = max(0, int(dataset_info(cfg, COST_FACTS)["train_size"]) - val_examples(cfg))
    return min(cfg.dataset.train_subset, left) if cfg.dataset.train_subset else left


def epochs_per_round(cfg: RunConfig) -> list[int]:
    """Epochs of round 0 and of each of the ``prune.rounds`` rounds, as ``imp.run`` trains them: a
    pruning round trains the epochs of its retraining mode's schedule (:func:`dsd2.imp.schedule_for`)."""
    from dsd2.imp import schedule_for

    later = schedule_for(cfg, 1)
    return [cfg.train.epochs] + [later.epochs - later.start_epoch] * cfg.prune.rounds


def epochs_total(cfg: RunConfig) -> int:
    """Epochs over all rounds (round 0 + ``prune.rounds``)."""
    return sum(epochs_per_round(cfg))


def per_example_flops(cfg: RunConfig, teacher: RunConfig | None) -> tuple[float, float, float]:
    """(student forward, student step = fwd + bwd, teacher forward) FLOPs per example."""
    key = json.dumps([model_key(cfg), model_key(teacher) if teacher else None])
    if key not in _STEP_CACHE:
        import torch

        from dsd2.flops import step_flops

        model = meta_model(cfg)
        tmodel = meta_model(teacher) if teacher is not None else None
        batch = torch.zeros((2, *input_shape(cfg)), device="meta")
        step = step_flops(model, batch, teacher=tmodel)
        _STEP_CACHE[key] = (step.fwd_per_example, (step.dense_fwd + step.dense_bwd) / step.batch_size, step.teacher_fwd_per_example)
    return _STEP_CACHE[key]


def _model_label(cfg: RunConfig) -> str:
    opts = ",".join(f"{k}={value_text(v)}" for k, v in cfg.model.options.items())
    return f"{cfg.model.name}({opts})" if opts else cfg.model.name


# A measured throughput: a run config (and its KD teacher) -> (achieved training FLOP/s, device name).
Throughput = Callable[[RunConfig, "RunConfig | None"], tuple[float, str]]


def _run_estimate(
    cfg: RunConfig, role: str, teacher: RunConfig | None, gpu_tflops: float, throughput: Throughput | None = None
) -> dict[str, Any]:
    n = train_examples(cfg)  # first: it names every dataset fact the estimate lacks
    fwd, step, tfwd = per_example_flops(cfg, teacher)
    ep = epochs_total(cfg)
    flops = (step + tfwd) * n * ep
    paper = (1.5 * fwd + 0.5 * tfwd) * n * ep  # 3 x student MACs + 1 x teacher MACs per example
    flops_per_s, measured_on = (gpu_tflops * 1e12, None) if throughput is None else throughput(cfg, teacher)
    return {
        "role": role,
        "run": cfg.name,
        "model": _model_label(cfg),
        "dataset": cfg.dataset.name,
        "train_examples": n,
        "epochs_total": ep,
        "rounds": cfg.prune.rounds,
        "fwd_flops_per_example": fwd,
        "step_flops_per_example": step + tfwd,
        "teacher_fwd_flops_per_example": tfwd,
        "pflops": flops / 1e15,
        "paper_pflops": paper / 1e15,
        "gpu_hours": flops / flops_per_s / 3600.0,
        "flops_per_s": flops_per_s,
        "measured_on": measured_on,
    }


def _cell_runs(spec: SweepSpec, cell: Cell, gpu_tflops: float, throughput: Throughput | None) -> list[tuple[str, dict[str, Any]]]:
    """(unique key, estimate) of each run of ``cell``: a shared teacher has one key."""
    if not spec.pipeline:
        return [("run:" + cell.name, _run_estimate(cell.config, "run", None, gpu_tflops, throughput))]
    assert cell.teacher_config is not None
    return [
        ("teacher:" + cell.teacher_config.run_id(), _run_estimate(cell.teacher_config, "teacher", None, gpu_tflops, throughput)),
        ("student:" + cell.name, _run_estimate(cell.config, "student", cell.teacher_config, gpu_tflops, throughput)),
    ]


def estimate_cost(
    spec: SweepSpec, *, gpu_tflops: float = DEFAULT_GPU_TFLOPS, cells: list[Cell] | None = None, throughput: Throughput | None = None
) -> dict[str, Any]:
    """Training FLOPs of every cell, estimated before running (no data loaded, no training).

    Per run: the model is built on the meta device; :func:`dsd2.flops.step_flops` counts one
    training step on a batch of 2 (forward + backward, 2 FLOPs per multiply-add; KD students
    add the teacher's forward); × training examples × epochs over all ``rounds + 1`` rounds.
    Dense FLOPs (sparsity not credited: unstructured sparsity does not speed up GPU
    training), evaluation and entropy passes left out (< 1% at 160 epochs), early stopping not
    anticipated: an upper bound. ``paper_pflops`` is the paper's convention (3 × MACs per
    example, 1 × for the teacher forward). GPU-hours assume ``gpu_tflops`` TFLOP/s effective
    (default :data:`DEFAULT_GPU_TFLOPS`, an assumption, not measured), or the FLOP/s that
    ``throughput`` measured for each run's model on this machine (``--measure``,
    :mod:`.measure`); the hours are then device-hours of that device. Per cell: the processes,
    GPUs and CPUs it reserves (``resources``) and its wall time (device-hours / processes for a
    data-parallel cell). A teacher shared by several pipeline cells counts once in the totals.
    """
    if not gpu_tflops > 0:
        raise UserError(f"gpu_tflops must be > 0, got {gpu_tflops}")
    cells = expand(spec) if cells is None else cells
    per_cell = []
    unique: dict[str, dict[str, Any]] = {}  # a teacher shared by several cells counts once
    for cell in cells:
        try:
            keyed = _cell_runs(spec, cell, gpu_tflops, throughput)
        except UserError as err:
            raise cell_error(spec, cell.name, cell.params, str(err), what=", cost estimate") from None
        for key, run in keyed:
            unique.setdefault(key, run)
        per_cell.append(_cell_estimate(cell, [run for _, run in keyed], spec.resources))
    measured = sorted({r["measured_on"] for r in unique.values() if r["measured_on"]})
    return {
        "sweep": spec.name,
        "gpu_tflops": gpu_tflops,
        "measured": bool(measured),
        "assumption": _assumption(measured, gpu_tflops),
        "convention": "dense training FLOPs (fwd + bwd, + teacher fwd for KD), all rounds, no early stop, evaluation excluded",
        "cells": per_cell,
        "runs": len(unique),
        "total_pflops": sum(r["pflops"] for r in unique.values()),
        "total_paper_pflops": sum(r["paper_pflops"] for r in unique.values()),
        "total_gpu_hours": sum(r["gpu_hours"] for r in unique.values()),
    }


def _cell_estimate(cell: Cell, runs: list[dict[str, Any]], res: Resources) -> dict[str, Any]:
    """A cell's line: its runs, their summed FLOPs and hours, what it reserves, its wall time
    (device-hours / processes for a data-parallel cell)."""
    return {
        "cell": cell.name,
        "params": cell.params,
        "runs": runs,
        "pflops": sum(r["pflops"] for r in runs),
        "paper_pflops": sum(r["paper_pflops"] for r in runs),
        "gpu_hours": sum(r["gpu_hours"] for r in runs),
        "processes": res.processes,
        "gpus": res.cell_gpus,
        "cpus": res.cell_cpus,
        "wall_hours": sum(r["gpu_hours"] for r in runs) / res.processes,
    }


def _assumption(measured: list[str], gpu_tflops: float) -> str:
    """What the hours assume: the throughput measured on these devices, else ``gpu_tflops``."""
    if measured:
        return (
            f"Hours are device-hours at the training throughput measured here on {', '.join(measured)} "
            "(a warm-up epoch, then a timed epoch per model: dsd2 estimate); evaluation passes not included."
        )
    return (
        f"GPU-hours assume {gpu_tflops:g} TFLOP/s effective training throughput (2 FLOPs per multiply-add). "
        "Not measured: pass --measure to time each model on this machine, or --gpu-tflops after timing one epoch on your GPU."
    )


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def hours_text(x: float) -> str:
    """Hours for a table: "0", "<0.01" for a tiny run (not 6.24e-10), else 3 significant digits."""
    if x == 0:
        return "0"
    return "<0.01" if x < 0.01 else _num(x)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i < left else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header).rstrip()] + [fmt.format(*row).rstrip() for row in rows]


def format_cost(estimate: dict[str, Any], width: int = 80) -> str:
    """A plain-text table of :func:`estimate_cost`'s result (one line per run), ``width`` columns
    wide: cell names lose the sweep's name, and model descriptions that would not fit become
    m1, m2, ... spelled out below the table."""
    hours = "device-h" if estimate.get("measured") else "GPU-h"
    header = ("cell", "role", "model", "epochs", "examples", "GFLOP/ex", "PFLOPs", hours)
    prefix = f"{estimate['sweep']}_"
    names = [c["cell"] for c in estimate["cells"]]
    strip = bool(names) and all(n.startswith(prefix) and len(n) > len(prefix) for n in names)
    models = list(dict.fromkeys(r["model"] for c in estimate["cells"] for r in c["runs"]))
    rows = _cost_rows(estimate, prefix, strip)
    table, legend, rows = _fit_table(header, rows, models, width)
    out = [*table, *legend]
    notes = _cost_notes(estimate, prefix, strip, rows)
    title = f"Cost estimate for sweep {estimate['sweep']} ({estimate['convention']}):"
    return "\n".join([_fill(title, width), *out, *(_fill(n, width) for n in notes)])


def _cost_rows(estimate: dict[str, Any], prefix: str, strip: bool) -> list[tuple[str, ...]]:
    """One row per run: a teacher an earlier cell already trained is marked ``teacher*``."""
    rows: list[tuple[str, ...]] = []
    seen = set()
    for c in estimate["cells"]:
        for r in c["runs"]:
            shared = r["role"] == "teacher" and r["run"] in seen
            seen.add(r["run"])
            rows.append(
                (
                    c["cell"][len(prefix) :] if strip else c["cell"],
                    r["role"] + ("*" if shared else ""),
                    r["model"],
                    str(r["epochs_total"]),
                    str(r["train_examples"]),
                    f"{r['step_flops_per_example'] / 1e9:.4g}",
                    _num(r["pflops"]),
                    hours_text(r["gpu_hours"]),
                )
            )
    return rows


def _fit_table(
    header: tuple[str, ...], rows: list[tuple[str, ...]], models: list[str], width: int
) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
    """The table's lines within ``width``, its legend of model keys and the rows as shown: models
    become keys m1, m2, ... when too wide, then long cell names go on their own lines."""
    table = _table(header, rows, 3)
    legend: list[str] = []
    if max(map(len, table)) > width:  # the model descriptions are the long cells: keys, spelled out below
        key = {m: f"m{i}" for i, m in enumerate(models, start=1)}
        table = _table(header, [(*row[:2], key[row[2]], *row[3:]) for row in rows], 3)
        legend = [f"{k} = {m}" for m, k in key.items()]
        rows = [(*row[:2], key[row[2]], *row[3:]) for row in rows]
    if max(map(len, table)) > width:  # long cell names: each on its own line above its runs
        body = _table(header[1:], [row[1:] for row in rows], 2)
        table = ["  " + body[0]]
        for i, row in enumerate(rows):
            if i == 0 or row[0] != rows[i - 1][0]:
                table.append(textwrap.fill(row[0], width))  # a name longer than the line breaks after - first
            table.append("  " + body[i + 1])
    return table, legend, rows


def _cost_notes(estimate: dict[str, Any], prefix: str, strip: bool, rows: list[tuple[str, ...]]) -> list[str]:
    """The lines under the table: the cell prefix, shared teachers, the total, each cell's reservation, the assumption."""
    notes = [f"cells are named {prefix}<cell>"] if strip else []
    if any(row[1].endswith("*") for row in rows):
        notes.append("teacher*: the teacher of an earlier cell, trained once (its cost counts once in the total)")
    notes.append(
        f"total: {estimate['runs']} runs, {_num(estimate['total_pflops'])} PFLOPs "
        f"(paper convention 3×MACs: {_num(estimate['total_paper_pflops'])} PFLOPs), "
        + (
            f"≈ {hours_text(estimate['total_gpu_hours'])} device-hours as measured"
            if estimate.get("measured")
            else f"≈ {hours_text(estimate['total_gpu_hours'])} GPU-hours at {estimate['gpu_tflops']:g} TFLOP/s"
        )
    )
    cells = estimate["cells"]
    if cells:
        c = cells[0]
        wall = [x["wall_hours"] for x in cells]
        notes.append(
            f"each cell reserves {c['processes']} process(es), {c['gpus']:g} GPU(s), {c['cpus']:g} CPU(s)"
            + (" (a data-parallel job: torchrun inside its task)" if c["processes"] > 1 else "")
            + f"; wall time per cell ≈ its hours / {c['processes']}: longest {hours_text(max(wall))} h, "
            f"all cells one after another {hours_text(estimate['total_gpu_hours'] / c['processes'])} h"
        )
    notes.append(estimate["assumption"])
    return notes


def _fill(text: str, width: int) -> str:
    # sentences wrap at the table's width; option names (--gpu-tflops) and words stay whole
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)
