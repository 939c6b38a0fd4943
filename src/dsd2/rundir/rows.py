"""One row of ``rounds.csv`` (:class:`RoundRow`) and the columns of the run's tables."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from dsd2.errors import UserError


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


def check_round_order(rows: list[RoundRow], source: str | Path) -> None:
    """Rows of finished rounds are rounds 0, 1, 2, ... in order (dsd2 writes nothing else)."""
    numbers = [int(r.round) for r in rows]
    if numbers != list(range(len(rows))):
        raise UserError(
            f"{source} lists rounds {numbers[:8]}{'...' if len(numbers) > 8 else ''}, not 0, 1, 2, ... in order (duplicated, "
            "missing or reordered rows): it was edited or is corrupt; `dsd2 resume RUN_DIR` rewrites it"
        )
