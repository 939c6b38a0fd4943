"""What a round measures once trained: accuracies on every split (memorisation of the flipped
samples included), activation entropy, compute; data-parallel jobs reduce over their ranks."""

from __future__ import annotations

from typing import Any

import torch

from dsd2 import distributed
from dsd2.distill.setup import Teaching
from dsd2.entropy import OnCounter, activation_entropy, entropy_from_counts
from dsd2.flops import paper_training_flops, step_flops, to_pflops, training_flops
from dsd2.imp.build import structured_allocation
from dsd2.imp.setup import RunContext
from dsd2.prune import (
    Masks,
    count_alive,
    row_sparsity,
    sparsity,
)
from dsd2.rundir import RoundRow
from dsd2.train import (
    EpochLog,
    Source,
    accuracy,
    predict,
)


def _evaluate(ctx: RunContext) -> dict[str, Any]:
    d = ctx.data
    tb = ctx.train_batches
    pred = predict_classes(ctx, tb)
    flipped, probe = ctx.labels.flipped, ctx.labels.probe
    keep = torch.ones(d.train_y.numel(), dtype=torch.bool)
    keep[flipped] = False
    if probe is not None:  # the probe's labels are flipped too: not part of the clean fit
        keep[probe] = False
    out: dict[str, Any] = {
        "train_acc_noisy": accuracy(pred, ctx.labels.noisy),
        "train_acc_clean": accuracy(pred, d.train_y),
        "train_acc_flipped": accuracy(pred, ctx.labels.noisy, flipped),
        "flipped_acc_clean": accuracy(pred, d.train_y, flipped),
        "unflipped_acc": accuracy(pred, d.train_y, keep.nonzero().squeeze(1)),
    }
    if probe is not None:  # the memorisation probe (noise.probe): its columns only when it is on
        out["train_acc_probe"] = accuracy(pred, ctx.labels.noisy, probe)
        out["probe_acc_clean"] = accuracy(pred, d.train_y, probe)
    for split, y in (("val", d.val_y), ("test", d.test_y)):
        out[f"{split}_acc"] = accuracy(predict_classes(ctx, ctx.split(split)), y)
    return out


def predict_classes(ctx: RunContext, source: Source) -> torch.Tensor:
    """Predicted classes of every row of ``source``, on the CPU. In a data-parallel job each rank
    predicts a contiguous slice and the slices are summed into the full vector, so every rank
    scores the same predictions with the one-process code."""
    bs, amp = ctx.cfg.train.eval_batch_size, ctx.cfg.train.amp
    w = distributed.world()
    if not w.distributed:
        return predict(ctx.model, source, batch_size=bs, amp=amp).cpu()
    n = source.num_rows
    lo, hi = distributed.shard_bounds(n, w.rank, w.size)
    full = torch.zeros(n, dtype=torch.long, device=ctx.device)
    if hi > lo:
        full[lo:hi] = predict(ctx.model, source, batch_size=bs, amp=amp, rows=(lo, hi))
    return distributed.all_reduce_sum(full).cpu()


def _measure_entropy(ctx: RunContext) -> tuple[float | None, list[dict[str, Any]]]:
    if not ctx.cfg.entropy.enabled:
        return None, []
    bs = ctx.cfg.entropy.batch_size
    # the clean (unaugmented, evaluation-transformed) training inputs, in row order
    if distributed.world().distributed:
        res = _sharded_entropy(ctx, bs)
    else:
        res = activation_entropy(ctx.model, ctx.train_batches.ordered(bs), batch_size=bs, device=ctx.device)
    rows = [{"layer": name, "entropy": h, "neurons": res.neurons[name]} for name, h in res.per_layer.items()]
    return res.weighted_mean, rows


