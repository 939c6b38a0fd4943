"""Where tasks run: one small interface, an in-process backend and a Ray backend.

A backend takes tasks (``submit``), hands back finished attempts one at a time (``wait``),
drops what is in flight (``cancel``) and releases what it started (``close``). It knows
nothing of jobs, retries or dependencies: that is the scheduler's. Both backends run a
*worker*, a picklable ``Task -> Outcome`` callable (:func:`~dsd2.sweep.execute.run_task` by
default), so a caller can wrap what runs without touching the backend.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

from dsd2.errors import UserError
from dsd2.sweep.execute import Outcome, Task, run_task
from dsd2.sweep.spec import Resources

Worker = Callable[[Task], Outcome]
BACKENDS = ("ray", "sequential")


class Backend(Protocol):
    name: str  # recorded in sweep.json
    slots: int | None  # tasks in flight at most; None: as many as are ready

    def submit(self, key: str, task: Task) -> None: ...

    def wait(self) -> tuple[str, Outcome]:
        """The key and outcome of the next finished task (blocks; only while one is in flight)."""
        ...

    def cancel(self) -> None:
        """Drop every task in flight (best effort); their outcomes never come."""
        ...

    def close(self) -> None: ...


class SequentialBackend:
    """Runs each task in this process, at submit (for debugging and for machines without Ray)."""

    name = "sequential"
    slots: int | None = 1

    def __init__(self, worker: Worker = run_task) -> None:
        self.worker = worker
        self._done: list[tuple[str, Outcome]] = []

    def submit(self, key: str, task: Task) -> None:
        self._done.append((key, self.worker(task)))

    def wait(self) -> tuple[str, Outcome]:
        return self._done.pop(0)

    def cancel(self) -> None:
        self._done.clear()

    def close(self) -> None:
        pass


def _in_worker(worker: Worker, task: Task) -> Outcome:
    # module level, so Ray workers import it rather than unpickle a closure
    import dataclasses

    import ray

    # which node ran it goes into sweep.json: on a cluster that is where its logs and its failures are
    return dataclasses.replace(worker(task), node=ray.get_runtime_context().get_node_id())


CONNECT_TIMEOUT_S = 5.0


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` (``ray://`` allowed); a UserError for anything else: an empty
    address, a port that is not 1..65535 in ASCII digits, a host name with a label over 63 characters."""
    usage = f"--address {address[:100]!r} is not HOST:PORT (the head's `ray start --head --port=PORT`, e.g. 10.0.0.1:6379)"
    host, _, port = address.strip().removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(usage)
    ip_like = ":" in host  # IPv6
    labels = host.split(".")
    if not host.isascii() or len(host) > 253 or (not ip_like and any(not 1 <= len(x) <= 63 for x in labels)):
        raise UserError(f"{usage}: {host[:100]!r} is not a host name (labels of 1 to 63 ASCII characters)")
    return host, int(port)


def _check_address(address: str) -> None:
    """Refuse, in one line, an address Ray cannot use: ``ray.init`` waits minutes on an
    unreachable one before it gives up."""
    import socket

    if address == "auto":  # the cluster `ray start` left on this machine: Ray finds it or says so
        return
    host, port = host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, UnicodeError, ValueError) as err:
        raise UserError(
            f"no Ray cluster answers at {address} ({getattr(err, 'strerror', None) or err}): start one with `ray start --head --port={port}` "
            "on that machine, or check the address and the firewall"
        ) from None


def _connect_error(address: str, err: BaseException) -> UserError:
    text = f"{err} {err.__cause__ or ''}"
    if "uthentication" in text or "auth token" in text.lower():
        return UserError(
            f"the Ray cluster at {address} wants its auth token: set RAY_AUTH_MODE=token here, with the head's token in "
            "RAY_AUTH_TOKEN or ~/.ray/auth_token (or start the cluster with RAY_AUTH_MODE=disabled on a trusted network)"
        )
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return UserError(f"could not connect to the Ray cluster at {address}: {lines[-1] if lines else type(err).__name__}")


