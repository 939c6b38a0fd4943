"""The run directory: its layout, the row of its rounds table, and reading what a run wrote.

Layout (later tools read only this; docs/run_directory.md)::

    config.yaml              resolved config (every field, defaults included)
    meta.json                seed, versions, git commit, host, creation time, data shape
    labels.safetensors       clean, noisy (int64) and flipped (int64 index) train labels, train_idx
    init.safetensors         weights at initialisation (lottery rewinding, reproducibility)
    rewind.safetensors       weights at epoch `prune.rewind_epoch` of round 0 (late_rewind only)
    rounds.csv               one RoundRow per finished round (deterministic columns only)
    entropy.csv              per-layer activation entropy per round
    timings.csv              wall time per round (kept apart so rounds.csv is reproducible)
    round_000/ ...           state.safetensors, masks.safetensors, metrics.json, MANIFEST.json

A round counts as finished only when its ``MANIFEST.json`` (sha256 of its files, written last)
is present and the files match it (:func:`store.finished_rounds`). The CSV tables are copies
rewritten from the rounds' checksummed ``metrics.json``; code that must not trust an editable
file reads :func:`read_finished`.

This module reads; the round loop (:mod:`dsd2.imp`) writes. It sits below ``imp`` and
``distill``, which both load a round's model from here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import store
from dsd2.config import RunConfig, default_gradual_window, validate_config
from dsd2.errors import UserError
from dsd2.file_schemas import EarlyStop, FloorStop, Meta, NoiseInfo, RoundMetrics, TableSums
from dsd2.prune import Masks

# Finished rounds are the manifest-checked round folders; the rule lives with the checksums.
from dsd2.store import MANIFEST, finished_rounds, round_dir

CONFIG = "config.yaml"
META = "meta.json"
ROUNDS_CSV = "rounds.csv"
ENTROPY_CSV = "entropy.csv"
TIMINGS_CSV = "timings.csv"
METRICS = "metrics.json"
# The files of a finished round folder, in the order its manifest lists them.
ROUND_FILES = store.ROUND_FILES
STATE, MASKS = ROUND_FILES[:2]  # a round's weights and masks
LABELS = "labels.safetensors"
INIT = "init.safetensors"
REWIND = "rewind.safetensors"
TEACHER = "teacher.json"  # DSD² students: the teacher run, its round and how it was chosen
LR_SCALE = "lr_scale.json"


# One path function per file of a run directory (as OpenLTH's paths.py): readers name the file
# they want by function, and the layout above is the one place that spells it.
def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG


def meta_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / META


def labels_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LABELS


def noise_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / NOISE


def init_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / INIT


def rewind_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / REWIND


def rounds_csv_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / ROUNDS_CSV


def entropy_csv_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / ENTROPY_CSV


def timings_csv_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TIMINGS_CSV


def table_sums_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TABLE_SUMS


def teacher_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TEACHER


def early_stop_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EARLY_STOP


def floor_stop_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FLOOR_STOP


def lr_scale_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LR_SCALE


def round_state_path(run_dir: str | Path, round_idx: int) -> Path:
    return round_dir(Path(run_dir), round_idx) / STATE


def round_masks_path(run_dir: str | Path, round_idx: int) -> Path:
    return round_dir(Path(run_dir), round_idx) / MASKS


def round_metrics_path(run_dir: str | Path, round_idx: int) -> Path:
    return round_dir(Path(run_dir), round_idx) / METRICS


def best_state_path(run_dir: str | Path, round_idx: int) -> Path:
    return round_dir(Path(run_dir), round_idx) / BEST_STATE


@dataclass(frozen=True, kw_only=True)
class RoundRow(Mapping[str, Any]):
    """One row of ``rounds.csv`` (and the ``row`` of a round's ``metrics.json``): the fields are
    the columns, in file order. Accuracies and sparsity are fractions in [0, 1]; PFLOPs as in
    docs/protocol.md ("Compute").

    A field with a default may be absent from files written before it existed and reads as None,
    so adding a column is one line here, with ``= None``.

    It is also a read-only mapping of column to value: code that picks a column by name (the
    selection column: ``row[col]``) reads it without ``getattr``.
    """

    round: int
    sparsity: float
    alive_weights: int
    epochs: int
    train_loss: float
    train_acc_noisy: float
    train_acc_clean: float
    train_acc_flipped: float | None = None  # flipped samples scored on their noisy labels: memorisation
    flipped_acc_clean: float | None = None
    unflipped_acc: float | None = None
    val_acc: float | None = None  # None without a validation split (dataset.val_size=0)
    test_acc: float
    entropy: float | None = None  # neuron-weighted, bits; None with entropy.enabled=false
    phase: str | None = None  # docs/phases.md; set when the tables are written, None in metrics.json
    round_pflops_dense: float
    round_pflops_sparse: float
    train_pflops_dense: float  # cumulative over rounds 0..round
    train_pflops_sparse: float
    round_pflops_paper: float | None = None
    train_pflops_paper: float | None = None
    # train.select_epoch=best_val only (the columns are absent otherwise): the round's epoch (1-based)
    # with the best validation accuracy (ties: the earlier), and that epoch's accuracies
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_test_acc: float | None = None
    # structured allocations only (absent otherwise): the fraction of output channels removed
    channel_sparsity: float | None = None
    # noise.probe > 0 only (absent otherwise): the probe samples scored on their flipped labels
    # (memorisation of the probe) and on their clean labels (docs/noise.md, "Memorisation probe")
    train_acc_probe: float | None = None
    probe_acc_clean: float | None = None

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], *, source: str | Path | None = None) -> RoundRow:
        """The row of a CSV or JSON mapping; keys that are not columns are ignored (a file
        written by a later version still loads)."""
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in row]
        if missing:
            raise UserError(
                f"{source or 'a rounds row'} lacks the column(s) {', '.join(missing)}: "
                "it was not written by dsd2 or is corrupt; resume the run to rewrite it"
            )
        values = {c: row[c] for c in ROUND_COLUMNS if c in row}
        bad = [c for c, v in values.items() if c != "phase" and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
        if bad:
            raise UserError(
                f"{source or 'a rounds row'} has non-numeric {', '.join(f'{c}={values[c]!r}' for c in bad)}: "
                "it was edited or is corrupt; `dsd2 resume RUN_DIR` rewrites rounds.csv from the checksummed round files"
            )
        wrong = [c for c, v in values.items() if c != "phase" and v is not None and not _plausible(c, v)]
        if wrong:
            raise UserError(
                f"{source or 'a rounds row'} has {', '.join(f'{c}={values[c]!r}' for c in wrong)}, which dsd2 never writes (NaN, "
                "infinite, negative, a fraction outside [0, 1] or a fractional count): it was edited or is corrupt; "
                "`dsd2 resume RUN_DIR` rewrites rounds.csv from the checksummed round files"
            )
        if values.get("phase") is not None and not isinstance(values["phase"], str):
            values["phase"] = str(values["phase"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Column → value, in file order (what ``rounds.csv`` and ``metrics.json`` store); the
        optional columns (best epoch, channel sparsity) only when the round has them, so a run
        that uses neither writes the files it wrote before they existed."""
        return {c: getattr(self, c) for c in self._columns()}

    def _columns(self) -> list[str]:
        return round_columns(self.best_epoch is not None, self.channel_sparsity is not None, self.train_acc_probe is not None)

    def __getitem__(self, column: str) -> Any:
        if column not in _COLUMN_SET:
            raise KeyError(column)
        return getattr(self, column)

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns())

    def __len__(self) -> int:
        return len(self._columns())


