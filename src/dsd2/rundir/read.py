"""Reading what a run wrote: its config and meta.json, its tables (checked against their recorded
checksums), its finished rounds' checksummed rows, and a round's model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import store
from dsd2.config import RunConfig, validate_config
from dsd2.errors import UserError
from dsd2.file_schemas import Meta, NoiseInfo, RoundMetrics, TableSums
from dsd2.prune import Masks
from dsd2.rundir.layout import (
    CONFIG,
    ENTROPY_CSV,
    META,
    METRICS,
    NOISE,
    ROUND_FILES,
    ROUNDS_CSV,
    TABLE_SUMS,
    round_masks_path,
    round_state_path,
)
from dsd2.rundir.rows import RoundRow, check_round_order
from dsd2.store import MANIFEST, finished_rounds, round_dir


def read_config(run_dir: str | Path, *, hint: str = "give the folder `dsd2 run` printed") -> RunConfig:
    """The resolved config of a run; a clear error (ending with ``hint``) when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a dsd2 run directory (no {CONFIG}); {hint}")
    return validate_config(store.read_yaml_file(path), source=str(path))


def read_noise(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``noise.json`` (the noise asked for, realised rate, per-class flip rates,
    confusion counts: docs/noise.md), or None for a run started before it was written."""
    path = Path(run_dir) / NOISE
    if not path.is_file():
        return None
    return store.read_json_dict(path, NoiseInfo)


def record_tables(run_dir: Path, names: tuple[str, ...] = (ROUNDS_CSV, ENTROPY_CSV)) -> None:
    """Write the checksums of the tables just written (read_table checks them)."""
    store.write_json(run_dir / TABLE_SUMS, {n: store.sha256_file(run_dir / n) for n in names if (run_dir / n).is_file()})


def read_table(run_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """Rows of a table of the run (rounds.csv, entropy.csv), refused when it was edited since dsd2
    wrote it, and refused when its checksum is not recorded (tables.sha256.json deleted, or the
    table's entry removed): a missing guard fails closed. A run whose tables predate the checksums
    gets them with `dsd2 resume RUN_DIR`, which rewrites the tables from the checksummed rounds."""
    run_dir = Path(run_dir)
    path = run_dir / name
    sums_path = run_dir / TABLE_SUMS
    if not path.is_file() and not sums_path.exists():
        return store.read_csv(path)  # the clear "missing" / "not a regular file" message
    if not sums_path.exists():
        raise UserError(
            f"{run_dir} has {name} but no {TABLE_SUMS} (deleted, or written by a dsd2 before the checksums): its numbers "
            f"cannot be checked; `dsd2 resume {run_dir}` rewrites the tables and their checksums from the checksummed round files"
        )
    sums = store.read_json(sums_path, TableSums, hint=f"`dsd2 resume {run_dir}` rewrites it").root
    expected = sums.get(name)
    if expected is None:
        raise UserError(
            f"{sums_path} does not list {name}: its numbers cannot be checked; "
            f"`dsd2 resume {run_dir}` rewrites the tables and their checksums from the checksummed round files"
        )
    if store.sha256_file(path) != expected:
        raise UserError(
            f"{path} was changed after dsd2 wrote it (checksum in {TABLE_SUMS} differs): its numbers cannot be trusted; "
            f"`dsd2 resume {run_dir}` rewrites it from the checksummed round files"
        )
    return store.read_csv(path)


def read_rounds(run_dir: str | Path) -> list[RoundRow]:
    """The rows of ``rounds.csv``, checked against the checksum dsd2 recorded when writing it."""
    path = Path(run_dir) / ROUNDS_CSV
    rows = [RoundRow.from_dict(r, source=path) for r in read_table(run_dir, ROUNDS_CSV)]
    check_round_order(rows, path)
    return rows


@dataclass
class Finished:
    """What the finished rounds recorded, from their checksummed ``metrics.json``."""

    rows: list[RoundRow] = field(default_factory=list)
    entropy: list[dict[str, Any]] = field(default_factory=list)  # ENTROPY_COLUMNS
    timings: list[dict[str, Any]] = field(default_factory=list)  # TIMING_COLUMNS


def read_finished(run_dir: str | Path) -> Finished:
    """Rows, per-layer entropy and timings of rounds 0..k-1 (the finished ones), in order."""
    out = Finished()
    for i in finished_rounds(Path(run_dir)):
        path = round_dir(Path(run_dir), i) / METRICS
        m = store.read_json(path, RoundMetrics, hint=f"delete {path.parent} and resume to recompute that round")
        out.rows.append(RoundRow.from_dict(m.row, source=path))
        out.entropy.extend(m.entropy_layers)
        out.timings.append(m.timing)
    return out


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load a saved state dict, or say which file does not fit the configured model."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise UserError(f"{source} does not fit the configured model: {detail[:1000]}") from None


# What a model builder takes from the data; meta.json's "data" holds them first.
BUILDER_DATA_KEYS = ("num_classes", "in_channels", "input_size")


def saved_data_shape(run_dir: str | Path) -> dict[str, Any]:
    """meta.json's "data": num_classes, in_channels, input_size (what a model builder needs, as
    :data:`BUILDER_DATA_KEYS`) and, from runs of dsd2 with image folders on, input_shape, mean,
    std, class_names (None when the dataset has none), loader, files_sha256."""
    shape = read_meta(run_dir).get("data")
    if shape is None:
        raise UserError(f"{run_dir}/{META} lacks the data shape; re-run with this version of dsd2")
    return shape


META_HINT = "it is the run's record of how it started; restore it from a copy of the run"


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """The run's meta.json as written, once it passed :class:`dsd2.file_schemas.Meta`."""
    return store.read_json_dict(Path(run_dir) / META, Meta, hint=META_HINT)


def load_masks(path: Path, like: dict[str, torch.Tensor], *, complete: bool) -> Masks:
    """A round's masks, checked against the tensors they mask (``like``): each a bool tensor of its
    tensor's shape, none for a tensor ``like`` lacks and, when ``complete``, one for each. A masks
    file rewritten with matching checksums, or of another model, would else fail mid-run (a
    traceback) or prune the wrong entries; a float mask would scale the weights."""
    masks = store.load_tensors(path)
    fix = f"delete {path.parent} and resume to recompute that round"
    unknown, missing = sorted(set(masks) - set(like)), sorted(set(like) - set(masks)) if complete else []
    if unknown or missing:
        what = ([f"masks {', '.join(unknown[:3])}, which the model does not have"] if unknown else []) + (
            [f"no mask for {', '.join(missing[:3])}"] if missing else []
        )
        raise UserError(f"{path} does not fit the configured model: {'; '.join(what)}; {fix}")
    for name, mask in masks.items():
        if mask.dtype != torch.bool or mask.shape != like[name].shape:
            raise UserError(
                f"{path}: the mask of {name} is {str(mask.dtype).removeprefix('torch.')} {list(mask.shape)}, "
                f"not bool {list(like[name].shape)} like its weight; {fix}"
            )
    return masks


def load_round_model(run_dir: str | Path, round_idx: int, device: torch.device | str = "cpu") -> tuple[nn.Module, Masks, RunConfig]:
    """Rebuild the model of a finished round from its run directory (state + masks, no pickles)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    rd = round_dir(run_dir, round_idx)
    if not store.verify_manifest(rd, ROUND_FILES):
        raise UserError(f"round {round_idx} of {run_dir} is not finished (no {rd / MANIFEST})")
    saved = saved_data_shape(run_dir)
    shape = {k: saved[k] for k in BUILDER_DATA_KEYS}  # meta.json's "data" also holds mean, std, class names, ...
    from dsd2.models import build_model  # every architecture and torchvision: only loading a model needs them

    torch.manual_seed(cfg.seed)  # building draws from the global generator: leave it in a reproducible state
    model = build_model(cfg.model.name, **shape, **cfg.model.options)
    state = round_state_path(run_dir, round_idx)
    load_state(model, store.load_tensors(state), state)
    masks = load_masks(round_masks_path(run_dir, round_idx), model.state_dict(), complete=False)
    return model.to(device), {k: v.to(device) for k, v in masks.items()}, cfg
