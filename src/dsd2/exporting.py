"""Export one finished round of a run as a deployable model folder, and load it back.

``export_run`` writes, into a folder built in a hidden staging folder first (:mod:`dsd2.outdir`:
a new ``-o`` is renamed into place whole; into an existing one ``force`` moves the files over an
intact earlier export's and touches nothing else there):

- ``model.safetensors``: the round's state dict with the masks folded in (pruned entries are
  exact zeros). Its keys are the model's own, so a torchvision-built model's file loads into the
  plain torchvision constructor with ``strict=True``. With ``compressed=True`` every masked
  tensor is stored as its kept values (1-D) plus a packed bitmask or their indices instead
  (docs/export.md).
- ``model.json``: what rebuilding and using the model needs (architecture and options, plugins,
  classes, input shape, normalisation) and where it came from (run, round, how it was selected,
  its accuracies and sparsity, the round's manifest hashes), plus the sha256 of every file.
- ``model.onnx`` (``onnx=True``): exported with torch's default (dynamo) exporter, checked
  against PyTorch on random inputs with onnxruntime.

Reading an export back (:func:`load_exported`) checks everything in it first
(:mod:`dsd2.export_format`): it is a file people download from others.

Which round: ``best`` (highest accuracy on the selection column, validation, or test without a
validation split: :func:`dsd2.compare.best_round`), ``last_good`` (the sparsest round before the
drop that stops pruning: :func:`dsd2.compare.decide` with ``select="last_good"``, the run's own
early-stop rule, else the plain rule with the config defaults) or a round index.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn

from dsd2 import __version__, compare, outdir, rundir, safe_read, shrink, store
from dsd2.config import EarlyStopConfig, RunConfig
from dsd2.errors import UserError
from dsd2.export_format import (
    BITMASK,
    COMPRESSED,
    DENSE,
    EXPORT_NAMES,
    FORMAT,
    FORMAT_VERSION,
    INDICES,
    MAX_MODEL_JSON,
    MODEL_JSON,
    ONNX,
    VALUES,
    WEIGHTS,
    check_files,
    dense_shapes,
    parse_info,
    tensor_header,
)
from dsd2.plugins import load_plugins
from dsd2.prune import Masks, count_alive, count_total, sparsity

# ONNX vs PyTorch on random inputs: max |difference| allowed, relative to the largest |logit| (at least 1).
ONNX_TOLERANCE = 1e-4
_ONNX_EXTRA = "the ONNX check needs onnx, onnxscript and onnxruntime: pip install 'dsd2[export]'"


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


# ----------------------------------------------------------------------------- which round


def select_round(run_dir: Path, choice: str | int, cfg: RunConfig, rows: list[rundir.RoundRow]) -> tuple[int, dict[str, Any]]:
    """(round index, how it was selected) for ``choice`` in {"best", "last_good", <int>} on the
    run's checksummed rows. ``best`` and ``last_good`` need the run's whole curve."""
    if not rows:
        raise UserError(f"{run_dir} has no finished round yet: nothing to export")
    if isinstance(choice, int) or re.fullmatch(r"-?[0-9]{1,9}", str(choice)):  # ASCII digits: "²".isdigit() is True
        idx = int(choice)
        if not 0 <= idx < len(rows):
            raise UserError(
                f"round {idx} of {run_dir} is not finished (finished: 0..{len(rows) - 1}); give --round best, last_good or one of those"
            )
        return idx, {"selected_by": "round"}
    if choice not in ("best", "last_good"):
        raise UserError(f"--round {str(choice)[:40]!r}: give best, last_good or a round index (0 to 999999999)")
    if store.is_locked(run_dir):
        raise UserError(f"{run_dir} is still running (another dsd2 process holds its lock): --round {choice} needs its whole curve")
    if not rundir.is_complete(cfg, len(rows), run_dir):
        raise UserError(
            f"{run_dir} has {len(rows)} of {cfg.prune.rounds + 1} rounds: --round {choice} needs the whole curve; "
            f"`dsd2 resume {run_dir}` finishes it, or give --round N (0..{len(rows) - 1})"
        )
    col = compare.selection_column(rows)
    if choice == "best":
        return compare.best_round(rows, col), {"selected_by": "best", "selected_on": col}
    es = cfg.early_stop
    if es.rule == "none":  # no rule of its own: the plain rule with the config's defaults (docs/export.md)
        es = EarlyStopConfig(rule="plain")
    decision = compare.decide(rows, es.rule, tolerance=es.tolerance, patience=es.patience, select="last_good", options=es.rule_options)
    assert decision is not None and decision.selected_round is not None  # plain and entropy always decide on rows
    rule = {"rule": es.rule, "tolerance": es.tolerance, "patience": es.patience, "select": "last_good", "reason": decision.reason}
    return decision.selected_round, {"selected_by": "last_good", "selected_on": col, "stop_rule": rule}


# ----------------------------------------------------------------------------- tensors


def fold_masks(state: Mapping[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
    """The state dict with every masked tensor multiplied by its mask (pruned entries exactly 0)."""
    missing = sorted(set(masks) - set(state))
    if missing:
        raise UserError(f"masks cover tensors the model does not have: {missing[:5]}")
    return {k: (v * masks[k].to(v.device) if k in masks else v).detach().cpu().contiguous() for k, v in state.items()}


def compress(state: Mapping[str, torch.Tensor], masks: Masks) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """(tensors, shapes): each masked tensor as ``name#values`` (its kept entries, 1-D, in
    row-major order) plus where they go, whichever is smaller: ``name#bitmask`` (the mask, 8
    entries per uint8, little bit order; 1 bit per weight) or ``name#indices`` (int32 positions;
    32 bits per kept weight, smaller below 1/32 density). Other tensors stay as they are;
    ``shapes`` holds the masked tensors' shapes."""
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for k, v in state.items():
        if k not in masks:
            out[k] = v
            continue
        m = masks[k].detach().cpu().flatten().bool()
        out[k + VALUES] = v.detach().cpu().flatten()[m].contiguous()
        kept, n = int(m.sum()), m.numel()
        if 4 * kept < (n + 7) // 8 and n < 2**31:
            out[k + INDICES] = m.nonzero().flatten().to(torch.int32)
        else:
            out[k + BITMASK] = torch.from_numpy(np.packbits(m.numpy(), bitorder="little"))
        shapes[k] = list(v.shape)
    return out, shapes