_INT_COLUMNS = frozenset({"round", "alive_weights", "epochs", "best_epoch"})


def _plausible(column: str, value: float) -> bool:
    """A value dsd2 can have written in ``column``: finite, non-negative, a whole count where
    the column counts, a fraction in [0, 1] where it is one (entropy and loss: any finite >= 0)."""
    if not math.isfinite(value) or value < 0:
        return False
    if column in _INT_COLUMNS:
        return float(value).is_integer()
    if column in FRACTION_COLUMNS:
        return value <= 1.0
    return True


# Columns of rounds.csv, in order: the fields of RoundRow, the one definition.
ROUND_COLUMNS: list[str] = [f.name for f in fields(RoundRow)]
BEST_COLUMNS = ("best_epoch", "best_val_acc", "best_test_acc")
CHANNEL_COLUMNS = ("channel_sparsity",)
PROBE_COLUMNS = ("train_acc_probe", "probe_acc_clean")
BEST_STATE = "best_state.safetensors"  # a round's best-validation weights (train.select_epoch=best_val)


def round_columns(best_epoch: bool, channels: bool = False, probe: bool = False) -> list[str]:
    """The columns rounds.csv has: the best-epoch ones only when the run keeps the best epoch,
    channel sparsity only with a structured allocation, the probe's only with noise.probe."""
    drop = (() if best_epoch else BEST_COLUMNS) + (() if channels else CHANNEL_COLUMNS) + (() if probe else PROBE_COLUMNS)
    return [c for c in ROUND_COLUMNS if c not in drop]


