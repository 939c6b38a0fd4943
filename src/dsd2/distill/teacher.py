"""Teacher selection from a finished IMP run directory, and the KD training objective."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import rundir, store
from dsd2.compare import Rows, best_round, selection_column
from dsd2.config import RunConfig
from dsd2.distill.loss import kd_loss, kd_loss_to, mixture_log_probs
from dsd2.errors import UserError


def select_teacher_round(rows: Rows, choice: int | str) -> tuple[int, str]:
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


def _teacher_state(run_dir: Path, rounds_configured: int) -> tuple[list[rundir.RoundRow], str | None]:
    """Rows of the teacher's verified rounds (checksummed metrics.json, not the editable
    rounds.csv) and why its curve is incomplete (None when every configured round is done, or the
    channel floor ended the curve: no later round can exist)."""
    rows = rundir.read_finished(run_dir).rows
    if store.is_locked(run_dir):
        return rows, f"it is still running (another dsd2 process holds {run_dir / '.lock'})"
    if len(rows) < rounds_configured + 1 and not (rows and rundir.floor_stopped_at(run_dir) is not None):
        if rows and rundir.stopped_at(run_dir) is not None:
            return rows, f"its early_stop rule stopped it at round {rows[-1].round} of {rounds_configured}"
        return rows, f"it has {len(rows)} of {rounds_configured + 1} rounds (unfinished; `dsd2 resume {run_dir}` finishes it)"
    return rows, None


def teacher_digest(run_dir: Path, rounds: list[int]) -> str:
    """Fingerprint of what a student learns from: the teacher's noisy labels and the manifests
    (checksums of weights, masks and metrics) of ``rounds``."""
    h = hashlib.sha256(store.sha256_file(rundir.labels_path(run_dir)).encode())
    for i in rounds:
        h.update(store.sha256_file(rundir.round_dir(run_dir, i) / rundir.MANIFEST).encode())
    return h.hexdigest()


def check_consistent(tcfg: RunConfig, run_dir: Path, scfg: RunConfig, data, labels) -> None:
    """Teacher and student must see the same training samples, noisy labels, classes and
    normalisation; otherwise the student distils from a teacher of another task."""
    diffs = []
    if tcfg.dataset.name != data.name:
        diffs.append(f"dataset {tcfg.dataset.name} vs {data.name}")
    shape = rundir.read_meta(run_dir).get("data") or {}
    if shape.get("num_classes") not in (None, data.num_classes):
        diffs.append(f"{shape['num_classes']} vs {data.num_classes} classes")
    if shape.get("input_shape") is not None and tuple(shape["input_shape"]) != tuple(data.input_shape):
        diffs.append(f"input shape {tuple(shape['input_shape'])} vs {tuple(data.input_shape)} (dataset.image_size)")
    saved = store.load_tensors(rundir.labels_path(run_dir))
    if "train_idx" in saved and not torch.equal(saved["train_idx"], data.train_idx.cpu()):
        diffs.append("training samples (dataset.val_size / train_subset / subset seed)")
    elif labels is not None and not torch.equal(saved["noisy"], labels.noisy.cpu()):
        diffs.append("noisy labels (noise.kind / noise.rate / noise.probe / seed / dataset.label_file)")
    # None is the dataset's own normalisation, the same for both once the dataset matches
    t_norm, s_norm = (tcfg.dataset.mean, tcfg.dataset.std), (scfg.dataset.mean, scfg.dataset.std)
    if t_norm != s_norm:
        diffs.append(f"normalisation (dataset.mean/std) {t_norm} vs {s_norm}")
    if diffs:
        raise UserError(
            f"teacher {run_dir} does not match the student: "
            + "; ".join(diffs)
            + ". Give the student the teacher's dataset and noise settings (or train a matching teacher)"
        )


def load_teacher(
    run_dir: str | Path,
    choice: int | str = "best",
    *,
    device: torch.device | str = "cpu",
    student: tuple[RunConfig, Any, Any] | None = None,
    recorded: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """Load the teacher of ``run_dir`` at the chosen round: frozen, in eval mode.

    ``choice="best"`` needs the teacher's whole curve: an unfinished, early-stopped or running
    teacher is refused. ``student``: the student's (config, data, noisy labels), checked against
    the teacher's (:func:`check_consistent`). ``recorded``: the teacher.json a resumed student wrote when it
    started; a teacher that changed since is refused.

    Returns the model, a JSON-able description of the choice, and the round's masks (for the
    sparse-aware cost of the teacher's forward passes).
    """
    run_dir = Path(run_dir)
    hint = "distill.teacher must be the run directory of a finished IMP run"
    if recorded is not None:  # a student that has started: its teacher was there
        hint = (
            "the teacher this student learned from is not there (a moved study?): give the student its new folder, "
            "`dsd2 resume STUDENT_DIR distill.teacher=NEW_DIR` (distill.teachers=[...] for several)"
        )
    tcfg = rundir.read_config(run_dir, hint=hint)
    rows, incomplete = _teacher_state(run_dir, tcfg.prune.rounds)
    if choice == "best" and incomplete is not None:
        raise UserError(
            f"teacher {run_dir}: distill.round=best needs the teacher's whole curve, but {incomplete}. "
            "Finish the teacher first, or choose a finished round explicitly (distill.round=<index> or dense)"
        )
    idx, col = select_teacher_round(rows, choice)
    digest = teacher_digest(run_dir, [r.round for r in rows] if choice == "best" else [idx])
    if recorded is not None and recorded.get("digest") != digest:
        raise UserError(
            f"teacher {run_dir} changed since this student started (its labels or round files differ from the fingerprint in "
            "teacher.json): the student's rounds would mix teachers. Restore the teacher, or start a new student run directory"
        )
    model, masks, _ = rundir.load_round_model(run_dir, idx, device=device)
    row = next(r for r in rows if r.round == idx)
    info: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()),
        "choice": choice,
        "round": idx,
        "selected_on": col,
        "sparsity": row.sparsity,
        "val_acc": row.val_acc,
        "test_acc": row.test_acc,
        "model": tcfg.model.name,
        "rounds_seen": len(rows),
        "digest": digest,
    }
    if col == "test_acc" and choice == "best":
        info["warning"] = "the teacher run has no validation split: best round selected on TEST accuracy (as the reference does)"
    if student is not None:
        check_consistent(tcfg, run_dir, *student)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info, masks


class TeacherEnsemble(nn.Module):
    """Several frozen teachers as one module, for the compute accounting: its forward runs every
    teacher on the batch (so a FLOP count of it is the sum of their forwards) and returns their
    weighted mean logits. The training target is not this mean: see :func:`mixture_log_probs`."""

    def __init__(self, teachers: list[nn.Module], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(teachers)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([w * t(x) for w, t in zip(self.weights, self.members)]).sum(0)

    @staticmethod
    def masks_of(masks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The members' masks under the ensemble's qualified names (``members.<k>.<layer>``)."""
        return {f"members.{k}.{name}": m for k, ms in enumerate(masks) for name, m in ms.items()}


