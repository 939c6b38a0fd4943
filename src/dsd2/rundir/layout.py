"""The run directory's file names and one path function per file (as OpenLTH's paths.py): readers
name the file they want by function, and this module is the one place that spells it."""

from __future__ import annotations

from pathlib import Path

from dsd2 import store
from dsd2.store import round_dir

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
BEST_STATE = "best_state.safetensors"  # a round's best-validation weights (train.select_epoch=best_val)
EARLY_STOP = "early_stop.json"
FLOOR_STOP = "floor_stop.json"
NOISE = "noise.json"
TABLE_SUMS = "tables.sha256.json"


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
