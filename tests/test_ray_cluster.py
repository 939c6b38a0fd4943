"""`dsd2 sweep --address` on a real Ray cluster that this test starts on this machine: a head and a
second node (each `ray start` with one CPU, its own resources, ports and temp dir). The sweep's
cells spread over both nodes; the second node is killed (its whole process tree, SIGKILL) while
it runs a cell; that cell is retried on the head and the sweep ends with the rows of an
undisturbed sweep. The cluster's processes are killed by pid at the end, whatever happened: no
`ray stop`, which would stop every Ray of this user on the machine."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dsd2 import store
from dsd2.errors import UserError
from dsd2.sweep import RayBackend, load_sweep, run_sweep
from dsd2.sweep.spec import Resources

BIN = Path(sys.executable).parent
# long enough (seconds per cell) that the second node is surely running one when it is killed
OVERRIDES = ["train.epochs=2", "prune.rounds=3", "model.hidden=[32, 32]"]
START_TIMEOUT_S = 90
SWEEP_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Ray's workers leave its process group, not its tree)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(text.rpartition(")")[2].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a `ray start --block` and everything under it, leaves first, as a dying machine."""
    for pid in [*reversed(_children(proc.pid)), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


class Cluster:
    """A head node and a second node, started with ``ray start --block`` (so the test owns their pids)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # token auth, as `ray start --head` turns on by itself when ~/.ray/auth_token exists;
        # the token travels in the environment, so nothing is read from or written to ~/.ray
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.ids: dict[str, str] = {}  # node name -> Ray node id

    def start(self, name: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus=1", f'--resources={{"{name}": 1}}', "--node-ip-address=127.0.0.1"]
        cmd += [f"--temp-dir={self.root / name}", "--disable-usage-stats", *args]
        with open(log, "w") as out:
            self.procs[name] = proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start of {name} failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def node_ids(self) -> dict[str, str]:
        """``{"head": id, "node2": id}`` once both nodes are alive (asked of the cluster by a driver)."""
        probe = (
            "import json, sys, time, ray\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "for _ in range(300):\n"
            "    ids = {r: n['NodeID'] for n in ray.nodes() if n['Alive'] for r in ('head', 'node2') if r in n['Resources']}\n"
            "    if len(ids) == 2: break\n"
            "    time.sleep(0.2)\n"
            "print(json.dumps(ids))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, self.address], env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def running(self, name: str, out: Path) -> Path | None:
        """The run directory (under ``out``) whose cell node ``name`` is running now: the run's
        ``.lock`` holds the pid of a Ray worker of that node busy with a sweep task (ray::<function>)."""
        busy = {pid for pid in _children(self.procs[name].pid) if _cmdline(pid).startswith("ray::_in_worker")}
        for lock in out.glob("*/.lock"):
            try:
                if int(lock.read_text() or 0) in busy:
                    return lock.parent
            except (OSError, ValueError):
                continue
        return None

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                _kill_tree(proc)


@pytest.fixture(scope="module")
def cluster():
    # short: Ray's unix socket paths (under the temp dir) must stay below about 107 characters
    root = Path(tempfile.mkdtemp(prefix="dsd2ray", dir="/tmp"))
    c = Cluster(root)
    try:
        c.start(
            "head",
            "--head",
            f"--port={c.port}",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
        )
        c.start("node2", f"--address={c.address}")
        c.ids = c.node_ids()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _cells(sweep_json: Path) -> list[dict]:
    try:
        return json.loads(sweep_json.read_text())["cells"]
    except (OSError, ValueError, KeyError):  # not written yet
        return []


@pytest.mark.slow
def test_sweep_on_two_nodes_survives_losing_one(cluster, tmp_path):
    out = tmp_path / "runs"
    sweep_json = out / "tiny_demo" / "sweep.json"
    cmd = [str(BIN / "dsd2"), "sweep", "tiny_demo", *OVERRIDES, "--address", cluster.address, "--out", str(out)]
    log = tmp_path / "sweep.log"
    with open(log, "w") as f:
        sweep = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True)
    try:
        # kill the second node in the middle of a cell: once it has saved round 1 of the cell it runs
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while (lost_dir := cluster.running("node2", out)) is None or 1 not in store.finished_rounds(lost_dir):
            assert sweep.poll() is None, f"the sweep ended before the second node ran a cell:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        _kill_tree(cluster.procs["node2"])
        killed_at = time.time_ns()
        before = store.finished_rounds(lost_dir)
        rc = sweep.wait(timeout=SWEEP_TIMEOUT_S)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-3000:]

    head, node2 = cluster.ids["head"], cluster.ids["node2"]
    cells = _cells(sweep_json)
    assert [c["status"] for c in cells] == ["finished"] * 4
    (lost,) = [c for c in cells if c["run_dir"] == str(lost_dir)]
    # the attempt lost with the node reports no node (its outcome never came back); the retry ran on the head
    assert lost["attempts"] == 2 and lost["nodes"] == [None, head] and lost["error"] is None, lost
    assert lost["errors"] == [f"the Ray node running it died or left the cluster (node {node2})"], lost
    assert all(c["attempts"] == 1 and c["nodes"][0] in (head, node2) for c in cells if c is not lost), cells
    assert "retrying" in text and "cells failed" not in text
    # the retry resumed: the rounds the second node had saved were not redone
    assert before[:2] == [0, 1] and store.finished_rounds(lost_dir) == [0, 1, 2, 3]
    for r in before:
        assert store.round_dir(lost_dir, r).joinpath(store.MANIFEST).stat().st_mtime_ns <= killed_at
    assert store.round_dir(lost_dir, 3).joinpath(store.MANIFEST).stat().st_mtime_ns > killed_at

    # the same rows as an undisturbed sweep (in-process, one cell after another)
    ref = run_sweep(load_sweep("tiny_demo", OVERRIDES), out=tmp_path / "ref", backend="sequential")
    assert ref.ok
    strip = lambda rows: [{k: v for k, v in r.items() if k != "run_dir"} for r in rows]  # noqa: E731
    got = store.read_csv(out / "tiny_demo" / "all_rounds.csv")
    assert len(got) == 4 * 4 and strip(got) == strip(store.read_csv(ref.sweep_dir / "all_rounds.csv"))


@pytest.mark.parametrize(
    "address, says",
    [("127.0.0.1:{free}", "no Ray cluster answers at"), ("nonsense", "is not HOST:PORT"), ("host:", "is not HOST:PORT")],
)
def test_bad_address_is_refused_before_ray_starts(address, says, monkeypatch):
    # ray.init would wait minutes on an unreachable address: the refusal must come before it is called
    import ray

    assert not ray.is_initialized()  # else the backend would use that Ray and never look at the address
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init called for a refused address"))
    with pytest.raises(UserError, match=says):
        RayBackend(Resources(), address=address.format(free=_free_port()))
    assert not ray.is_initialized()


def test_silent_address_is_probed_with_a_bounded_connect(monkeypatch):
    # a host that drops packets (no refusal) must not hang: the probe's connect has a timeout, and
    # its expiry is the same one-line refusal
    import socket

    import ray

    from dsd2.sweep import backends

    seen = {}

    def silent(addr, timeout=None):
        seen.update(addr=addr, timeout=timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init called for a refused address"))
    with pytest.raises(UserError, match="no Ray cluster answers at 10.255.255.1:6379"):
        RayBackend(Resources(), address="10.255.255.1:6379")
    assert seen == {"addr": ("10.255.255.1", 6379), "timeout": backends.CONNECT_TIMEOUT_S}


@pytest.mark.slow
def test_missing_token_is_one_line_exit_2(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray retries the refused connection once a second, 20 times by default
    out = subprocess.run(
        [str(BIN / "dsd2"), "sweep", "tiny_demo", "--address", cluster.address, "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    both = out.stdout + out.stderr
    assert out.returncode == 2 and "RAY_AUTH_MODE=token" in both and "Traceback" not in both, both
