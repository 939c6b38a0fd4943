"""Teacher selection from a finished IMP run directory, and the KD training objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import store
from dsd2.compare import best_round, selection_column
from dsd2.distill.loss import kd_loss
from dsd2.errors import UserError


def select_teacher_round(rows: list[dict[str, Any]], choice: int | str) -> tuple[int, str]:
    """(round index, selection column) for ``choice`` in {"best", "dense", <int>}.

    "best" is the best-fit round: highest accuracy on the selection column; ties go to the
    sparser round (more compressed for the same accuracy).
    """
    if not rows:
        raise UserError("the teacher run has no finished round; run it first (`dsd2 run`)")
    col = selection_column(rows)
    if choice == "best":
        return int(rows[best_round(rows, col)]["round"]), col
    if choice == "dense":
        return 0, col
    idx = int(choice)
    finished = [int(r["round"]) for r in rows]
    if idx not in finished:
        raise UserError(f"teacher round {idx} is not finished in that run (finished: 0..{finished[-1]})")
    return idx, col


def load_teacher(
    run_dir: str | Path, choice: int | str = "best", *, device: torch.device | str = "cpu", expect_data=None
) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """Load the teacher of ``run_dir`` at the chosen round: frozen, in eval mode.

    Returns the model, a JSON-able description of the choice, and the round's masks (for the
    sparse-aware cost of the teacher's forward passes).
    """
    from dsd2.imp import load_round_model

    run_dir = Path(run_dir)
    if not (run_dir / "rounds.csv").is_file():
        raise UserError(f"teacher run {run_dir} not found or not started (no rounds.csv); give the run directory of a finished IMP run")
    rows = store.read_csv(run_dir / "rounds.csv")
    idx, col = select_teacher_round(rows, choice)
    model, masks, tcfg = load_round_model(run_dir, idx, device=device)
    row = next(r for r in rows if int(r["round"]) == idx)
    info: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()),
        "choice": choice,
        "round": idx,
        "selected_on": col,
        "sparsity": row["sparsity"],
        "val_acc": row.get("val_acc"),
        "test_acc": row.get("test_acc"),
        "model": tcfg.model.name,
    }
    if col == "test_acc" and choice == "best":
        info["warning"] = "the teacher run has no validation split: best round selected on TEST accuracy (as the reference does)"
    if expect_data is not None:
        if tcfg.dataset.name != expect_data.name:
            raise UserError(f"teacher was trained on {tcfg.dataset.name}, the student uses {expect_data.name}")
        labels = store.load_tensors(run_dir / "labels.safetensors")
        if labels["clean"].numel() != expect_data.train_y.numel() or not torch.equal(labels.get("train_idx", labels["clean"]), expect_data.train_idx):
            raise UserError(
                "teacher and student use different training samples (dataset.val_size / train_subset / seed differ); "
                "use the teacher's dataset settings for the student"
            )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info, masks


class KDObjective:
    """Training objective of a DSD² student: ``kd_loss`` against a frozen teacher on the same batch.

    With ``cached_logits`` (the teacher's logits for every training row, valid when the batches
    are not augmented) the teacher is not run per step: its output for a row never changes.
    """

    def __init__(
        self, teacher: nn.Module, *, alpha: float, temperature: float, amp: bool = False, cached_logits: torch.Tensor | None = None
    ):
        self.teacher = teacher.eval()
        self.alpha = alpha
        self.temperature = temperature
        self.amp = amp
        self.cached_logits = cached_logits

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        from dsd2.train import autocast_for

        if self.cached_logits is not None and index is not None:
            teacher_logits = self.cached_logits[index]
        else:
            with torch.no_grad(), autocast_for(inputs.device, self.amp):
                teacher_logits = self.teacher(inputs)
        return kd_loss(logits, teacher_logits, targets, alpha=self.alpha, temperature=self.temperature)
