"""The IMP round loop: glue of data, noise, model, training, pruning, measures and the run directory.

Round 0 trains the dense network; round i >= 1 prunes ``prune.rate`` of the remaining weights of
round i-1's weights, resets them according to ``prune.retrain`` and trains again. Every round
gets its own seeded generator, so resuming after a kill reproduces exactly the rows an
uninterrupted run would have written (on CPU).

A round is five named steps, as in OpenLTH's runner: :func:`prune_step` → :func:`reset_weights`
→ :func:`train_round` → :func:`measure` → :func:`save_round` (:func:`run_round` chains them).
What runs alongside without changing the numbers (progress, the late-rewind snapshot,
TensorBoard, the caller's ``on_round``) is a list of :class:`Hook`; the best-validation epoch
(``train.select_epoch=best_val``) changes the row and the files, so it is part of
:func:`train_round`. The files and the row they write are the contract of :mod:`dsd2.rundir`.

The package, one job a module, imports flowing one way: :mod:`.execution` (device, threads) →
:mod:`.build` (seeds, data, labels, model: the run built without writing) → :mod:`.record` (its
run-directory files, one record step each), :mod:`.checks` (the run directory against the
config), :mod:`.retry` (lr scale, round restart) → :mod:`.setup` (:func:`start`,
:class:`RunContext`) → :mod:`.measure` (accuracies, entropy, compute) → :mod:`.best_epoch` →
:mod:`.hooks` → :mod:`.modes` (retraining modes, pruning schedules) → :mod:`.loop` (the rounds,
:func:`run`, :func:`resume`). The names below are its interface.
"""

from dsd2.imp.best_epoch import BestEpoch
from dsd2.imp.build import build_data, data_seed, init_seed, make_model, noisy_labels, round_seed, state_dict_cpu
from dsd2.imp.execution import resolve_device, set_threads
from dsd2.imp.hooks import EpochProgress, Hook, RewindSnapshot, RoundDone, TensorBoard, make_hooks
from dsd2.imp.loop import Rounds, resume, resume_rounds, run, run_round, save_round, stop_decision, train_round, write_tables
from dsd2.imp.measure import measure, predict_classes
from dsd2.imp.modes import (
    FINETUNE,
    LATE_REWIND,
    LOTTERY,
    LR_REWIND,
    REINIT,
    RetrainMode,
    gmp_sparsity,
    gradual_schedule,
    gradual_step,
    iterative_schedule,
    masked_tensors,
    one_shot_schedule,
    prune_step,
    reset_weights,
    schedule_for,
    target_sparsity,
)
from dsd2.imp.record import data_meta, run_metadata
from dsd2.imp.retry import restart_round, set_lr_scale
from dsd2.imp.setup import RunContext, prepare, start

# Kept importable here for the sweep and older callers; their home is dsd2.rundir / dsd2.train.
from dsd2.rundir import ROUND_COLUMNS, RoundRow, load_round_model, load_state, run_dir_for
from dsd2.train import make_source

__all__ = [
    "FINETUNE",
    "LATE_REWIND",
    "LOTTERY",
    "LR_REWIND",
    "REINIT",
    "ROUND_COLUMNS",
    "BestEpoch",
    "EpochProgress",
    "Hook",
    "RetrainMode",
    "RewindSnapshot",
    "RoundDone",
    "RoundRow",
    "Rounds",
    "RunContext",
    "TensorBoard",
    "build_data",
    "data_meta",
    "data_seed",
    "gmp_sparsity",
    "gradual_schedule",
    "gradual_step",
    "init_seed",
    "iterative_schedule",
    "load_round_model",
    "load_state",
    "make_hooks",
    "make_model",
    "make_source",
    "masked_tensors",
    "measure",
    "noisy_labels",
    "one_shot_schedule",
    "predict_classes",
    "prepare",
    "prune_step",
    "reset_weights",
    "resolve_device",
    "restart_round",
    "resume",
    "resume_rounds",
    "round_seed",
    "run",
    "run_dir_for",
    "run_metadata",
    "run_round",
    "save_round",
    "schedule_for",
    "set_lr_scale",
    "set_threads",
    "start",
    "state_dict_cpu",
    "stop_decision",
    "target_sparsity",
    "train_round",
    "write_tables",
]
