"""Export one finished round of a run as a deployable model folder, and load it back.

``export_run`` writes, into a fresh folder (built next to the target and renamed into place, so
a failure or a kill leaves nothing half-written):

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
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn

from dsd2 import __version__, compare, rundir, shrink, store
from dsd2.config import EarlyStopConfig, RunConfig
from dsd2.errors import UserError
from dsd2.plugins import load_plugins
from dsd2.prune import Masks, count_alive, count_total, sparsity

FORMAT = "dsd2-export"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
# Layout of model.safetensors, also in its metadata (safetensors readers see it without model.json).
DENSE, COMPRESSED = "dense", "sparse-values"
# Key suffixes of a compressed tensor; '#' cannot occur in a state-dict key (module attribute names).
VALUES, BITMASK, INDICES = "#values", "#bitmask", "#indices"
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
    if isinstance(choice, int) or str(choice).lstrip("-").isdigit():
        idx = int(choice)
        if not 0 <= idx < len(rows):
            raise UserError(
                f"round {idx} of {run_dir} is not finished (finished: 0..{len(rows) - 1}); give --round best, last_good or one of those"
            )
        return idx, {"selected_by": "round"}
    if choice not in ("best", "last_good"):
        raise UserError(f"--round {choice!r}: give best, last_good or a round index")
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
    decision = compare.decide(rows, es.rule, tolerance=es.tolerance, patience=es.patience, select="last_good")
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
    source = "meta.json" if data.get("mean") is not None else None
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


def _prepare_target(out: Path, run_dir: Path, force: bool) -> None:
    """Refuse a target that is a file, holds something other than an earlier export, or would
    replace the run itself; a non-empty earlier export needs ``force``."""
    out_r, run_r = out.resolve(), run_dir.resolve()
    if out_r == run_r or run_r.is_relative_to(out_r) or out_r.is_relative_to(run_r):
        raise UserError(f"-o {out} overlaps the run directory {run_dir}: export to a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file: give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"{out} is not empty: give another -o, or --force to replace the export there")
    info = out / MODEL_JSON
    try:
        is_export = json.loads(info.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        is_export = False
    if not is_export:
        raise UserError(f"{out} holds files that are not a dsd2 export (no {MODEL_JSON} of ours): --force replaces only an earlier export")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed over it when the block succeeds."""
    out = out.resolve()  # "-o ." has no name to build a sibling from
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise UserError(f"cannot write in {out.parent}: {err.strerror or err}; choose a writable -o") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~store.UMASK)  # mkdtemp makes 0700; an export is shared like any folder
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an earlier export there is moved aside first and deleted
    after, or put back when the rename fails."""
    aside = None
    try:
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, aside / "export")
        os.replace(tmp, out)
    except OSError as err:
        if aside is not None and (aside / "export").exists() and not out.exists():
            os.replace(aside / "export", out)
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _check_config_unchanged(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse a config.yaml edited since the run recorded its digest in meta.json (as resume does):
    model.json would describe options the weights were not trained with."""
    meta = store.read_json(run_dir / rundir.META)
    recorded = meta.get("config_digest", meta.get("config_hash")) if isinstance(meta, dict) else None
    if recorded is not None and cfg.digest() != recorded:
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
    cfg = rundir.read_config(run_dir)
    _check_config_unchanged(run_dir, cfg)
    rows = rundir.read_finished(run_dir).rows  # every finished round's manifest checked: a tampered run stops here
    idx, selection = select_round(run_dir, round, cfg, rows)
    if epoch not in ("last", "best_val"):
        raise UserError(f"--epoch {epoch!r}: give last or best_val")
    if epoch == "best_val" and rows[idx].best_epoch is None:
        raise UserError(f"round {idx} of {run_dir} kept only its last epoch: --epoch best_val needs a run with train.select_epoch=best_val")
    if structured and compressed:
        raise UserError("--structured writes smaller dense tensors, --compressed packs the zeros of dense ones: choose one")
    _prepare_target(out, run_dir, force)
    if onnx:
        _check_onnx_available()
    model, masks, _ = rundir.load_round_model(run_dir, idx)
    if epoch == "best_val":  # the round's best-validation epoch: same masks, other weights
        best = rundir.round_dir(run_dir, idx) / rundir.BEST_STATE
        rundir.load_state(model, store.load_tensors(best), best)
    model.eval()
    state = fold_masks(model.state_dict(), masks)
    model.load_state_dict(state, strict=True)  # what was saved is what the ONNX file and the check see
    data = _data_info(run_dir, cfg)
    probe = torch.randn((8, *data["input_shape"]), generator=torch.Generator().manual_seed(0))
    macs = shrink.inference_macs(model, probe)
    shrunk = None
    if structured:
        small, report = shrink.shrink(model, probe)
        shrunk = {**report.as_dict(), "shapes": shrink.module_shapes(small)}
    row = rows[idx]
    meta = store.read_json(run_dir / rundir.META)
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dsd2": __version__,
        "weights_format": COMPRESSED if compressed else DENSE,
        "model": {"name": cfg.model.name, "options": cfg.model.options},
        "plugins": _plugins(run_dir, cfg),
        **data,
        "round": idx,
        **selection,
        "epoch": "last" if epoch == "last" else {"best_val": rows[idx].best_epoch},
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
            "git_commit": meta.get("git_commit") if isinstance(meta, dict) else None,
            "config_sha256": store.sha256_file(run_dir / rundir.CONFIG),
            "round": _manifest_hashes(run_dir, idx),
        },
    }
    dense_meta = {"dsd2_format": DENSE}
    dense_bytes = _safetensors_bytes(state, dense_meta)
    if shrunk is not None:
        info["structured"] = shrunk
        model, state = small, small.state_dict()
    max_diff = None
    with _staging(out) as tmp:
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
    """The ``model.json`` of an export, refused when it is not one or a file changed since."""
    export_dir = Path(export_dir)
    path = export_dir / MODEL_JSON
    if not path.is_file():
        raise UserError(f"{export_dir} is not a dsd2 export (no {MODEL_JSON}); give the folder `dsd2 export` wrote")
    info = store.read_json(path)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{path} is not a dsd2 export description")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} has format version {info['format_version']}; this dsd2 reads up to {FORMAT_VERSION}: upgrade dsd2")
    for name, entry in (info.get("files") or {}).items():
        f = export_dir / name
        if not f.is_file():
            raise UserError(f"{f} is missing although {path} lists it")
        if store.sha256_file(f) != entry.get("sha256"):
            raise UserError(f"{f} does not match its checksum in {path} (corrupt or edited): export the run again")
    return info


def load_state(export_dir: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict of an export (a compressed file is unpacked)."""
    export_dir = Path(export_dir)
    info = read_info(export_dir)
    tensors = store.load_tensors(export_dir / WEIGHTS)
    if info.get("weights_format") != COMPRESSED:
        return tensors
    from safetensors import safe_open

    with safe_open(str(export_dir / WEIGHTS), framework="pt") as f:
        shapes = json.loads((f.metadata() or {}).get("dsd2_shapes", "{}"))
    return decompress(tensors, shapes)


def load_exported(export_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The exported model, weights loaded (``strict=True``), in eval mode, on ``device``."""
    info = read_info(export_dir)
    import_plugins(list(info.get("plugins") or []))
    from dsd2.models import build_model

    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's generator alone
        model = build_model(
            info["model"]["name"],
            num_classes=info["num_classes"],
            in_channels=info["in_channels"],
            input_size=info["input_size"],
            **info["model"]["options"],
        )
    if info.get("structured"):  # removed channels: the layers take the export's smaller shapes first
        shrink.rebuild(model, info["structured"]["shapes"])
    rundir.load_state(model, load_state(export_dir), Path(export_dir) / WEIGHTS)
    return model.to(device).eval()
