"""One IMP run data-parallel over several processes (docs/distributed.md).

A launcher (``torchrun``, SLURM's ``srun`` with the variables exported, ...) starts one process
per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`session` joins the process group they describe (NCCL on CUDA, gloo on CPU) for the
length of a run. Without those variables, or with ``WORLD_SIZE=1``, every helper here is a
no-op that touches no tensor, so the one-process path is unchanged.

How the work is split is decided here in pure functions (:func:`shard_bounds`,
:func:`step_rows`): contiguous slices, sizes differing by at most one, like
``torch.tensor_split``, so the union of the ranks' rows is exactly the one-process batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dsd2.errors import UserError

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank, number of processes, rank on its node, backend."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    local_size: int = 1  # processes on this node (they share its CPU cores)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()
_world = SINGLE


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"the environment variable {name}={raw!r} is not an integer (set by the launcher, e.g. torchrun)") from None


# A sanity bound on the launcher's variables: a typo must not become a job of a million processes.
MAX_WORLD_SIZE = 4096
# How long the processes of a job wait for each other to join (torch's default is 30 minutes,
# with a message that does not say who is missing). DSD2_DDP_JOIN_TIMEOUT_S overrides it.
JOIN_TIMEOUT_S = 300.0


def _master() -> tuple[str, int]:
    """MASTER_ADDR and MASTER_PORT, checked (a port is an integer in 1..65535)."""
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UserError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (torchrun sets them; with another launcher, export them)")
    addr, raw = os.environ["MASTER_ADDR"].strip(), os.environ["MASTER_PORT"].strip()
    if not addr or len(addr) > 253 or not addr.isascii() or any(c.isspace() for c in addr):
        raise UserError(f"MASTER_ADDR={addr[:80]!r} is not a host name or address: set it to the address of the rank-0 node")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 65535):
        raise UserError(
            f"MASTER_PORT={raw[:80]!r} is not a port number (an integer from 1 to 65535): set it to a free port of the rank-0 node"
        )
    return addr, int(raw)


def _join_timeout() -> float:
    raw = os.environ.get("DSD2_DDP_JOIN_TIMEOUT_S", "")
    if raw == "":
        return JOIN_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:
        raise UserError(f"DSD2_DDP_JOIN_TIMEOUT_S={raw[:80]!r} must be a number of seconds in (0, 86400]")
    return value


def _init_group(backend: str, w: World) -> None:
    """Join the job's process group, waiting at most :func:`_join_timeout` seconds for the other
    processes (then a UserError saying so, instead of torch's 30 minutes of silence)."""
    from datetime import timedelta

    addr, port = _master()
    wait = _join_timeout()
    # under torchrun the agent hosts the store at MASTER_ADDR:MASTER_PORT: every rank is a client
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    try:
        store = dist.TCPStore(
            addr, port, w.size, is_master=w.rank == 0 and not agent_store, timeout=timedelta(seconds=wait), wait_for_workers=True
        )
        dist.init_process_group(backend=backend, store=store, rank=w.rank, world_size=w.size)
    except (RuntimeError, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UserError(
            f"process {w.rank} of {w.size} could not join the job at {addr}:{port} within {wait:g} s ({first}): start every "
            "process of the job (torchrun --nproc_per_node), check MASTER_ADDR/MASTER_PORT, or raise DSD2_DDP_JOIN_TIMEOUT_S"
        ) from None
    store.set_timeout(timedelta(minutes=30))  # joined: later waits (a long evaluation on rank 0) keep torch's default


def env_world() -> World:
    """The world the launcher's environment variables describe (no backend chosen yet)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process of the job (need 0 <= RANK < WORLD_SIZE)")
    if size > MAX_WORLD_SIZE:
        raise UserError(f"WORLD_SIZE={size} is more processes than dsd2 runs a job with (at most {MAX_WORLD_SIZE}); check the launcher")
    if not 0 <= local < max(1, local_size) or local_size > size:
        raise UserError(
            f"LOCAL_RANK={local} and LOCAL_WORLD_SIZE={local_size} do not describe a process of the job (need 0 <= LOCAL_RANK < "
            f"LOCAL_WORLD_SIZE <= WORLD_SIZE={size})"
        )
    return World(rank, size, local, local_size=max(1, local_size))


def world() -> World:
    """The world of the running session (one process outside :func:`session`)."""
    return _world


def is_main() -> bool:
    return _world.main


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


@contextmanager
def session(device_type: str) -> Iterator[World]:
    """Join the launcher's process group for the duration (a no-op for one process).

    A group the caller already initialised is used as it is and left open."""
    global _world
    w = env_world()
    if w.size == 1:
        yield SINGLE
        return
    own = not dist.is_initialized()
    backend = backend_for(device_type)
    if device_type == "cuda":
        if w.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK={w.local_rank} but this node has {torch.cuda.device_count()} CUDA device(s): start at most "
                "one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(w.local_rank)
    if own:
        _init_group(backend, w)
    _world = World(dist.get_rank(), dist.get_world_size(), w.local_rank, dist.get_backend(), w.local_size)
    try:
        yield _world
    finally:
        _world = SINGLE
        if own:
            dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under a CUDA job, else ``device``."""
    if _world.distributed and device.type == "cuda":
        return torch.device("cuda", _world.local_rank)
    return device


def _comm_device() -> torch.device:
    return torch.device("cuda", _world.local_rank) if _world.backend == "nccl" else torch.device("cpu")


# ----------------------------------------------------------------------------- splitting the work


def shard_bounds(count: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``count`` that ``rank`` of ``size`` takes: contiguous, the first
    ``count % size`` ranks one more (as ``torch.tensor_split``)."""
    base, extra = divmod(count, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def step_rows(count: int, rank: int, size: int) -> tuple[int, int, int]:
    """``(lo, hi, real)`` of one training step of ``count`` rows: the slice a rank computes and
    how many of them count. A rank whose share is empty (a last batch smaller than the world)
    still runs one row, weighted 0, so every rank takes part in the gradient all-reduce."""
    lo, hi = shard_bounds(count, rank, size)
    if hi > lo:
        return lo, hi, hi - lo
    return 0, 1, 0


def check_global_batch(batch_size: int, size: int) -> int:
    """The per-rank batch of a global ``batch_size`` split over ``size`` processes."""
    if batch_size % size:
        raise UserError(
            f"train.batch_size={batch_size} is the global batch of all {size} processes and must be divisible by their "
            f"number: use a multiple of {size} (e.g. {max(size, batch_size // size * size)}), or start another number of processes"
        )
    return batch_size // size


# ----------------------------------------------------------------------------- collectives


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel under a job (gradients averaged over the ranks), else itself."""
    if not _world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over the ranks, in place (``t`` itself for one process)."""
    if _world.distributed:
        buf = t.to(_comm_device())
        dist.all_reduce(buf)
        if buf is not t:
            t.copy_(buf)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if _world.distributed:
        buf = t.to(_comm_device())
        dist.all_reduce(buf, op=dist.ReduceOp.MIN)
        if buf is not t:
            t.copy_(buf)
    return t


def barrier() -> None:
    """Wait for every rank (an all-reduce: works on every backend without naming devices)."""
    if _world.distributed:
        all_reduce_sum(torch.zeros(1, device=_comm_device()))


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not _world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only; None elsewhere. When it raises, every rank raises (rank 0 its
    own error, the others a UserError quoting it) instead of waiting forever for rank 0."""
    if not _world.distributed:
        return fn()
    result: T | None = None
    error: BaseException | None = None
    if _world.main:
        try:
            result = fn()
        except BaseException as err:
            error = err
    failed = broadcast_object(None if error is None else f"{error}")
    if error is not None:
        raise error
    if failed is not None:
        raise UserError(f"rank 0 stopped: {failed}")
    return result


def check_same(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise on every rank unless each tensor equals rank 0's (bit for bit)."""
    if not _world.distributed:
        return
    bad: list[str] = []
    for name, t in tensors.items():
        mine = t.detach().to(_comm_device()).contiguous()
        if mine.dtype == torch.bool:  # gloo broadcasts no bool tensors
            mine = mine.to(torch.uint8)
        theirs = mine.clone()
        dist.broadcast(theirs, src=0)
        if not torch.equal(mine, theirs):
            bad.append(name)
    flags = torch.tensor([float(len(bad))], device=_comm_device())
    all_reduce_sum(flags)
    if flags.item() > 0:
        detail = f" (on rank {_world.rank}: {', '.join(bad[:3])})" if bad else ""
        raise RuntimeError(f"the ranks disagree on the {what}{detail}: the replicas drifted apart; the run stops")


def describe(batch_size: int) -> dict[str, Any]:
    """meta.json's "distributed": how the run was split (only under a job)."""
    return {
        "world_size": _world.size,
        "global_batch": batch_size,
        "per_rank_batch": batch_size // _world.size,
        "backend": _world.backend,
    }