def _sharded_entropy(ctx: RunContext, batch_size: int):
    """Entropy from ON counts summed over the ranks, each counting a contiguous slice of the
    rows: the counts (integers) are those of one process passing every row."""
    w, tb, model = distributed.world(), ctx.train_batches, ctx.model
    rows = distributed.shard_bounds(tb.num_rows, w.rank, w.size)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), OnCounter(model) as oc:
            for x in tb.ordered(batch_size, rows):
                model(x)
    finally:
        for m, training in modes:
            m.training = training
    if not oc.counts:  # no rectifier in the model (on every rank): the one-process error
        return activation_entropy(model, tb.ordered(batch_size), batch_size=batch_size, device=ctx.device)
    counts = {k: distributed.all_reduce_sum(v.clone()) for k, v in oc.counts.items()}
    seen = distributed.all_reduce_sum(torch.tensor(list(oc.samples.values()), dtype=torch.long, device=ctx.device))
    return entropy_from_counts(counts, dict(zip(oc.samples, seen.tolist())))


def _round_flops(
    ctx: RunContext, teaching: Teaching | None, masks: Masks, epochs: int, round_idx: int, scored: int = 0
) -> tuple[float, float, float]:
    """(measured dense, measured sparse-aware, paper convention) PFLOPs of one round (docs/protocol.md);
    ``scored``: examples the gradient criteria passed forward and backward to prune, counted as
    training steps (the sparse-aware count at this round's masks, a close upper bound)."""
    tb = ctx.train_batches
    example = tb.example(2)
    teacher, teacher_masks = (teaching.teacher, teaching.masks) if teaching is not None else (None, None)
    step = step_flops(ctx.model, example, teacher=teacher, masks=masks, teacher_masks=teacher_masks)
    # cached teacher logits: one teacher pass over the data, charged to the round that made it
    # (round 0 for fixed teachers, each round for self-distillation, whose teacher changes)
    cached = teacher is not None and getattr(ctx.objective_with(teaching), "cached_logits", None) is not None
    passes = (1 if teaching is not None and round_idx == teaching.cache_round else 0) if cached else None
    n = tb.num_rows
    dense, sparse = training_flops(step, n_examples=n, epochs=epochs, teacher_passes=passes)
    paper = paper_training_flops(step, n_examples=n, epochs=epochs, teacher_passes=passes)
    if scored:
        dense += (step.dense_fwd + step.dense_bwd) / step.batch_size * scored
        sparse += (step.sparse_fwd + step.sparse_bwd) / step.batch_size * scored
        paper += 1.5 * step.dense_fwd / step.batch_size * scored  # 3 x forward MACs per example, as training
    return to_pflops(dense), to_pflops(sparse), to_pflops(paper)


def measure(
    ctx: RunContext,
    round_idx: int,
    masks: Masks,
    logs: list[EpochLog],
    previous: RoundRow | None,
    scored: int = 0,
    *,
    teaching: Teaching | None,
) -> tuple[RoundRow, list[dict[str, Any]]]:
    """The round's row (accuracies, entropy, compute; phase None until the tables are written)
    and its per-layer entropy rows. ``previous``: the row of round i-1, for the cumulative cost;
    ``scored``: examples the pruning criterion's gradient passes saw (compute); ``teaching``: the
    round's teachers (their forwards are part of its compute)."""
    metrics = _evaluate(ctx)
    entropy, layers = _measure_entropy(ctx)
    pf_dense, pf_sparse, pf_paper = _round_flops(ctx, teaching, masks, len(logs), round_idx, scored)
    if previous is None:
        before: tuple[float, float, float | None] = (0.0, 0.0, 0.0)
    else:  # the paper column stays None after rounds written before it existed
        before = (previous.train_pflops_dense, previous.train_pflops_sparse, previous.train_pflops_paper)
    row = RoundRow(
        round=round_idx,
        sparsity=sparsity(masks),
        alive_weights=count_alive(masks),
        epochs=len(logs),
        train_loss=logs[-1].loss,
        **metrics,
        entropy=entropy,
        round_pflops_dense=pf_dense,
        round_pflops_sparse=pf_sparse,
        train_pflops_dense=before[0] + pf_dense,
        train_pflops_sparse=before[1] + pf_sparse,
        round_pflops_paper=pf_paper,
        train_pflops_paper=None if before[2] is None else before[2] + pf_paper,
        channel_sparsity=row_sparsity(masks) if structured_allocation(ctx.cfg) else None,
    )
    return row, [{"round": round_idx, "sparsity": row.sparsity, **r} for r in layers]
