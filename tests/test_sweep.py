"""Sweeps: grid expansion and validation, scheduling, Ray and sequential backends, skip, retry/resume,
failure reporting, summaries, and the pre-run cost estimate. Failures are injected from outside
the sweep (tests/sweep_fakes.py): a fake backend, and a Ray worker that dies mid-run."""

import io
import json
from pathlib import Path

import pytest
import yaml

from dsd2 import store
from dsd2.errors import UserError
from dsd2.sweep import (
    RayBackend,
    State,
    build_jobs,
    estimate_cost,
    expand,
    format_cost,
    list_sweep_presets,
    load_sweep,
    run_sweep,
    schedule,
    sweep_main,
)

import sweep_fakes
from conftest import TINY as TINY_RUN
from sweep_fakes import FakeBackend, KillAfterRound

TINY = [*TINY_RUN, "entropy.enabled=false"]
FAIL_CELL = "tiny_demo_seed-1_rate-0.1"
ROUNDS = 2


def write_sweep(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- expansion


def test_expand_cartesian_product_and_names():
    spec = load_sweep("tiny_demo")
    cells = expand(spec)
    assert [c.name for c in cells] == [
        "tiny_demo_seed-0_rate-0.1",
        "tiny_demo_seed-0_rate-0.4",
        "tiny_demo_seed-1_rate-0.1",
        "tiny_demo_seed-1_rate-0.4",
    ]
    for c in cells:
        assert c.config.name == c.name
        assert c.config.seed == c.params["seed"]
        assert c.config.noise.rate == c.params["noise.rate"]
        assert c.config.train.epochs == 1 and c.config.prune.rounds == ROUNDS  # overrides on every cell
        assert c.teacher_config is None
    assert len({c.config.run_id() for c in cells}) == 4

    spec3 = load_sweep("tiny_demo", ["sweep.grid.model.hidden=[[8], [16, 16], [32]]", "train.epochs=2"])
    cells3 = expand(spec3)
    assert len(cells3) == 2 * 2 * 3
    assert cells3[1].name == "tiny_demo_seed-0_rate-0.1_hidden-16-16"
    assert cells3[1].config.model.options["hidden"] == [16, 16]
    assert all(c.config.train.epochs == 2 for c in cells3)


def test_bad_grid_key_and_invalid_cells_name_the_cell():
    with pytest.raises(UserError, match=r"(?s)cell tiny_demo_seed-0_rate-0.1_rte-0.1 .*noise.rte: unknown key"):
        load_sweep("tiny_demo", ["sweep.grid.noise.rte=[0.1]"])
    with pytest.raises(UserError, match=r"(?s)model.hiden: .*Did you mean 'model.hidden'"):
        load_sweep("tiny_demo", ["sweep.grid.model.hiden=[[8]]"])
    # a value only one cell gets wrong: that cell is named
    with pytest.raises(UserError, match=r"(?s)cell tiny_demo_seed-0_rate-1.5 .*noise.rate"):
        load_sweep("tiny_demo", ["sweep.grid.noise.rate=[0.1, 1.5]"])
    with pytest.raises(UserError, match="grid is empty"):
        load_sweep("tiny_demo", ["sweep.grid={}"])
    with pytest.raises(UserError, match="must be a list"):
        load_sweep("tiny_demo", ["sweep.grid.seed=3"])
    with pytest.raises(UserError, match="touches grid key 'noise.rate'"):
        load_sweep("tiny_demo", ["noise.rate=0.3"])
    with pytest.raises(UserError, match="grids: unknown key"):
        load_sweep("tiny_demo", ["sweep.grids={seed: [0]}"])
    with pytest.raises(UserError, match="sweep file nope not found"):
        load_sweep("nope")


def test_model_checked_on_meta_device_and_teacher_config(tmp_path):
    # depth 6 halves a 32x32 image six times: the builder refuses it, naming the cell
    path = write_sweep(tmp_path / "wd.yaml", name="wd", base="cifar10_vgg_noise50", grid={"model.depth": [5, 6]})
    with pytest.raises(UserError, match=r"(?s)cell wd_depth-6 .*depth=6"):
        load_sweep(path)
    # a teacher override that keeps the student's VGG options fails for the ResNet teacher
    path = write_sweep(
        tmp_path / "t.yaml",
        name="t",
        base="cifar10_vgg_noise50",
        pipeline=True,
        teacher_overrides=["model.name=resnet18_cifar"],
        grid={"seed": [0]},
    )
    with pytest.raises(UserError, match=r"(?s)cell t_seed-0 .*, teacher: model.depth: model 'resnet18_cifar' has no option"):
        load_sweep(path)
    with pytest.raises(UserError, match="only apply to pipeline"):
        load_sweep("tiny_demo", ["sweep.teacher_overrides=[train.epochs=2]"])


def test_presets_expand_and_fig1_teacher():
    assert {"fig1", "noise_sweep", "width_depth", "retrain_modes", "cifar100", "tiny_demo"} <= set(list_sweep_presets())
    sizes = {name: len(expand(load_sweep(name))) for name in list_sweep_presets()}
    assert sizes["width_depth"] == 20 and sizes["noise_sweep"] == 9 and sizes["retrain_modes"] == 5
    assert sizes["methods_fmnist"] == 8 and sizes["schedules_fmnist"] == 3 and sizes["noise_models_fmnist"] == 6
    assert [c.config.distill.teacher for c in expand(load_sweep("distill_variants_fmnist"))] == [None, "self", "self"]
    kinds = [c.config.noise.kind for c in expand(load_sweep("noise_models_fmnist"))]
    assert kinds == ["symmetric", "uniform", "bernoulli", "pairflip", "instance", "transition"]
    (slim, l1) = sorted(expand(load_sweep("structured_fmnist")), key=lambda c: c.config.prune.criterion != "slimming")
    assert slim.config.prune.criterion == "slimming" and l1.config.prune.criterion == "magnitude"
    assert slim.config.prune.allocation == l1.config.prune.allocation == "channel" and slim.config.model.name == "vgg_like"
    methods = expand(load_sweep("methods_fmnist"))
    assert {(c.config.prune.criterion, c.config.noise.kind) for c in methods} == {
        (crit, kind) for crit in ("magnitude", "magnitude_gradient", "snip", "random") for kind in ("symmetric", "instance")
    }
    (cell,) = expand(load_sweep("fig1"))
    assert cell.config.model.name == "vgg_like" and cell.config.model.options["gamma"] == 5
    assert cell.teacher_config.model.name == "resnet18_cifar" and cell.teacher_config.model.options == {"maxpool": True}
    assert cell.teacher_config.noise == cell.config.noise and cell.teacher_config.seed == cell.config.seed
    assert cell.teacher_config.distill.teacher is None
    assert cell.config.distill.round == "best" and cell.config.distill.alpha == 0.8


def test_pipeline_teacher_shared_across_distill_grid(tmp_path):
    path = write_sweep(
        tmp_path / "kd.yaml",
        name="kd",
        base="tiny_mnist1d",
        overrides=TINY,
        pipeline=True,
        grid={"seed": [0], "distill.alpha": [0.5, 1.0]},
    )
    cells = expand(load_sweep(path))
    assert cells[0].teacher_config.run_id() == cells[1].teacher_config.run_id()
    assert cells[0].teacher_config.name == "kd_teacher_seed-0"
    est = estimate_cost(load_sweep(path), cells=cells)
    assert est["runs"] == 3  # one shared teacher + two students


# ----------------------------------------------------------------------------- cost estimate


def test_estimate_cost_vgg_cifar10(tmp_path):
    def est(*overrides):
        path = write_sweep(tmp_path / "c.yaml", name="c", base="cifar10_vgg_noise50", overrides=list(overrides), grid={"seed": [0]})
        return estimate_cost(load_sweep(path))

    base = est()
    (run,) = base["cells"][0]["runs"]
    assert run["fwd_flops_per_example"] == pytest.approx(2 * 67.2e6, rel=0.02)
    assert run["train_examples"] == 45000 and run["epochs_total"] == 160 * 35
    assert run["pflops"] * 1e15 == pytest.approx(run["step_flops_per_example"] * 45000 * 160 * 35)
    assert run["gpu_hours"] == pytest.approx(run["pflops"] * 1e15 / 25e12 / 3600)
    assert est("train.epochs=80")["total_pflops"] == pytest.approx(base["total_pflops"] / 2)
    assert est("prune.rounds=9")["total_pflops"] == pytest.approx(base["total_pflops"] * 10 / 35)
    est()  # rewrite c.yaml without overrides
    assert estimate_cost(load_sweep(tmp_path / "c.yaml"), gpu_tflops=50)["total_gpu_hours"] == pytest.approx(base["total_gpu_hours"] / 2)
    text = format_cost(base)
    assert "GPU-hours" in text and "Not measured" in text


# ----------------------------------------------------------------------------- scheduling (nothing trained)

TEACHER = "kd_teacher_seed-0"
STUDENTS = ["kd_seed-0_alpha-0.5", "kd_seed-0_alpha-1.0"]


def kd_sweep(tmp_path, **extra):
    path = write_sweep(
        tmp_path / "kd.yaml",
        name="kd",
        base="tiny_mnist1d",
        overrides=TINY,
        pipeline=True,
        grid={"seed": [0], "distill.alpha": [0.5, 1.0]},
        **extra,
    )
    return load_sweep(path)


def scheduled(jobs, backend, retries):
    return [(e.job.config.name, e.status) for e in schedule(jobs, backend, retries=retries, threads=1)]


def test_schedule_runs_the_teacher_first_and_retries_it(tmp_path):
    spec = kd_sweep(tmp_path)
    jobs, _ = build_jobs(spec, expand(spec), tmp_path)
    backend = FakeBackend({TEACHER: None}, run=False, slots=None)
    assert scheduled(jobs, backend, retries=1) == [
        (TEACHER, "started"),
        (TEACHER, "retrying"),
        (TEACHER, "finished"),
        (STUDENTS[0], "started"),
        (STUDENTS[1], "started"),
        (STUDENTS[0], "finished"),
        (STUDENTS[1], "finished"),
    ]
    assert backend.submitted == [TEACHER, TEACHER, *STUDENTS]
    assert all(j.state is State.DONE for j in jobs.values())
    teacher = next(j for j in jobs.values() if j.role == "teacher")
    assert teacher.attempts == 2 and teacher.errors == [f"simulated failure of {TEACHER} at the start"]


def test_schedule_fails_the_students_of_a_failed_teacher(tmp_path):
    spec = kd_sweep(tmp_path)
    jobs, _ = build_jobs(spec, expand(spec), tmp_path)
    backend = FakeBackend({TEACHER: 1}, run=False)
    assert scheduled(jobs, backend, retries=0) == [
        (TEACHER, "started"),
        (TEACHER, "failed"),
        (STUDENTS[0], "failed"),
        (STUDENTS[1], "failed"),
    ]
    assert backend.submitted == [TEACHER]  # no student task was ever started
    for job in jobs.values():
        assert job.state is State.FAILED
        if job.role == "student":
            assert job.attempts == 0 and job.errors == [f"teacher run failed: simulated failure of {TEACHER} after round 1"]


def test_schedule_keeps_to_the_backend_slots(tmp_path):
    spec = load_sweep("tiny_demo")
    for slots, most in ((None, 4), (2, 2), (1, 1)):
        jobs, _ = build_jobs(spec, expand(spec), tmp_path)
        backend = FakeBackend(run=False, slots=slots)
        statuses = [s for _, s in scheduled(jobs, backend, retries=0)]
        assert backend.most_in_flight == most
        assert sorted(statuses) == ["finished"] * 4 + ["started"] * 4
        if slots == 1:
            assert statuses == ["started", "finished"] * 4


# ----------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def ray_session():
    import ray
    import ray.cloudpickle

    # the failure injection lives in tests/, which Ray workers cannot import: ship it by value
    ray.cloudpickle.register_pickle_by_value(sweep_fakes)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_sweep(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    events = []
    spec = load_sweep("tiny_demo")
    # the worker of this cell is killed right after its round 1 is finished, once
    worker = KillAfterRound(FAIL_CELL, 1, out / "tiny_demo" / ".fail_once" / FAIL_CELL)
    backend = RayBackend(spec.resources, max_parallel=2, worker=worker)
    res = run_sweep(spec, out=out, backend=backend, on_event=lambda c, s: events.append((c.name, s)))
    return spec, out, res, events


@pytest.mark.slow
def test_ray_sweep_outputs(ray_sweep):
    spec, out, res, events = ray_sweep
    assert res.ok, [c.errors for c in res.cells]
    sweep_dir = out / "tiny_demo"
    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert [c["status"] for c in info["cells"]] == ["finished"] * 4
    assert {c["name"]: c["attempts"] for c in info["cells"]} == {c.name: (2 if c.name == FAIL_CELL else 1) for c in expand(spec)}
    assert info["spec"]["grid"] == {"seed": [0, 1], "noise.rate": [0.1, 0.4]}
    assert (FAIL_CELL, "retrying") in events
    killed = next(c for c in info["cells"] if c["name"] == FAIL_CELL)
    assert len(killed["errors"]) == 1 and "worker process died" in killed["errors"][0] and killed["error"] is None
    for c in info["cells"]:
        assert Path(c["run_dir"]).parent == out and store.finished_rounds(Path(c["run_dir"])) == [0, 1, 2]

    rows = store.read_csv(sweep_dir / "all_rounds.csv")
    assert len(rows) == 4 * (ROUNDS + 1)
    assert list(rows[0])[:5] == ["cell", "seed", "noise.rate", "role", "run_dir"]
    for c in info["cells"]:
        mine = [r for r in rows if r["cell"] == c["name"]]
        assert [r["round"] for r in mine] == [0, 1, 2]
        assert all(r["seed"] == c["params"]["seed"] and r["noise.rate"] == c["params"]["noise.rate"] for r in mine)
        assert all(r["run_dir"] == c["run_dir"] and r["role"] == "run" for r in mine)

    # summary_by_point: mean and std over seeds of the best val accuracy, by hand
    points = store.read_csv(sweep_dir / "summary_by_point.csv")
    assert len(points) == 2 and all(p["n"] == 2 for p in points)
    for p in points:
        best = []
        for c in info["cells"]:
            if c["params"]["noise.rate"] == p["noise.rate"]:
                best.append(max(r["val_acc"] for r in store.read_csv(Path(c["run_dir"]) / "rounds.csv")))
        mean = sum(best) / 2
        assert p["best_acc_mean"] == pytest.approx(mean, abs=1e-12)
        assert p["best_acc_std"] == pytest.approx(abs(best[0] - best[1]) / 2**0.5, abs=1e-12)
        assert "seed" not in p
    summary = store.read_csv(sweep_dir / "summary.csv")
    assert len(summary) == 4 and all(r["selection"] == "val_acc" for r in summary)

    # the killed attempt left rounds 0 and 1; the retry resumed at round 2
    run_dir = Path(next(c["run_dir"] for c in info["cells"] if c["name"] == FAIL_CELL))
    killed_at = (sweep_dir / ".fail_once" / FAIL_CELL).stat().st_mtime_ns
    assert store.round_dir(run_dir, 1).joinpath(store.MANIFEST).stat().st_mtime_ns <= killed_at
    assert store.round_dir(run_dir, 2).joinpath(store.MANIFEST).stat().st_mtime_ns >= killed_at


def _mtimes(run_dirs):
    return {str(p): p.stat().st_mtime_ns for d in run_dirs for p in Path(d).rglob("*") if p.is_file()}


@pytest.mark.slow
def test_rerun_skips_finished_cells(ray_sweep):
    spec, out, res, _ = ray_sweep
    before = _mtimes(c.run_dir for c in res.cells)
    events = []
    again = run_sweep(spec, out=out, backend="ray", on_event=lambda c, s: events.append(s))
    assert events == ["skipped"] * 4
    assert again.ok and all(c.skipped and c.attempts == 0 for c in again.cells)
    assert _mtimes(c.run_dir for c in again.cells) == before
    assert again.summary_by_point == res.summary_by_point


@pytest.mark.slow
def test_sequential_backend_matches_ray_and_resume(ray_sweep, tmp_path):
    spec, _, res, _ = ray_sweep
    seq = run_sweep(spec, out=tmp_path, backend="sequential")
    assert seq.ok
    assert [Path(c.run_dir).name for c in seq.cells] == [Path(c.run_dir).name for c in res.cells]
    for a, b in zip(seq.cells, res.cells):
        # includes the cell killed after round 1 and resumed under Ray: same rows as uninterrupted
        assert (Path(a.run_dir) / "rounds.csv").read_text() == (Path(b.run_dir) / "rounds.csv").read_text(), a.name
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("run_dir", "attempts")} for r in rows]  # noqa: E731
    assert strip(seq.summary) == strip(res.summary)
    assert seq.summary_by_point == res.summary_by_point


