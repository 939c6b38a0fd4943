"""Shared settings of the test suite: the tiny run every end-to-end test starts from.

A tiny run is the `tiny_mnist1d` preset (an MLP on locally generated MNIST-1D) cut to seconds:
one epoch, two pruning rounds that halve the weights, a 16-16 hidden layer, 300 validation
samples. Tests add their own overrides after these (later overrides win).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dsd2.config import RunConfig, load_config

TINY = ["train.epochs=1", "prune.rounds=2", "prune.rate=0.5", "model.hidden=[16, 16]", "dataset.val_size=300"]


def tiny_config(*extra: str) -> RunConfig:
    """The tiny run's config with ``extra`` overrides applied last."""
    return load_config("tiny_mnist1d", TINY + list(extra))


@pytest.fixture(scope="session")
def tiny():
    """Factory fixture: ``tiny("seed=1", ...)`` gives the tiny run's config with overrides."""
    return tiny_config


def write_mnist1d_label_file(path: Path, flip_every: int = 3):
    """A CIFAR-N style label file for the tiny run's data (mnist1d, 300 validation samples):
    ``clean_label`` and ``worse_label`` (every ``flip_every``-th label shifted by one), numpy
    arrays over train+val as the CIFAR-N files hold them. Returns (the dataset, worse_label)."""
    import numpy as np
    import torch

    from dsd2.data import load_dataset

    d = load_dataset("mnist1d", None, val_size=300, seed=0)
    n = d.train_idx.numel() + d.val_idx.numel()
    clean = np.empty(n, dtype=np.int64)
    clean[d.train_idx.numpy()] = d.train_y.numpy()
    clean[d.val_idx.numpy()] = d.val_y.numpy()
    worse = clean.copy()
    worse[::flip_every] = (worse[::flip_every] + 1) % 10
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"clean_label": clean, "worse_label": worse}, path)
    return d, worse


class Interrupted(Exception):
    """Raised from a run's on_round callback to stop it as a crash would, between rounds."""


def run_interrupted(cfg: RunConfig, out: Path, after_round: int = 1) -> Path:
    """Run ``cfg`` under ``out`` and stop it once round ``after_round`` is saved; its run directory."""
    from dsd2 import imp

    def stop(row) -> None:
        if row["round"] == after_round:
            raise Interrupted

    with pytest.raises(Interrupted):
        imp.run(cfg, out, on_round=stop)
    return Path(out) / cfg.run_id()
