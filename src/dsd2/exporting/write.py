"""``export_run``: one finished round of a run written as a deployable model folder, staged
first and published whole (:mod:`dsd2.outdir`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import outdir, rundir, safe_read, shrink, store
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.export_format import COMPRESSED, DENSE, EXPORT_NAMES, FORMAT, MAX_MODEL_JSON, MODEL_JSON, ONNX, WEIGHTS
from dsd2.prune import Masks

from .info import data_info, model_info
from .onnx_check import ONNX_TOLERANCE, check_onnx_available, write_onnx
from .select import select_round
from .tensors import compress, fold_masks, safetensors_bytes


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote: the folder, the round, its sparsity, the files and sizes."""

    dir: Path
    round: int
    selected_by: str  # "best", "last_good" or "round"
    sparsity: float  # of the prunable weights, as pruned (masks)
    files: dict[str, int]  # file name -> size in bytes
    dense_bytes: int  # model.safetensors as a dense state dict (what --compressed is measured against)
    weights_bytes: int  # model.safetensors as written
    onnx_max_abs_diff: float | None = None
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # model.json


_WHY_TAKEN = "move it away or give another -o; --force replaces only the files of an earlier dsd2 export"


def _earlier_export(out: Path) -> set[str]:
    """The files of an intact earlier export in ``out`` (its model.json included): those that
    model.json lists with sha256 and that still match it; empty when there is none."""
    path = out / MODEL_JSON
    if not outdir.regular_file(path):
        return set()
    try:
        info = safe_read.read_json(path, max_bytes=MAX_MODEL_JSON)
    except UserError:  # too large, too deep or not JSON: no export of ours
        return set()
    files = info.get("files") if isinstance(info, dict) and info.get("format") == FORMAT else None
    if not isinstance(files, dict) or WEIGHTS not in files:
        return set()
    listing = {name: entry.get("sha256") for name, entry in files.items() if isinstance(entry, dict)}
    mine = outdir.owned(out, listing, EXPORT_NAMES.__contains__)
    return mine | {MODEL_JSON} if mine == set(files) else set()


def _prepare_target(out: Path, run_dir: Path, force: bool, names: list[str]) -> set[str]:
    """Refuse a target that is a link, a file, inside a run directory or would replace the run
    itself, or holds something that is not an intact earlier export; a non-empty folder needs
    ``force``. Return the files of the earlier export there (what may be replaced)."""
    out_r, run_r = out.resolve(), run_dir.resolve()
    if out_r == run_r or run_r.is_relative_to(out_r) or out_r.is_relative_to(run_r):
        raise UserError(f"-o {out} overlaps the run directory {run_dir}: export to a folder outside it")
    outdir.check_target(out)  # a link, a file, another run's folder
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    if not force:
        raise UserError(f"{out} is not empty: give another -o, or --force to replace the export there")
    ours = _earlier_export(out)
    if not ours:
        raise UserError(
            f"{out} holds files that are not a dsd2 export (no {MODEL_JSON} of ours whose files match it): "
            "--force replaces only an earlier export"
        )
    outdir.refuse_taken(out, names, ours, _WHY_TAKEN)
    return ours


def _read_meta(run_dir: Path) -> dict[str, Any]:
    """meta.json through the one validation layer (regular file, size, depth, schema: a FIFO
    would block the read, a directory or a list would end in a traceback)."""
    path = rundir.meta_path(run_dir)
    if not os.path.lexists(path):
        raise UserError(f"{path} is missing: {run_dir} is not a dsd2 run directory (or is incomplete)")
    meta = rundir.read_meta(run_dir)
    if not isinstance(meta.get("data", {}), dict):
        raise UserError(f"{path} is not a dsd2 meta.json (edited or corrupt): not exported")
    return meta