_COLUMN_SET = frozenset(ROUND_COLUMNS)
# Columns holding fractions (shown as percentages by reports).
FRACTION_COLUMNS = frozenset(c for c in ROUND_COLUMNS if c.endswith("_acc") or "_acc_" in c or c == "sparsity")
ENTROPY_COLUMNS = ["round", "sparsity", "layer", "neurons", "entropy"]
TIMING_COLUMNS = ["round", "wall_s", "train_s", "device", "lr_scale", "threads"]


def run_dir_for(cfg: RunConfig, out: str | Path) -> Path:
    """Where ``dsd2 run`` puts the run of ``cfg``: named by the config's hash, so the same command
    resumes the same directory (and a config asking more rounds extends it). A directory named
    by an earlier version's hash (``RunConfig.legacy_run_ids``) is still found and resumed."""
    path = Path(out) / cfg.run_id()
    try:
        if path.exists():
            return path
    except OSError as err:  # a folder name longer than the file system allows
        raise UserError(f"--out {str(out)[:200]}: {err.strerror or err}; give a shorter --out") from None
    legacy = [Path(out) / rid for rid in cfg.legacy_run_ids()]
    return next((p for p in legacy if p.is_dir()), None) or _older_run_to_extend(cfg, Path(out)) or path


def _older_run_to_extend(cfg: RunConfig, out: Path) -> Path | None:
    """A run of an earlier version with the same config but another prune.rounds: its id
    counted the rounds, so only its saved config can tell (read for this name's folders only)."""
    if not out.is_dir() or default_gradual_window(cfg):
        return None  # an earlier version's gradual run with this config pruned until the last epoch: other numbers
    for candidate in sorted(out.glob(f"{cfg.name}-*")):
        if not (candidate / CONFIG).is_file():
            continue
        try:
            saved = read_config(candidate)
        except UserError:
            continue
        if saved.run_id() == cfg.run_id() and saved.name == cfg.name:
            return candidate
    return None


def read_config(run_dir: str | Path, *, hint: str = "give the folder `dsd2 run` printed") -> RunConfig:
    """The resolved config of a run; a clear error (ending with ``hint``) when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a dsd2 run directory (no {CONFIG}); {hint}")
    return validate_config(store.read_yaml_file(path), source=str(path))


def with_overrides(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied: where and how it executes
    (:data:`~dsd2.config.EXECUTION_FIELDS`) and more rounds (an extension) are used; a setting
    that would change its numbers, or one its choices never read, is refused naming it."""
    from dsd2.config import EXECUTION_FIELDS, apply_overrides, differing_settings

    saved = read_config(run_dir)
    cfg = validate_config(apply_overrides(saved.resolved(), overrides), source="overrides")
    saved = moved_teachers_config(run_dir, saved, cfg)  # a teacher at its new place (a moved study): a location
    changed = differing_settings(saved, cfg)
    if changed:
        raise UserError(
            f"{', '.join(changed)} would change the numbers of the run in {run_dir}: start a new run with "
            f"`dsd2 run {Path(run_dir) / CONFIG} {' '.join(overrides)}`"
        )
    if cfg.name != saved.name:  # the folder is named after it: a run directory keeps its name
        raise UserError(
            f"name names the run directory {run_dir}, which keeps its name; to run these settings under another name "
            f"start a new run with `dsd2 run {Path(run_dir) / CONFIG} {' '.join(overrides)}`"
        )
    usable = {f"{s}.{k}" for s, k in EXECUTION_FIELDS} | {"prune.rounds"}
    saved_all, now_all = saved.resolved(), cfg.resolved()
    unread = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in usable and _dotted(saved_all, key) != _dotted(now_all, key):
            unread.append(key)
    if unread:
        raise UserError(
            f"{', '.join(unread)}: not read by the run in {run_dir} (an option of a choice it did not make, "
            "e.g. distill.* without a teacher): leave it out, or start a new run with that choice"
        )
    return cfg