@pytest.mark.slow
def test_failing_cell_reported_others_finish(ray_session, tmp_path):
    # val_size=5000 leaves no MNIST-1D training samples: that cell fails at every attempt
    path = write_sweep(
        tmp_path / "bad.yaml",
        name="bad",
        base="tiny_mnist1d",
        overrides=[o for o in TINY if "val_size" not in o],
        grid={"dataset.val_size": [300, 5000]},
        retries=1,
    )
    buf = io.StringIO()
    from rich.console import Console

    rc = sweep_main(path, [], tmp_path / "runs", "ray", None, 2, False, console=Console(file=buf, width=200))
    assert rc == 1
    info = json.loads((tmp_path / "runs" / "bad" / "sweep.json").read_text())
    good, bad = info["cells"]
    assert good["status"] == "finished" and good["attempts"] == 1
    assert bad["status"] == "failed" and bad["attempts"] == 2
    assert "val_size=5000 leaves no training samples" in bad["error"] and len(bad["errors"]) == 2
    text = buf.getvalue()
    assert "Cost estimate" in text and "1 of 2 cells failed" in text and "bad_val_size-5000" in text
    summary = store.read_csv(tmp_path / "runs" / "bad" / "summary.csv")
    assert summary[1]["status"] == "failed" and summary[1]["best_acc"] is None
    assert len(store.read_csv(tmp_path / "runs" / "bad" / "summary_by_point.csv")) == 1  # finished cells only