def _check_config_unchanged(run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> None:
    """Refuse a config.yaml edited since the run recorded its digest in meta.json (as resume does):
    model.json would describe options the weights were not trained with."""
    recorded = meta.get("config_digest", meta.get("config_hash"))
    if not isinstance(recorded, str):  # a missing guard is a refusal, not a pass
        raise UserError(
            f"{run_dir / rundir.META} lacks the config digest that proves config.yaml unchanged (edited or corrupt): not exported"
        )
    if cfg.digest() != recorded:
        raise UserError(
            f"{run_dir / rundir.CONFIG} was edited after the run started (its digest is not the one in meta.json): not exported"
        )


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    round: str | int = "best",
    onnx: bool = False,
    compressed: bool = False,
    structured: bool = False,
    epoch: str = "last",
    force: bool = False,
) -> ExportResult:
    """Export the selected round of ``run_dir`` into the folder ``out`` (see the module doc)."""
    run_dir, out = Path(run_dir), Path(out)
    meta = _read_meta(run_dir)
    cfg = rundir.read_config(run_dir)
    _check_config_unchanged(run_dir, cfg, meta)
    rows = rundir.read_finished(run_dir).rows  # every finished round's manifest checked: a tampered run stops here
    idx, selection = select_round(run_dir, round, cfg, rows)
    _check_options(run_dir, idx, rows[idx], epoch=epoch, structured=structured, compressed=compressed)
    ours = _prepare_target(out, run_dir, force, [MODEL_JSON, WEIGHTS] + ([ONNX] if onnx else []))
    if onnx:
        check_onnx_available()
    model, masks, state = _round_model(run_dir, idx, epoch)
    data = data_info(run_dir, cfg)
    probe = torch.randn((8, *data["input_shape"]), generator=torch.Generator().manual_seed(0))
    macs = shrink.inference_macs(model, probe)
    shrunk = None
    if structured:
        small, report = shrink.shrink(model, probe)
        shrunk = {**report.as_dict(), "shapes": shrink.module_shapes(small)}
    info = model_info(run_dir, cfg, meta, idx, rows[idx], selection, epoch=epoch, masks=masks, data=data, macs=macs, compressed=compressed)
    dense_meta = {"dsd2_format": DENSE}
    dense_bytes = safetensors_bytes(state, dense_meta)
    if shrunk is not None:
        info["structured"] = shrunk
        model, state = small, small.state_dict()
    files, max_diff = _write_export(
        out, ours, model, state, masks, info, compressed=compressed, onnx=onnx, dense_meta=dense_meta, dense_bytes=dense_bytes
    )
    return ExportResult(
        dir=out,
        round=idx,
        selected_by=selection["selected_by"],
        sparsity=info["sparsity"],
        files=files,
        dense_bytes=dense_bytes,
        weights_bytes=files[WEIGHTS],
        onnx_max_abs_diff=max_diff,
        info=info,
    )


def _check_options(run_dir: Path, idx: int, row: rundir.RoundRow, *, epoch: str, structured: bool, compressed: bool) -> None:
    """Refuse an --epoch the round cannot give, and --structured with --compressed."""
    if epoch not in ("last", "best_val"):
        raise UserError(f"--epoch {epoch!r}: give last or best_val")
    if epoch == "best_val" and row.best_epoch is None:
        raise UserError(f"round {idx} of {run_dir} kept only its last epoch: --epoch best_val needs a run with train.select_epoch=best_val")
    if structured and compressed:
        raise UserError("--structured writes smaller dense tensors, --compressed packs the zeros of dense ones: choose one")


def _round_model(run_dir: Path, idx: int, epoch: str) -> tuple[nn.Module, Masks, dict[str, torch.Tensor]]:
    """The round's model in eval mode with its masks folded into the weights, the masks, and that state."""
    model, masks, _ = rundir.load_round_model(run_dir, idx)
    if epoch == "best_val":  # the round's best-validation epoch: same masks, other weights
        best = rundir.best_state_path(run_dir, idx)
        rundir.load_state(model, store.load_tensors(best), best)
    model.eval()
    state = fold_masks(model.state_dict(), masks)
    model.load_state_dict(state, strict=True)  # what was saved is what the ONNX file and the check see
    return model, masks, state


def _write_export(
    out: Path,
    ours: set[str],
    model: nn.Module,
    state: dict[str, torch.Tensor],
    masks: Masks,
    info: dict[str, Any],
    *,
    compressed: bool,
    onnx: bool,
    dense_meta: dict[str, str],
    dense_bytes: int,
) -> tuple[dict[str, int], float | None]:
    """Write the weights (and model.onnx) into a staging folder, then model.json listing them,
    and publish the folder as ``out``: (file name -> size, the ONNX check's max difference)."""
    max_diff = None
    with outdir.staging(out) as tmp:
        if compressed:
            tensors, shapes = compress(state, masks)
            store.save_tensors(tmp / WEIGHTS, tensors, {"dsd2_format": COMPRESSED, "dsd2_shapes": json.dumps(shapes)})
        else:
            store.save_tensors(tmp / WEIGHTS, state, dense_meta)
        if onnx:
            max_diff = write_onnx(model, tmp / ONNX, info["input_shape"])
            info["onnx"] = {
                "max_abs_diff": max_diff,
                "tolerance": ONNX_TOLERANCE,
                "inputs": "input",
                "outputs": "logits",
                "batch": "dynamic",
            }
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        info["files"] = {name: {"bytes": size, "sha256": store.sha256_file(tmp / name)} for name, size in files.items()}
        info["dense_bytes"] = dense_bytes
        store.write_json(tmp / MODEL_JSON, info)
        files[MODEL_JSON] = (tmp / MODEL_JSON).stat().st_size
        outdir.publish(tmp, out, ours, listing=MODEL_JSON, why=_WHY_TAKEN)
    return files, max_diff