def moved_teachers_config(run_dir: str | Path, saved: RunConfig, cfg: RunConfig) -> RunConfig:
    """``saved`` (the config of the student in ``run_dir``) naming its teachers where ``cfg`` names
    them, when those are the same teachers at another path (a moved or copied study): the same
    folder name (<name>-<hash>) and the config digest the student's recorded run id hash counted
    (schemes 5 on: each teacher's name and digest; the teacher's digest now, or one it had before
    its own location changes). A student of the scheme that hashed the teacher's path has no such
    record: the name must match (and the old path, if it still holds a run, hold this one); every
    start also checks the teacher's content against teacher.json (labels and round files,
    dsd2.distill.teacher.load_teacher) before anything is written. Another teacher is refused
    naming it. Without a move, ``saved`` as it is."""
    from dsd2.config.identity import config_hash, moved_teachers, teacher_identity, with_teachers_of

    moves = moved_teachers(saved, cfg)
    if not moves:
        return saved
    moved = with_teachers_of(saved, cfg)
    recorded = (read_meta(run_dir) if meta_path(run_dir).is_file() else {}).get("config_hash")
    by_id = recorded is None or recorded in _hashes_with_earlier_teachers(
        moved, [new for _, new in moves.values()]
    )  # None: nothing trained
    path_hashed = recorded == config_hash(saved, version=4)  # the scheme before: the teacher's path was hashed
    new_student = f"start a new student for it (`dsd2 run {Path(run_dir) / CONFIG} {{key}}={{new}}` makes another run directory)"
    for key, (old, new) in moves.items():
        now, before = teacher_identity(new), teacher_identity(old)
        if not isinstance(now, dict):
            raise UserError(f"{key}={new}: no dsd2 run there (no readable meta.json); give the folder its teacher run was moved to")
        if now["run"] != Path(old).name:
            raise UserError(
                f"{key}={new} is another teacher: run {now['run']}, while the student in {run_dir} learned from {Path(old).name}; "
                + new_student.format(key=key, new=new)
            )
        if not (by_id or (path_hashed and (not isinstance(before, dict) or before == now))):
            raise UserError(
                f"{key}={new}: run {now['run']} there is another curve than the teacher the student in {run_dir} learned from "
                "(its config digest differs: extended or retrained since); restore that teacher, or " + new_student.format(key=key, new=new)
            )
    return moved


def _hashes_with_earlier_teachers(cfg: RunConfig, paths: list[str]) -> set[str]:
    """The run id hashes (schemes 5 on) ``cfg`` has with each teacher at ``paths`` counted by its
    digest now or by one it had before a location change (a moved label file or teacher: its
    meta.json's execution_changes record the digest they replaced), not an extension's."""
    import itertools

    from dsd2.config.identity import ID_VERSION, config_hash, teacher_identity

    options = []
    for path in paths:
        now = teacher_identity(path)
        if not isinstance(now, dict):
            return set()
        options.append([now] + [{"run": now["run"], "digest": d} for d in _digests_before_moves(path, now["digest"])])
    return {
        config_hash(cfg, version=v, teachers=dict(zip(paths, combo, strict=True)))
        for combo in itertools.product(*options)
        for v in range(5, ID_VERSION + 1)
    }


def _digests_before_moves(run_dir: str | Path, digest: str) -> list[str]:
    """The digests the run in ``run_dir`` had for its current curve before location changes gave
    it ``digest``: its execution_changes followed back from ``digest`` while each one's ``to`` is the
    digest after it; an extension (recorded apart) breaks the chain, so a digest from before one,
    another curve, is never among them."""
    changes = read_meta(run_dir).get("execution_changes") if meta_path(run_dir).is_file() else None
    out: list[str] = []
    for change in reversed(changes if isinstance(changes, list) else []):
        moved = change.get("config_digest") if isinstance(change, dict) else None
        if not isinstance(moved, dict):
            continue  # threads, device, ...: the digest stayed
        if moved.get("to") != digest or not isinstance(moved.get("from"), str):
            break
        digest = moved["from"]
        out.append(digest)
    return out