@pytest.mark.slow
def test_pipeline_sweep_shares_teacher(ray_session, tmp_path):
    path = write_sweep(
        tmp_path / "kd.yaml",
        name="kd",
        base="tiny_mnist1d",
        overrides=TINY,
        pipeline=True,
        grid={"seed": [0], "distill.alpha": [0.5, 1.0]},
    )
    events = []
    res = run_sweep(load_sweep(path), out=tmp_path / "runs", backend="ray", on_event=lambda c, s: events.append((c.name, s)))
    assert res.ok, [c.errors for c in res.cells]
    a, b = res.cells
    assert a.teacher_dir == b.teacher_dir and a.run_dir != b.run_dir
    assert a.teacher_attempts == b.teacher_attempts == 1
    # each student started after the (single) teacher run finished
    for cell in (a, b):
        mine = [s for n, s in events if n == cell.name]
        assert mine.index("teacher finished") < mine.index("started")
    assert [s for _, s in events].count("teacher started") == 2  # one task, reported to both cells
    for cell in (a, b):
        teacher = json.loads((Path(cell.run_dir) / "teacher.json").read_text())
        assert Path(teacher["run_dir"]) == Path(cell.teacher_dir)
    rows = store.read_csv(tmp_path / "runs" / "kd" / "all_rounds.csv")
    assert sorted({(r["cell"], r["role"]) for r in rows}) == [
        (a.name, "student"),
        (a.name, "teacher"),
        (b.name, "student"),
        (b.name, "teacher"),
    ]
    summary = store.read_csv(tmp_path / "runs" / "kd" / "summary.csv")
    assert {"teacher_best_acc", "student_best_acc", "student_dip_depth", "teacher_dir", "student_dir"} <= set(summary[0])
    assert summary[0]["teacher_best_acc"] == summary[1]["teacher_best_acc"]


