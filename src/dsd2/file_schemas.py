"""Typed schemas of the JSON files dsd2 writes and reads back (read through :mod:`dsd2.safe_read`).

Each says what a reader relies on: the keys it indexes and their types, numbers bounded by what
dsd2 can have written. Keys a reader does not use may be absent or added by later versions
(``extra="allow"``), except where a missing key would switch a check off: those are required
(fail closed). The readers of each file use these; nothing else parses it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, field_validator

# Bounds from what the data and models can be: dsd2 never writes more classes, channels or pixels.
MAX_CLASSES = 100_000
MAX_CHANNELS = 4096
MAX_SIDE = 16_384
MAX_ROUNDS = 10_000

Count = Annotated[StrictInt, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(max_length=4096)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class DataShape(_Open):
    """meta.json's "data": what a model builder needs, and the data's description."""

    num_classes: Annotated[StrictInt, Field(ge=1, le=MAX_CLASSES)]
    in_channels: Annotated[StrictInt, Field(ge=1, le=MAX_CHANNELS)]
    input_size: Annotated[StrictInt, Field(ge=1, le=MAX_SIDE)]
    input_shape: list[Annotated[StrictInt, Field(ge=1, le=MAX_SIDE * MAX_SIDE)]] | None = Field(default=None, max_length=8)
    mean: list[float] | None = Field(default=None, max_length=MAX_CHANNELS)
    std: list[float] | None = Field(default=None, max_length=MAX_CHANNELS)
    class_names: list[ShortText] | None = Field(default=None, max_length=MAX_CLASSES)
    loader: ShortText | None = None
    files_sha256: ShortText | None = None


class Meta(_Open):
    """meta.json. ``config_digest`` is checked by :func:`require_digest` where a resume relies on it."""

    seed: StrictInt | None = None
    config_hash: ShortText | None = None
    config_digest: ShortText | None = None
    data: DataShape | None = None
    extensions: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_ROUNDS)
    distributed: dict[str, Any] | None = None


class Manifest(BaseModel):
    """A round folder's MANIFEST.json: plain file names (no path) → sha256."""

    model_config = ConfigDict(extra="allow")  # a later version may add keys; the files are what is checked
    files: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")], Sha256] = Field(max_length=64)

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, str]) -> dict[str, str]:
        if any(n in (".", "..") for n in files):
            raise ValueError("file names must be plain names inside the folder")
        return files


class TableSums(RootModel[dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")], Sha256]]):
    """tables.sha256.json: table name → sha256 of the file as dsd2 wrote it."""


class TeacherInfo(_Open):
    """One teacher of teacher.json (a student run): where it was, which round, its fingerprint
    (optional here, for reports of students older than it; a resume requires it)."""

    run_dir: ShortText
    choice: ShortText | StrictInt
    round: Annotated[StrictInt, Field(ge=0, le=MAX_ROUNDS)]
    selected_on: ShortText | None = None
    sparsity: float
    digest: Sha256 | None = None
    weight: float | None = None


class SelfTeacher(_Open):
    """teacher.json of a self-distilled run."""

    self: bool


class LrStep(BaseModel):
    from_round: Annotated[StrictInt, Field(ge=0, le=MAX_ROUNDS)]
    scale: Annotated[float, Field(gt=0.0, le=1.0)]


class LrScale(_Open):
    """lr_scale.json: from which round on which factor multiplies the configured lr."""

    history: list[LrStep] = Field(max_length=MAX_ROUNDS)


class RoundMetrics(_Open):
    """A round's metrics.json: the rounds.csv row, per-layer entropy rows, the timing row."""

    row: dict[ShortText, Any]
    entropy_layers: list[dict[ShortText, Any]] = Field(max_length=1_000_000)
    timing: dict[ShortText, Any]


class EarlyStop(_Open):
    rule: ShortText | None = None
    stop_round: Annotated[StrictInt, Field(ge=0, le=MAX_ROUNDS)] | None = None


class FloorStop(_Open):
    stop_round: Annotated[StrictInt, Field(ge=0, le=MAX_ROUNDS)]
    min_channels: Annotated[StrictInt, Field(ge=0)] | None = None


class SweepCell(_Open):
    name: ShortText = ""
    status: ShortText | None = None
    params: dict[str, Any] | None = None
    run_dir: ShortText | None = None
    teacher_dir: ShortText | None = None
    error: ShortText | None = None


class SweepInfo(_Open):
    """sweep.json as the sweep report reads it."""

    spec: dict[str, Any] = Field(default_factory=dict)
    cells: list[SweepCell] = Field(default_factory=list, max_length=100_000)
    counts: dict[str, Any] = Field(default_factory=dict)


class NoiseInfo(_Open):
    """noise.json: the noise asked for and what it did (readers only show it)."""

    kind: ShortText | None = None


def finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TeacherFile(RootModel[SelfTeacher | TeacherInfo | list[TeacherInfo]]):
    """teacher.json: one teacher (a mapping), several (a list), or self-distillation."""
