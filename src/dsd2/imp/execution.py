"""Where and how a run executes: its device and the CPU threads it uses (``train.threads``)."""

from __future__ import annotations

import torch
from torch import nn

from dsd2 import distributed
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.flops import step_flops
from dsd2.threads import Share, resolve_threads
from dsd2.train import Source


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def set_threads(
    cfg: RunConfig,
    device: torch.device,
    model: nn.Module,
    batches: Source,
    teacher: nn.Module | None,
    loader_workers: int = 0,
    share: Share = Share(),
) -> int:
    """Apply ``train.threads`` (README, "Performance"): an integer as given; ``auto`` on CPU by the rule
    of :mod:`dsd2.threads` (from the FLOPs of one training step, less the image loader's workers, and
    ``share``: the runs side by side in this process's launch and their thread cap);
    ``auto`` on CUDA keeps torch's default for the CPU side. Returns the thread count in use."""
    if isinstance(cfg.train.threads, int):
        torch.set_num_threads(cfg.train.threads)
    elif device.type == "cpu":
        step = step_flops(model, batches.example(2), teacher=teacher)
        w = distributed.world()
        if w.distributed:  # the ranks on this node share its cores, each with its slice of the batch
            per_rank = step.dense_per_example * cfg.train.batch_size / w.size
            choice = resolve_threads(per_rank, share=Share(w.local_size), loader_workers=loader_workers)
        else:
            choice = resolve_threads(step.dense_per_example * cfg.train.batch_size, share=share, loader_workers=loader_workers)
        torch.set_num_threads(choice.threads)
    return torch.get_num_threads()
