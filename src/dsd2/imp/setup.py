"""Starting a run: :func:`start` checks the run directory, builds the run (:mod:`.build`), records
its files (:mod:`.record`) and gives the :class:`RunContext` every round shares; :func:`prepare`
does the same but for config.yaml and meta.json. The run-directory checks are in :mod:`.checks`,
device and threads in :mod:`.execution`, the divergence retry in :mod:`.retry`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dsd2 import distributed
from dsd2.config import RunConfig
from dsd2.data import DataSplits, ImageLoader
from dsd2.data.scans import one_scan
from dsd2.distill.setup import Teaching
from dsd2.imp.build import Built, build, build_data, noisy_labels, round_seed, seeded_generator
from dsd2.imp.checks import check_config_matches, checked_content, checked_fingerprint
from dsd2.imp.record import record_config, record_meta, record_run_files
from dsd2.imp.retry import lr_scale_for
from dsd2.noise import NoisyLabels
from dsd2.threads import Share
from dsd2.train import Objective, Source, make_source

# build_data, check_config_matches, lr_scale_for, noisy_labels, round_seed and seeded_generator
# stay importable from here, where they lived before the split (dsd2.fused and older callers)
__all__ = [
    "RunContext",
    "build_data",
    "check_config_matches",
    "context",
    "lr_scale_for",
    "noisy_labels",
    "prepare",
    "round_seed",
    "seeded_generator",
    "start",
]


@dataclass(frozen=True)
class RunContext:
    """What every round of a run shares: config, data, model, batches. Nothing rewrites it: what
    changes between rounds (self-distillation's teacher) is passed to each round as its
    :class:`~dsd2.distill.setup.Teaching`."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    data: DataSplits
    labels: NoisyLabels
    model: nn.Module
    weights: dict[str, nn.Parameter]
    train_batches: Source
    objective: Objective  # the objective of a round whose teaching brings none of its own (objective_with)
    teaching: Teaching | None  # what the run starts with: its teachers (None without distillation)
    threads: int | None = None  # torch CPU threads this process uses (recorded per round in timings.csv)
    images: ImageLoader | None = None  # a streamed image folder's loader workers, shared by every pass
    _splits: dict[str, Source] = field(default_factory=dict, repr=False)  # a cache, filled by split()

    def objective_with(self, teaching: Teaching | None) -> Objective:
        """The training objective of a round taught by ``teaching``."""
        return teaching.objective if teaching is not None and teaching.objective is not None else self.objective

    def split(self, name: str) -> Source:
        """The ``val`` or ``test`` split as a :class:`~dsd2.train.Source`, made once per run: its
        tensors go to the device once, and every evaluation (rounds, best epoch) reads them."""
        if name not in self._splits:
            d, tb = self.data, self.train_batches
            x, y = (d.val_x, d.val_y) if name == "val" else (d.test_x, d.test_y)
            self._splits[name] = make_source(
                x, y, mean=d.mean, std=d.std, device=self.device, channels_last=tb.channels_last, loader=self.images
            )
        return self._splits[name]

    def close(self) -> None:
        """Stop the loader workers of a streamed image folder (nothing to do otherwise)."""
        if self.images is not None:
            self.images.close()


def context(cfg: RunConfig, run_dir: Path, built: Built) -> RunContext:
    """The context every round of the built run shares."""
    b = built
    return RunContext(
        cfg, run_dir, b.device, b.data, b.labels, b.model, b.weights, b.train_batches, b.objective, b.teaching, b.threads, images=b.images
    )


def prepare(cfg: RunConfig, run_dir: Path, share: Share = Share()) -> RunContext:
    """Build the run and write its files but config.yaml and meta.json (:func:`start` writes all)."""
    built = build(cfg, run_dir, share)
    record_run_files(run_dir, cfg, built)
    return context(cfg, run_dir, built)


def start(cfg: RunConfig, run_dir: Path, share: Share = Share()) -> RunContext:
    """The run's context (``share``: see :func:`set_threads`): the data is checked against the
    fingerprint meta.json recorded, the run built, then its files recorded, meta.json last (a
    change of where or how the run executes goes there: :func:`record_execution`)."""
    with one_scan():  # the fingerprint checks the very file list the loader then reads: the folder is listed once
        fingerprint = checked_fingerprint(cfg, run_dir) if distributed.is_main() else {}
        built = build(cfg, run_dir, share)
    if distributed.is_main():  # what was loaded, before anything is written
        fingerprint = {**fingerprint, **checked_content(cfg, run_dir, built.data)}
    record_config(run_dir, cfg)
    record_run_files(run_dir, cfg, built)
    record_meta(run_dir, cfg, built.data, fingerprint)
    return context(cfg, run_dir, built)