# ----------------------------------------------------------------------------- failures injected by a fake backend


def test_a_run_that_fails_once_is_retried_and_resumes(tmp_path):
    spec = load_sweep("tiny_demo", ["sweep.grid.seed=[1]", "sweep.grid.noise.rate=[0.1]"])
    events = []
    backend = FakeBackend({FAIL_CELL: 1})  # the first attempt raises right after round 1 is saved
    res = run_sweep(spec, out=tmp_path / "flaky", backend=backend, on_event=lambda c, s: events.append(s))
    assert res.ok and backend.closed
    assert events == ["started", "retrying", "finished"]
    (cell,) = res.cells
    assert cell.attempts == 2 and cell.error is None
    assert cell.errors == [f"RuntimeError: simulated failure of {FAIL_CELL} after round 1"]
    info = json.loads((res.sweep_dir / "sweep.json").read_text())
    assert info["backend"] == "fake" and info["cells"][0]["attempts"] == 2
    traceback = res.sweep_dir / "errors" / f"{FAIL_CELL}.attempt1.txt"
    assert "simulated failure" in traceback.read_text()

    # the retry resumed at round 2 (rounds 0 and 1 predate the failure's traceback) and
    # gives the rows of an uninterrupted run
    run_dir = Path(cell.run_dir)
    failed_at = traceback.stat().st_mtime_ns
    assert store.round_dir(run_dir, 1).joinpath(store.MANIFEST).stat().st_mtime_ns <= failed_at
    assert store.round_dir(run_dir, 2).joinpath(store.MANIFEST).stat().st_mtime_ns >= failed_at
    clean = run_sweep(spec, out=tmp_path / "clean", backend="sequential")
    assert (run_dir / "rounds.csv").read_text() == (Path(clean.cells[0].run_dir) / "rounds.csv").read_text()


