"""One readable training function and batched evaluation (airbench style).

The whole split lives on the device as uint8 (or float) tensors; each step gathers a batch by
index, augments it on the device in one batched op, normalises it, and runs the model. There is
no per-sample Python and no ``.item()`` in the hot loop: losses accumulate on the device and are
read once per epoch, where NaN/Inf are also detected.

A streamed image folder (docs/data.md) is the other :class:`Source`: :class:`StreamBatches`
gets its uint8 batches from DataLoader workers, which decode and augment each image; labels
stay a device tensor indexed by the batch's rows, as for the resident :class:`Batches`.

The loss is a strategy passed in (``Objective``): cross-entropy for vanilla IMP, the KD loss for
DSD² students. Masks are re-applied after every optimiser step.

The pieces: :mod:`~dsd2.train.losses`, :mod:`~dsd2.train.schedule` (optimiser and lr),
:mod:`~dsd2.train.sources` (resident or streamed batches), :mod:`~dsd2.train.loop` (:func:`train`)
and :mod:`~dsd2.train.evaluate`; every public name is importable from :mod:`dsd2.train`.
"""

from .evaluate import accuracy, autocast_for, logits_of, predict
from .loop import EpochLog, TrainingDiverged, train
from .losses import Objective, SoftTargets, cross_entropy
from .schedule import (
    Schedule,
    adam_optimizer,
    adamw_optimizer,
    constant_lr,
    cosine_lr,
    make_optimizer,
    multistep_lr,
    sgd_optimizer,
)
from .sources import RESIDENT_SHARE, Batches, Source, StreamBatches, check_resident_fits, free_device_bytes, make_source

__all__ = [
    "RESIDENT_SHARE",
    "Batches",
    "EpochLog",
    "Objective",
    "Schedule",
    "SoftTargets",
    "Source",
    "StreamBatches",
    "TrainingDiverged",
    "accuracy",
    "adam_optimizer",
    "adamw_optimizer",
    "autocast_for",
    "check_resident_fits",
    "constant_lr",
    "cosine_lr",
    "cross_entropy",
    "free_device_bytes",
    "logits_of",
    "make_optimizer",
    "make_source",
    "multistep_lr",
    "predict",
    "sgd_optimizer",
    "train",
]