def moved_note(cfg: RunConfig, run_dir: str | Path) -> str | None:
    """What ``cfg`` finds at another place than the run in ``run_dir`` recorded: its label file or
    teachers (said once the start has checked them: the label file's content against meta.json's
    fingerprint, a teacher's identity and round files), else None. Reusing a run is never silent."""
    from dsd2.config.identity import moved_teachers

    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        return None
    saved = read_config(path)
    parts = [f"{key} now {new} (was {old})" for key, (old, new) in moved_teachers(saved, cfg).items() if _place(new) != _place(old)]
    old_labels, labels = saved.dataset.label_file, cfg.dataset.label_file
    if old_labels and labels and _place(old_labels) != _place(labels):
        parts.append(f"dataset.label_file now {labels} (was {old_labels}; the same content, by its sha256)")
    return f"the same run, its data and teachers at a new place: {'; '.join(parts)} (meta.json execution_changes)" if parts else None


def _place(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _dotted(data: Any, key: str) -> Any:
    """The value at ``key`` ("train.lr", "seed", "model") in nested ``data``; None when absent."""
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def finished_note(cfg: RunConfig, run_dir: str | Path) -> str | None:
    """ "finished on <date>, N rounds; showing it" when ``run_dir`` already holds every round ``cfg``
    asks for (the date of its last round's manifest), else None: reusing a run is never silent."""
    path = Path(run_dir)
    done = finished_rounds(path) if path.is_dir() and (path / CONFIG).is_file() else []
    if not done or not is_complete(cfg, len(done), path):
        return None
    from datetime import UTC, datetime

    when = datetime.fromtimestamp((round_dir(path, done[-1]) / MANIFEST).stat().st_mtime, UTC)
    rounds = f"{done[-1]} round" + ("" if done[-1] == 1 else "s")
    return f"finished on {when:%Y-%m-%d %H:%M} UTC, {rounds}; showing it"


EARLY_STOP = "early_stop.json"


def stopped_at(run_dir: str | Path) -> int | None:
    """The round at which the run's online early-stop rule ended it (None: it did not)."""
    path = Path(run_dir) / EARLY_STOP
    if not path.is_file():
        return None
    return store.read_json(path, EarlyStop).stop_round


FLOOR_STOP = "floor_stop.json"


def floor_stopped_at(run_dir: str | Path) -> int | None:
    """The last round of a run whose next round the channel floor (prune.min_channels) left
    nothing to prune (None: it did not happen). Its curve ends there: no later round can exist."""
    path = Path(run_dir) / FLOOR_STOP
    if not path.is_file():
        return None
    return store.read_json(path, FloorStop).stop_round


def is_complete(cfg: RunConfig, done: int, run_dir: str | Path) -> bool:
    """Every configured round is finished (``done`` of them), or the early-stop rule or the
    channel floor ended the run."""
    if done >= cfg.prune.rounds + 1:
        return True
    if cfg.early_stop.rule != "none" and done > 0 and stopped_at(run_dir) is not None:
        return True
    floor = floor_stopped_at(run_dir) if done > 0 else None
    return floor is not None and done > floor


NOISE = "noise.json"


def read_noise(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``noise.json`` (the noise asked for, realised rate, per-class flip rates,
    confusion counts: docs/noise.md), or None for a run started before it was written."""
    path = Path(run_dir) / NOISE
    if not path.is_file():
        return None
    return store.read_json_dict(path, NoiseInfo)


TABLE_SUMS = "tables.sha256.json"


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


def check_round_order(rows: list[RoundRow], source: str | Path) -> None:
    """Rows of finished rounds are rounds 0, 1, 2, ... in order (dsd2 writes nothing else)."""
    numbers = [int(r.round) for r in rows]
    if numbers != list(range(len(rows))):
        raise UserError(
            f"{source} lists rounds {numbers[:8]}{'...' if len(numbers) > 8 else ''}, not 0, 1, 2, ... in order (duplicated, "
            "missing or reordered rows): it was edited or is corrupt; `dsd2 resume RUN_DIR` rewrites it"
        )


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
    masks = store.load_tensors(round_masks_path(run_dir, round_idx))
    return model.to(device), {k: v.to(device) for k, v in masks.items()}, cfg