def test_a_failed_teacher_fails_its_cells_and_a_rerun_resumes_it(tmp_path):
    spec = kd_sweep(tmp_path, retries=0)
    events = []
    res = run_sweep(spec, out=tmp_path / "runs", backend=FakeBackend({TEACHER: 1}), on_event=lambda c, s: events.append((c.name, s)))
    assert not res.ok and [c.status for c in res.cells] == ["failed", "failed"]
    error = f"teacher run failed: RuntimeError: simulated failure of {TEACHER} after round 1"
    assert [c.error for c in res.cells] == [error, error]
    assert [s for _, s in events] == ["teacher started", "teacher started", "teacher failed", "teacher failed", "failed", "failed"]
    assert [r["status"] for r in store.read_csv(res.sweep_dir / "summary.csv")] == ["failed", "failed"]
    teacher_dir = Path(res.cells[0].teacher_dir)
    assert store.finished_rounds(teacher_dir) == [0, 1]

    # run again: the teacher resumes at round 2 (its finished rounds untouched), then the students
    kept = _mtimes([store.round_dir(teacher_dir, 0), store.round_dir(teacher_dir, 1)])
    again = run_sweep(spec, out=tmp_path / "runs", backend="sequential")
    assert again.ok, [c.errors for c in again.cells]
    assert [(c.teacher_attempts, c.attempts) for c in again.cells] == [(1, 1), (1, 1)]
    assert _mtimes([store.round_dir(teacher_dir, 0), store.round_dir(teacher_dir, 1)]) == kept
    assert store.finished_rounds(teacher_dir) == [0, 1, 2]