def load_teachers(
    specs: list[Any],
    *,
    device: torch.device | str = "cpu",
    student: tuple[RunConfig, Any, Any] | None = None,
    recorded: Any = None,
) -> tuple[list[nn.Module], list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """:func:`load_teacher` for every ``distill.teachers`` entry (run, round, weight): the same checks
    each; ``recorded``: the teacher.json list a resumed student wrote (each entry's digest is checked).
    Returns (models, infos with the normalised weight, masks), in the order given."""
    total = float(sum(spec.weight for spec in specs))
    if recorded is not None and not (isinstance(recorded, list) and len(recorded) == len(specs)):
        raise UserError(
            f"teacher.json records {recorded!r:.80} but the config names {len(specs)} teachers: start a new student run directory"
        )
    before = recorded if recorded is not None else [None] * len(specs)
    models, infos, masks = [], [], []
    for spec, rec in zip(specs, before):
        model, info, m = load_teacher(spec.run, spec.round, device=device, student=student, recorded=rec)
        models.append(model)
        infos.append({**info, "weight": spec.weight / total})
        masks.append(m)
    return models, infos, masks


class KDObjective:
    """Training objective of a DSD² student: ``kd_loss`` against frozen teachers on the same batch.

    One teacher: :func:`kd_loss` on its logits. Several (``teacher`` a list, ``weights`` theirs):
    :func:`kd_loss_to` the weighted average of their probabilities at the temperature.

    With ``cached_logits`` (the teacher's logits for every training row, valid when the batches
    are not augmented; a list with one tensor per teacher for several) the teachers are not run
    per step: their output for a row never changes.
    """

    def __init__(
        self,
        teacher: nn.Module | list[nn.Module],
        *,
        alpha: float,
        temperature: float,
        amp: bool = False,
        cached_logits: torch.Tensor | list[torch.Tensor] | None = None,
        weights: list[float] | None = None,
    ):
        self.teachers = [t.eval() for t in teacher] if isinstance(teacher, list) else [teacher.eval()]
        self.teacher = self.teachers[0]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.teachers)
        if len(self.weights) != len(self.teachers):
            raise UserError(f"{len(self.teachers)} teachers for {len(self.weights)} weights")
        self.alpha = alpha
        self.temperature = temperature
        self.amp = amp
        self.cached_logits = cached_logits

    def _teacher_logits(self, k: int, inputs: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        from dsd2.train import autocast_for

        cached = self.cached_logits
        if cached is not None and index is not None:
            return (cached[k] if isinstance(cached, list) else cached)[index]
        with torch.no_grad(), autocast_for(inputs.device, self.amp):
            return self.teachers[k](inputs)

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        if len(self.teachers) == 1:
            t = self._teacher_logits(0, inputs, index)
            return kd_loss(logits, t, targets, alpha=self.alpha, temperature=self.temperature)
        zs = [self._teacher_logits(k, inputs, index) for k in range(len(self.teachers))]
        target = mixture_log_probs(zs, self.weights, self.temperature)
        return kd_loss_to(logits, target, targets, alpha=self.alpha, temperature=self.temperature)
