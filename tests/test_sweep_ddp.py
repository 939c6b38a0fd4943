"""A data-parallel sweep cell (resources.processes > 1): torchrun inside the cell's task.

The cell runs ``torchrun --standalone --nproc_per_node 2 -m dsd2 run`` (2 gloo CPU processes);
it must give the one-process run of the same config within test_ddp's tolerances (its docstring
says why), fail an attempt with the job's own error line, and resume its run directory on retry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dsd2.errors import UserError
from dsd2.sweep import Task, expand, list_sweep_presets, load_sweep, run_sweep
from dsd2.sweep.execute import ddp_command, ddp_env, last_error_line
from test_ddp import TINY, _assert_same_run


def _sweep_file(tmp_path: Path, name: str, processes: int, extra: tuple[str, ...] = ()) -> Path:
    spec = {
        "name": name,
        "base": "tiny_mnist1d",
        "overrides": [*TINY, *extra],
        "grid": {"seed": [0]},
        "resources": {"num_cpus": 1, "processes": processes},
        "retries": 0,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------------- pure pieces (fast)


def test_processes_default_to_one_and_keep_the_cells():
    spec = load_sweep("tiny_demo")
    assert spec.resources.processes == 1
    assert spec.resources.cell_cpus == spec.resources.num_cpus


def test_a_ddp_cell_reserves_whole_gpus_per_process(tmp_path):
    spec = load_sweep("tiny_demo", ["sweep.resources.processes=8", "sweep.resources.num_gpus=1", "sweep.resources.num_cpus=4"])
    assert (spec.resources.cell_gpus, spec.resources.cell_cpus, spec.resources.threads) == (8, 32, 4)
    with pytest.raises(UserError, match="one whole GPU per process"):
        load_sweep("tiny_demo", ["sweep.resources.processes=2", "sweep.resources.num_gpus=0.5"])


def test_the_command_is_the_clis_launcher_and_a_retry_resumes(tmp_path):
    task = Task({}, str(tmp_path / "runs" / "cell-abc"), 3, ("/plugins",), 4)
    cmd = ddp_command(task, "/tmp/c.yaml")
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6:] == ["dsd2", "run", "/tmp/c.yaml", "--out", str(tmp_path / "runs"), "-q"]
    assert ddp_command(task, None)[6:] == ["dsd2", "run", task.run_dir, "-q"]  # the run directory: resume
    env = ddp_env(task)
    assert env["PYTHONPATH"].split(":")[0] == "/plugins" and env["OMP_NUM_THREADS"] == "3"


def test_the_error_line_is_dsd2s_not_torchruns_frame():
    stderr = "noise\nerror: train.batch_size=127 must be divisible by 2\n[rank0]: x\n====\nChildFailedError:\n  time\n====\n"
    assert last_error_line(stderr) == "train.batch_size=127 must be divisible by 2"
    assert last_error_line("Traceback\nRuntimeError: boom\n=====\n") == "RuntimeError: boom"


# ----------------------------------------------------------------------------- the job (slow)


@pytest.mark.slow
def test_a_two_process_cell_trains_the_one_process_run(tmp_path):
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        res = run_sweep(load_sweep(_sweep_file(tmp_path, "ddp", processes)), out=out, backend="sequential")
        assert res.ok, [c.error for c in res.cells]
        runs[processes] = Path(res.cells[0].run_dir)
    assert runs[1].name == runs[2].name  # same config, same run id: processes are outside it
    _assert_same_run(runs[1], runs[2])
    again = run_sweep(load_sweep(_sweep_file(tmp_path, "ddp", 2)), out=tmp_path / "p2", backend="sequential")
    assert again.cells[0].skipped  # finished: no job started


@pytest.mark.slow
def test_a_failing_job_fails_the_attempt_with_its_error(tmp_path):
    res = run_sweep(load_sweep(_sweep_file(tmp_path, "odd", 2, ("train.batch_size=127",))), out=tmp_path, backend="sequential")
    (cell,) = res.cells
    assert cell.status == "failed" and "must be divisible" in (cell.error or "") and "torchrun exit" in (cell.error or "")


def test_the_imagenet_ddp_preset():
    spec = load_sweep("imagenet_dsd2_ddp")
    (cell,) = expand(spec)
    assert (spec.resources.processes, spec.resources.cell_gpus, spec.pipeline) == (8, 8, True)
    assert cell.config.model.name == "resnet18" and cell.teacher_config is not None
    assert cell.teacher_config.model.name == "resnet50" and cell.teacher_config.dataset == cell.config.dataset
    assert {"vit_cifar10", "vit_cifar100"} <= set(list_sweep_presets())


@pytest.mark.slow
def test_a_two_process_cell_on_ray(tmp_path):
    pytest.importorskip("ray")
    one = run_sweep(load_sweep(_sweep_file(tmp_path, "ddp", 1)), out=tmp_path / "p1", backend="sequential")
    two = run_sweep(load_sweep(_sweep_file(tmp_path, "ddp", 2)), out=tmp_path / "p2", backend="ray", max_parallel=1)
    assert two.ok, [c.error for c in two.cells]
    assert two.cells[0].nodes and two.cells[0].nodes[0] is not None  # it ran in a Ray task
    _assert_same_run(Path(one.cells[0].run_dir), Path(two.cells[0].run_dir))


def _descendants(root: int) -> dict[int, dict[str, str]]:
    """pid -> environment of every live process below ``root``, from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    below = {}
    for pid in parent:
        p = pid
        while p in parent and p != root:
            p = parent[p]
        if p == root and pid != root:
            try:
                raw = Path(f"/proc/{pid}/environ").read_text().split("\0")
            except OSError:
                continue
            below[pid] = dict(v.split("=", 1) for v in raw if "=" in v)
    return below


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks through /proc")
def test_a_killed_rank_fails_the_attempt_and_the_retry_resumes(tmp_path):
    """SIGKILL rank 1 of a DDP cell while round 1 trains: torchrun stops the job, the sweep records
    the failed attempt, retries it, the retry resumes the cell's run directory (round 0 is not
    retrained) and the result is the one-process run's, within test_ddp's tolerances."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    extra = ("train.checkpoint_interval_s=0",)
    spec = yaml.safe_load(_sweep_file(tmp_path, "ddp", 2, extra).read_text())
    spec["retries"] = 1
    path = tmp_path / "ddp_retry.yaml"
    path.write_text(yaml.safe_dump(spec))  # same name: the run folders compare whole
    out = tmp_path / "p2"
    cmd = [sys.executable, "-m", "dsd2", "sweep", str(path), "--out", str(out), "--backend", "sequential"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        partial, deadline = None, time.monotonic() + 240  # a hang guard, not a timing check
        while partial is None and time.monotonic() < deadline and job.poll() is None:
            partial = next(iter(out.glob("**/round_001.partial.safetensors")), None)
            time.sleep(0.02)
        if partial is None:
            pytest.skip("the job finished round 1 before the test saw its epoch checkpoint (a very fast machine)")
        round0 = (partial.parent / "round_000" / "state.safetensors").stat().st_mtime_ns
        ranks = {int(env["RANK"]): pid for pid, env in _descendants(job.pid).items() if "RANK" in env and "LOCAL_RANK" in env}
        os.kill(ranks[1], signal.SIGKILL)
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, err[-3000:]
    (cell,) = json.loads(next(out.glob("**/sweep.json")).read_text())["cells"]
    assert cell["status"] == "finished" and cell["attempts"] == 2, cell
    assert "torchrun exit" in cell["errors"][0], cell
    run_dir = Path(cell["run_dir"])
    assert (run_dir / "round_000" / "state.safetensors").stat().st_mtime_ns == round0
    one = run_sweep(load_sweep(_sweep_file(tmp_path, "ddp", 1, extra)), out=tmp_path / "p1", backend="sequential")
    assert one.ok and Path(one.cells[0].run_dir).name == run_dir.name
    _assert_same_run(Path(one.cells[0].run_dir), run_dir)