def test_a_sweep_name_cannot_leave_the_output_folder():
    for bad in ("..", ".", "a/b"):
        with pytest.raises(UserError, match="name"):
            load_sweep("tiny_demo", [f"sweep.name={bad}"])


def test_non_finite_resources_are_refused():
    with pytest.raises(UserError, match="finite number"):
        load_sweep("tiny_demo", ["sweep.resources.num_cpus=.inf"])


def test_duplicate_and_oversized_grids_are_refused():
    with pytest.raises(UserError, match="same run as cell"):
        expand(load_sweep("tiny_demo", ["sweep.grid.seed=[0, 0.0]"]))
    with pytest.raises(UserError, match="more than 10,000"):
        expand(load_sweep("tiny_demo", [f"sweep.grid.seed={list(range(200))}", f"sweep.grid.noise.rate={[i / 1000 for i in range(100)]}"]))


@pytest.mark.parametrize(
    "preset, key, values",
    [
        ("methods_fmnist", "prune.criterion", {"magnitude", "magnitude_gradient", "snip", "random"}),
        ("schedules_fmnist", "prune.schedule", {"iterative", "one_shot", "gradual"}),
        ("noise_models_fmnist", None, None),
        ("distill_variants_fmnist", None, None),
    ],
)
def test_the_methods_presets_run_end_to_end_at_a_tiny_size(tmp_path, preset, key, values):
    """The field's-methods sweep presets (docs/results.md, "Pruning criteria and noise models"), on MNIST-1D
    in seconds: every cell finishes and the grid is the one the preset names."""
    tiny = ["dataset.name=mnist1d", "dataset.root=null", "dataset.train_subset=null", "dataset.val_size=500", "model.name=mlp"]
    tiny += ["model.hidden=[16,16]", "train.epochs=2", "prune.rounds=2", "prune.score_batches=1", "train.threads=1"]
    spec = load_sweep(preset, tiny)
    res = run_sweep(spec, out=tmp_path, backend="sequential")
    assert res.ok and len(res.cells) == len(expand(spec))
    rows = store.read_csv(res.sweep_dir / "all_rounds.csv")
    assert len(rows) == len(res.cells) * 3 and (key is None or {r[key] for r in rows} == values)


