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

This package reads; the round loop (:mod:`dsd2.imp`) writes. It sits below ``imp`` and
``distill``, which both load a round's model from here. Its modules, by concern: ``layout`` (the
file names and their path functions), ``rows`` (:class:`RoundRow` and the tables' columns),
``read`` (config, meta.json, tables, finished rounds, a round's model), ``status`` (where a
config's run lives, whether it is complete), ``moved`` (other execution settings, a moved study).
Every public name is importable from ``dsd2.rundir``.
"""

from dsd2.rundir.layout import (
    BEST_STATE,
    CONFIG,
    EARLY_STOP,
    ENTROPY_CSV,
    FLOOR_STOP,
    INIT,
    LABELS,
    LR_SCALE,
    MASKS,
    META,
    METRICS,
    NOISE,
    REWIND,
    ROUND_FILES,
    ROUNDS_CSV,
    STATE,
    TABLE_SUMS,
    TEACHER,
    TIMINGS_CSV,
    best_state_path,
    config_path,
    early_stop_path,
    entropy_csv_path,
    floor_stop_path,
    init_path,
    labels_path,
    lr_scale_path,
    meta_path,
    noise_path,
    rewind_path,
    round_masks_path,
    round_metrics_path,
    round_state_path,
    rounds_csv_path,
    table_sums_path,
    teacher_path,
    timings_csv_path,
)
from dsd2.rundir.moved import moved_note, moved_teachers_config, with_overrides
from dsd2.rundir.read import (
    BUILDER_DATA_KEYS,
    META_HINT,
    Finished,
    load_masks,
    load_round_model,
    load_state,
    read_config,
    read_finished,
    read_meta,
    read_noise,
    read_rounds,
    read_table,
    record_tables,
    saved_data_shape,
)
from dsd2.rundir.rows import (
    BEST_COLUMNS,
    CHANNEL_COLUMNS,
    ENTROPY_COLUMNS,
    FRACTION_COLUMNS,
    PROBE_COLUMNS,
    ROUND_COLUMNS,
    TIMING_COLUMNS,
    RoundRow,
    check_round_order,
    round_columns,
)
from dsd2.rundir.status import classifier_default_note, finished_note, floor_stopped_at, is_complete, run_dir_for, stopped_at

# Finished rounds are the manifest-checked round folders; the rule lives with the checksums.
from dsd2.store import MANIFEST, finished_rounds, round_dir

__all__ = [
    "BEST_COLUMNS",
    "BEST_STATE",
    "BUILDER_DATA_KEYS",
    "CHANNEL_COLUMNS",
    "CONFIG",
    "EARLY_STOP",
    "ENTROPY_COLUMNS",
    "ENTROPY_CSV",
    "FLOOR_STOP",
    "FRACTION_COLUMNS",
    "INIT",
    "LABELS",
    "LR_SCALE",
    "MANIFEST",
    "MASKS",
    "META",
    "META_HINT",
    "METRICS",
    "NOISE",
    "PROBE_COLUMNS",
    "REWIND",
    "ROUNDS_CSV",
    "ROUND_COLUMNS",
    "ROUND_FILES",
    "STATE",
    "TABLE_SUMS",
    "TEACHER",
    "TIMINGS_CSV",
    "TIMING_COLUMNS",
    "Finished",
    "RoundRow",
    "best_state_path",
    "check_round_order",
    "classifier_default_note",
    "config_path",
    "early_stop_path",
    "entropy_csv_path",
    "finished_note",
    "finished_rounds",
    "floor_stop_path",
    "floor_stopped_at",
    "init_path",
    "is_complete",
    "labels_path",
    "load_masks",
    "load_round_model",
    "load_state",
    "lr_scale_path",
    "meta_path",
    "moved_note",
    "moved_teachers_config",
    "noise_path",
    "read_config",
    "read_finished",
    "read_meta",
    "read_noise",
    "read_rounds",
    "read_table",
    "record_tables",
    "rewind_path",
    "round_columns",
    "round_dir",
    "round_masks_path",
    "round_metrics_path",
    "round_state_path",
    "rounds_csv_path",
    "run_dir_for",
    "saved_data_shape",
    "stopped_at",
    "table_sums_path",
    "teacher_path",
    "timings_csv_path",
    "with_overrides",
]