# Ray >= 2.5x says at every local start that it enabled token authentication, its secure default:
# nothing for a user of the sweep to act on. Only that notice is dropped; the warning that auth is
# *disabled* and every other record of Ray's loggers still show.
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def _not_token_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_TOKEN_NOTICE)


def quiet_ray_token_notice() -> None:
    """Drop Ray's "token authentication is enabled" notice (idempotent)."""
    logger = logging.getLogger(_TOKEN_LOGGER)
    if _not_token_notice not in logger.filters:
        logger.addFilter(_not_token_notice)


def _ray_error_text(err: BaseException) -> str:
    import ray.exceptions as rex

    if isinstance(err, rex.WorkerCrashedError):
        return "the worker process died (killed, out of memory or crashed) before the run finished"
    if isinstance(err, rex.NodeDiedError):
        node = re.search(r"node ID: ([0-9a-f]+)", str(err))
        return f"the Ray node running it died or left the cluster{f' (node {node[1]})' if node else ''}"
    if isinstance(err, rex.TaskCancelledError):
        return "the task was cancelled"
    if isinstance(err, rex.OutOfMemoryError):
        return "Ray killed the task: the node ran out of memory"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


class RayBackend:
    """One Ray task per attempt, with the sweep's per-run resources.

    Ray is initialised here unless it already is (and then shut down by :meth:`close`):
    ``address`` connects to a cluster; locally ``num_cpus`` is ``max_parallel ×
    resources.num_cpus`` or the CPU count. ``max_parallel`` caps the tasks in flight.
    Ray's own retries are off: a crashed worker comes back as a failed outcome, and the
    scheduler decides whether to try again.
    """

    name = "ray"

    def __init__(
        self,
        resources: Resources,
        address: str | None = None,
        max_parallel: int | None = None,
        *,
        worker: Worker = run_task,
    ) -> None:
        import ray

        quiet_ray_token_notice()
        self.ray = ray
        self.slots = max_parallel
        self.worker = worker
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(
                include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, logging_level=logging.WARNING
            )
            if address:
                _check_address(address)
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as err:
                    raise _connect_error(address, err) from None
            else:
                ncpu = os.cpu_count() or 1
                if max_parallel:
                    ncpu = max(1, math.ceil(max_parallel * resources.cell_cpus))
                ray.init(num_cpus=ncpu, **kwargs)
            self.started = True
        if not address:
            self._check_fits(resources)
        # one task holds all of a DDP cell's CPUs/GPUs: Ray then places the whole job on one node
        self.remote = ray.remote(num_cpus=resources.cell_cpus, num_gpus=resources.cell_gpus, max_retries=0)(_in_worker)
        self.inflight: dict[Any, str] = {}

    def _check_fits(self, resources: Resources) -> None:
        total = self.ray.cluster_resources()
        for res, want in (("CPU", resources.cell_cpus), ("GPU", resources.cell_gpus)):
            have = total.get(res, 0.0)
            if want > have:
                self.close()
                raise UserError(
                    f"each cell asks for {want:g} {res}(s) (resources.num_{res.lower()}s x processes) but the Ray cluster has "
                    f"{have:g}: lower it (sweep.resources.num_{res.lower()}s=...) or pass --address of a bigger cluster"
                )

    def submit(self, key: str, task: Task) -> None:
        self.inflight[self.remote.remote(self.worker, task)] = key

    def wait(self) -> tuple[str, Outcome]:
        (ref,), _ = self.ray.wait(list(self.inflight), num_returns=1)
        key = self.inflight.pop(ref)
        try:
            return key, self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            return key, Outcome(ok=False, error=_ray_error_text(err))

    def cancel(self) -> None:
        for ref in list(self.inflight):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self.inflight.clear()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_backend(name: str, resources: Resources, address: str | None = None, max_parallel: int | None = None) -> Backend:
    """The backend called ``name`` (``ray`` or ``sequential``)."""
    if address is not None and address != "auto":
        host_port(address)  # before anything starts: an empty --address must not start a local Ray
    if name == "ray":
        return RayBackend(resources, address, max_parallel)
    if name == "sequential":
        return SequentialBackend()
    raise UserError(f"unknown sweep backend {name!r}: use ray or sequential")