def test_a_pipeline_sweeps_students_are_named_by_their_run_id_and_found_after_a_move(tmp_path):
    """Before, a student's folder was named when its teacher did not exist yet, by an id that hashed
    the teacher's absolute path (not its run id, which meta.json records): the same sweep in two
    folders named its students differently, and running a moved sweep again trained every student anew."""
    import shutil

    spec = kd_sweep(tmp_path)
    res = run_sweep(spec, out=tmp_path / "runs", backend="sequential")
    assert res.ok
    for cell in res.cells:
        meta = store.read_json(Path(cell.run_dir) / "meta.json")
        assert Path(cell.run_dir).name.endswith(meta["config_hash"])
    shutil.copytree(tmp_path / "runs", tmp_path / "moved")
    shutil.rmtree(tmp_path / "runs")
    again = run_sweep(spec, out=tmp_path / "moved", backend="sequential")
    assert again.ok and [(c.teacher_attempts, c.attempts) for c in again.cells] == [(0, 0), (0, 0)]
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == sorted(
        [Path(res.cells[0].teacher_dir).name, *(Path(c.run_dir).name for c in res.cells), "kd"]
    )


def test_a_fused_pipeline_sweeps_students_are_named_by_their_run_id(tmp_path):
    from dsd2.cli import main

    args = ["sweep", "tiny_demo", "sweep.pipeline=true", "sweep.grid={seed: [0, 1]}", "--out", str(tmp_path), "--fuse"]
    assert main([*args, "--backend", "sequential"]) == 0
    students = [p for p in tmp_path.iterdir() if p.name.startswith("tiny_demo_seed-")]
    assert len(students) == 2
    for d in students:
        assert d.name.endswith(store.read_json(d / "meta.json")["config_hash"])
        assert store.read_json(store.round_dir(d, 1) / "metrics.json")["timing"]["fused"] == 2  # trained fused


@pytest.mark.parametrize(
    "plant, says",
    [
        ({"summary.csv": "my own table\n"}, "holds summary.csv but no sweep.json"),
        ({"sweep.json": "my notes\n", "summary.csv": "my own table\n"}, "not a dsd2 sweep's record"),
        ({"sweep.json": '{"spec": {}}\n'}, "no spec.name"),
    ],
)
def test_a_sweep_never_replaces_files_it_did_not_write(plant, says, tmp_path, capsys):
    """out/<sweep name>/ holding the user's own files: the sweep overwrote them (summary.csv,
    sweep.json) at the end; now it is refused before any run starts, and nothing is touched."""
    from dsd2.cli import main

    spec = write_sweep(tmp_path / "mine.yaml", name="mine", base="tiny_mnist1d", overrides=TINY, grid={"seed": [0]})
    folder = tmp_path / "runs" / "mine"
    folder.mkdir(parents=True)
    for name, text in plant.items():
        (folder / name).write_text(text)
    assert main(["sweep", str(spec), "--backend", "sequential", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and str(folder) in err and "another --out" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in folder.iterdir()) == sorted(plant)  # no lock, no run, no summary
    assert all((folder / n).read_text() == t for n, t in plant.items())
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mine"]