def decompress(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compress`: the dense state dict, zeros where no value was kept."""
    out = {k: v for k, v in tensors.items() if not k.endswith((VALUES, BITMASK, INDICES))}
    for k, shape in shapes.items():
        values = tensors[k + VALUES]
        n = int(np.prod(shape)) if shape else 1
        if k + INDICES in tensors:
            where = tensors[k + INDICES].long()
            if where.numel() != values.numel() or (where.numel() and (int(where.min()) < 0 or int(where.max()) >= n)):
                raise UserError(
                    f"compressed tensor {k}: its indices do not fit its {values.numel()} values and shape {shape} (corrupt file)"
                )
        else:
            where = torch.from_numpy(np.unpackbits(tensors[k + BITMASK].numpy(), count=n, bitorder="little").astype(bool))
            if int(where.sum()) != values.numel():
                raise UserError(f"compressed tensor {k}: {values.numel()} values but {int(where.sum())} bits set (corrupt file)")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[where] = values
        out[k] = dense.view(shape)
    return out


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Size of the file :func:`dsd2.store.save_tensors` would write (its checksum entry included)."""
    return len(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={**metadata, "dsd2_sha256": "0" * 64}))


# ----------------------------------------------------------------------------- what the model needs


def _data_info(run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """num_classes, in_channels, input_size, input_shape, mean, std, class_names: from meta.json's
    "data" when recorded there, else the config (dataset.mean/std) and the dataset registry's
    metadata (nothing is loaded)."""
    data: dict[str, Any] = dict(rundir.saved_data_shape(run_dir))
    from dsd2.data import DATASETS  # registry metadata only; no dataset is read

    try:
        reg = dict(DATASETS.metadata(cfg.dataset.name))
    except (KeyError, ValueError):  # a plugin's dataset that is not imported here
        reg = {}
    source = rundir.META if data.get("mean") is not None else None
    if source is None and cfg.dataset.mean is not None:
        data["mean"], data["std"], source = list(cfg.dataset.mean), list(cfg.dataset.std or []), "config"
    if source is None and reg.get("mean") is not None:
        data["mean"], data["std"], source = list(reg["mean"]), list(reg["std"]), "dataset registry"
    if source is None and cfg.dataset.name in _builtin_normalisation():
        data["mean"], data["std"] = map(list, _builtin_normalisation()[cfg.dataset.name])
        source = "dataset default"
    data["normalisation_source"] = source
    for key in ("class_names", "input_shape"):
        if data.get(key) is None and reg.get(key) is not None:
            data[key] = list(reg[key])
    if data.get("input_shape") is None:  # images: C x S x S (what the model builders assume)
        data["input_shape"] = [data["in_channels"], data["input_size"], data["input_size"]]
    for key in ("mean", "std", "class_names"):
        data.setdefault(key, None)
    data["input_shape"] = [int(s) for s in data["input_shape"]]
    return data


def _builtin_normalisation() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Mean and std the built-in datasets normalise with (runs written before meta.json recorded them)."""
    from dsd2.data import cifar, fashion

    imagenet = (cifar.IMAGENET_MEAN, cifar.IMAGENET_STD)
    # mnist1d is used as generated (its loader's mean 0, std 1)
    return {"cifar10": imagenet, "cifar100": imagenet, "fashion_mnist": (fashion.MEAN, fashion.STD), "mnist1d": ((0.0,), (1.0,))}


def _plugins(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The modules the run imported to register its models (config ``plugins``), if any."""
    plugins = getattr(cfg, "plugins", None)
    if plugins is None:  # a config written before RunConfig had the field: read the file itself
        raw = store.read_yaml_file(run_dir / rundir.CONFIG)
        plugins = raw.get("plugins") if isinstance(raw, dict) else None
    return [str(p) for p in plugins or []]


def import_plugins(plugins: list[str]) -> None:
    """Import the modules that register the exported model's architecture (as every command
    does: once per process, the current folder searched too, entry points loaded)."""
    try:
        load_plugins(plugins)
    except UserError as err:
        raise UserError(f"the exported model needs its plugins: {err}") from None


# ----------------------------------------------------------------------------- the folder


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


def _manifest_hashes(run_dir: Path, round_idx: int) -> dict[str, Any]:
    rd = rundir.round_dir(run_dir, round_idx)
    manifest = store.read_json(rd / rundir.MANIFEST)
    return {"manifest_sha256": store.sha256_file(rd / rundir.MANIFEST), "files": manifest.get("files", {})}


def _layer_sparsity(masks: Masks) -> dict[str, dict[str, Any]]:
    return {
        k: {"alive": int(m.sum()), "total": m.numel(), "sparsity": 1.0 - int(m.sum()) / m.numel() if m.numel() else 0.0}
        for k, m in masks.items()
    }


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
        _check_onnx_available()
    model, masks, state = _round_model(run_dir, idx, epoch)
    data = _data_info(run_dir, cfg)
    probe = torch.randn((8, *data["input_shape"]), generator=torch.Generator().manual_seed(0))
    macs = shrink.inference_macs(model, probe)
    shrunk = None
    if structured:
        small, report = shrink.shrink(model, probe)
        shrunk = {**report.as_dict(), "shapes": shrink.module_shapes(small)}
    info = _model_info(run_dir, cfg, meta, idx, rows[idx], selection, epoch=epoch, masks=masks, data=data, macs=macs, compressed=compressed)
    dense_meta = {"dsd2_format": DENSE}
    dense_bytes = _safetensors_bytes(state, dense_meta)
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


def _model_info(
    run_dir: Path,
    cfg: RunConfig,
    meta: dict[str, Any],
    idx: int,
    row: rundir.RoundRow,
    selection: dict[str, Any],
    *,
    epoch: str,
    masks: Masks,
    data: dict[str, Any],
    macs: dict[str, Any],
    compressed: bool,
) -> dict[str, Any]:
    """model.json as far as the round tells it (the files and their sizes are added when written)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dsd2": __version__,
        "weights_format": COMPRESSED if compressed else DENSE,
        "model": {"name": cfg.model.name, "options": cfg.model.options},
        "plugins": _plugins(run_dir, cfg),
        **data,
        "round": idx,
        **selection,
        "epoch": "last" if epoch == "last" else {"best_val": row.best_epoch},
        "accuracy": {k: v for k, v in row.items() if k.endswith("_acc") or "_acc_" in k},
        "sparsity": sparsity(masks),
        "alive_weights": count_alive(masks),
        "prunable_weights": count_total(masks),
        "layer_sparsity": _layer_sparsity(masks),
        "inference_macs": {
            "per_layer": macs,
            "dense": sum(v["dense"] for v in macs.values()),
            "nonzero": sum(v["nonzero"] for v in macs.values()),
            "note": "multiply-accumulates of one example's forward pass; dense kernels compute the dense count whatever the "
            "zeros, so unstructured sparsity does not make them faster: only removed channels (--structured) do",
        },
        "source": {
            "run_dir": str(run_dir.resolve()),
            "run_name": cfg.name,
            "seed": cfg.seed,
            "git_commit": meta.get("git_commit"),
            "config_sha256": store.sha256_file(rundir.config_path(run_dir)),
            "round": _manifest_hashes(run_dir, idx),
        },
    }


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


# ----------------------------------------------------------------------------- ONNX


def _check_onnx_available() -> None:
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            raise UserError(f"--onnx: {mod} is not installed; {_ONNX_EXTRA}")


def write_onnx(model: nn.Module, path: Path, input_shape: list[int], *, batch: int = 4, seed: int = 0) -> float:
    """Export ``model`` (eval mode) to ``path`` with a dynamic batch axis; return the max abs
    difference of onnxruntime's logits from PyTorch's on seeded random inputs. Above
    :data:`ONNX_TOLERANCE` (relative to the largest logit, at least 1) it is an error."""
    import onnxruntime

    _check_onnx_available()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(seed))
    params = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: "batch"},),
            dynamo=True,
            external_data=params > 1_800_000_000,  # one self-contained file under protobuf's 2 GB limit
            verbose=False,
        )
    except Exception as err:  # the exporter's own errors are many types; say which model failed and why
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torch.onnx.export failed on this model: {first[:500]}") from None
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed + 1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    diff = float(np.abs(got - want).max())
    allowed = ONNX_TOLERANCE * max(1.0, float(np.abs(want).max()))
    if not diff <= allowed:
        raise UserError(f"the ONNX model differs from PyTorch by {diff:.3g} on random inputs (allowed {allowed:.3g}): not written")
    return diff


# ----------------------------------------------------------------------------- loading


def read_info(export_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of an export, validated (:class:`dsd2.export_format.ExportInfo`), and
    refused when a file it lists is missing, a link, or changed since."""
    export_dir = Path(export_dir)
    info = parse_info(export_dir)
    check_files(export_dir, info, store.sha256_file)
    return info


def load_state(export_dir: str | Path, info: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of an export (a compressed file is unpacked). ``info``: its
    :func:`read_info`, when the caller has it already."""
    export_dir = Path(export_dir)
    info = read_info(export_dir) if info is None else info
    path = export_dir / WEIGHTS
    header, meta = tensor_header(path)
    shapes = dense_shapes(path, header, meta, info.get("weights_format", DENSE))
    return _unpack(path, info, header, shapes)


def _unpack(path: Path, info: dict[str, Any], header: Mapping[str, Any], shapes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Read the (checked) file and unpack its compressed tensors."""
    tensors = store.load_tensors(path)
    if info.get("weights_format") != COMPRESSED:
        return tensors
    return decompress(tensors, {k: v for k, v in shapes.items() if k + VALUES in header})


# A model that a tiny file describes stays tiny: what load_exported builds may be at most this many
# times the weights file's size (a compressed file of a 99.9% sparse model is ~500x smaller than the
# dense model), or this floor, unless the caller raises the bound (max_bytes).
_SIZE_RATIO, _SIZE_FLOOR = 1024, 256 << 20


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _build(info: dict[str, Any], path: Path, device: str | None = None) -> nn.Module:
    """The architecture model.json names (on ``device``: "meta" allocates nothing), resized to a
    structured export's shapes."""
    from dsd2.models import build_model

    spec = info["model"]
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device) if device else contextlib.nullcontext():
            model = build_model(
                spec["name"],
                num_classes=info["num_classes"],
                in_channels=info["in_channels"],
                input_size=info["input_size"],
                **spec["options"],
            )
            if info.get("structured"):  # removed channels: the layers take the export's smaller shapes first
                _check_shrink(model, info["structured"]["shapes"], path)
                shrink.rebuild(model, info["structured"]["shapes"])
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, OverflowError, NotImplementedError) as err:
        raise UserError(
            f"{path}: model {spec['name']!r} cannot be built from its options ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    return model


def _check_shrink(model: nn.Module, shapes: Mapping[str, list[int]], path: Path) -> None:
    """A structured export only removes channels: each listed layer exists and its shape is the
    built one's with no dimension larger."""
    weights = {name: m.weight for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    for name, shape in shapes.items():
        w = weights.get(name)
        if w is None or len(shape) != w.dim() or any(s > d for s, d in zip(shape, w.shape, strict=True)):
            raise UserError(f"structured.shapes[{name[:80]!r}] = {shape} does not shrink a layer of the model (corrupt or edited)")


def _check_plugins(info: dict[str, Any], path: Path, allow_plugins: bool) -> None:
    """Import model.json's plugins only when the caller allows it (importing runs their code);
    without, a model already registered (by an installed plugin, or one imported before) loads."""
    plugins = list(info.get("plugins") or [])
    if allow_plugins:
        import_plugins(plugins)
        return
    from dsd2.models import MODELS

    load_plugins([])  # installed entry points only: the user's own packages
    if plugins and info["model"]["name"] not in MODELS:
        raise UserError(
            f"{path} builds {info['model']['name']!r} from the plugin module(s) {', '.join(p[:80] for p in plugins)}: importing them runs "
            "their code, so load_exported does not unless you trust this export; pass allow_plugins=True, or import them first"
        )


def load_exported(
    export_dir: str | Path, device: torch.device | str = "cpu", *, allow_plugins: bool = False, max_bytes: int | None = None
) -> nn.Module:
    """The exported model, weights loaded (``strict=True``), in eval mode, on ``device``.

    Everything is checked before it is used: ``model.json`` against its schema, every listed file
    (regular, in the folder, size and sha256), the weights' header against the file size, and the
    model model.json describes, built first on the meta device (nothing allocated), against the
    weights' shapes and against ``max_bytes`` (default: 1024 x the weights file, at least 256 MiB).
    ``allow_plugins``: import the plugin modules model.json names (runs their code; only for an
    export you trust). Every refusal is a :class:`dsd2.errors.UserError`."""
    export_dir = Path(export_dir)
    info = read_info(export_dir)
    path = export_dir / WEIGHTS
    header, meta = tensor_header(path)
    shapes = dense_shapes(path, header, meta, info.get("weights_format", DENSE))
    _check_plugins(info, export_dir / MODEL_JSON, allow_plugins)
    bound = max_bytes if max_bytes is not None else max(_SIZE_FLOOR, _SIZE_RATIO * path.stat().st_size)
    try:
        skeleton, real = _build(info, export_dir / MODEL_JSON, "meta"), False
    except UserError:
        # a builder that needs real tensors (a plugin's .item() at init): built for real, then
        # checked the same way before any weight is read
        skeleton, real = _build(info, export_dir / MODEL_JSON), True
    size = _model_bytes(skeleton)
    if size > bound:
        raise UserError(
            f"{export_dir / MODEL_JSON} describes a model of {size:,} bytes, more than {bound:,} for a {path.stat().st_size:,}-byte "
            "weights file: not loaded (pass max_bytes= to load_exported if you trust this export)"
        )
    want = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    if want != shapes:
        diff = sorted(set(want) ^ set(shapes)) or sorted(k for k in want if want[k] != shapes[k])
        k = diff[0]
        raise UserError(
            f"{path} does not fit the model model.json describes: tensor {k[:80]!r} is {shapes.get(k, 'missing')} in the file, "
            f"{want.get(k, 'absent')} in the model (corrupt or edited): export the run again"
        )
    model = skeleton if real else _build(info, export_dir / MODEL_JSON)
    del skeleton
    rundir.load_state(model, _unpack(path, info, header, shapes), path)
    return model.to(device).eval()
