"""The DSD² pipeline (teacher run → student run) and the offline comparisons built on run directories."""

import pytest

from dsd2 import compare, store, study
from dsd2.config import load_config
from dsd2.errors import UserError

from conftest import TINY


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    cfg = load_config("tiny_mnist1d", TINY + ["distill.alpha=0.9", "distill.temperature=4"])
    return cfg, out, study.run_pipeline(cfg, out=out)


def test_pipeline_chains_teacher_and_student(pair):
    cfg, out, (teacher_dir, student_dir, _) = pair
    scfg = load_config(student_dir / "config.yaml")
    assert scfg.distill.teacher == str(teacher_dir)
    assert (scfg.distill.alpha, scfg.distill.temperature) == (0.9, 4.0)
    assert scfg.name == f"{cfg.name}_dsd2"
    tcfg = load_config(teacher_dir / "config.yaml")
    assert tcfg.distill.teacher is None
    # same samples flipped in teacher and student
    a = store.load_tensors(teacher_dir / "labels.safetensors")
    b = store.load_tensors(student_dir / "labels.safetensors")
    assert all(a[k].equal(b[k]) for k in ("clean", "noisy", "flipped"))
    info = store.read_json(student_dir / "teacher.json")
    rows = store.read_csv(teacher_dir / "rounds.csv")
    assert info["round"] == compare.outcome("x", teacher_dir, rows, None, 1.0).selected_round


def test_pipeline_resumes_at_any_stage(pair, tmp_path):
    cfg, out, (teacher_dir, student_dir, _) = pair
    states = sorted(teacher_dir.glob("round_*/state.safetensors")) + sorted(student_dir.glob("round_*/state.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in states}
    csvs = {p: p.read_bytes() for p in (teacher_dir / "rounds.csv", student_dir / "rounds.csv")}
    assert study.run_pipeline(cfg, out=out) == (teacher_dir, student_dir, teacher_dir)
    assert {p: p.stat().st_mtime_ns for p in states} == before  # nothing retrained
    assert {p: p.read_bytes() for p in csvs} == csvs
    # student stage interrupted after its round 0: the pipeline retrains only the student's missing rounds
    import shutil

    shutil.rmtree(student_dir / "round_001")
    shutil.rmtree(student_dir / "round_002")
    assert study.run_pipeline(cfg, out=out) == (teacher_dir, student_dir, teacher_dir)
    assert (student_dir / "rounds.csv").read_bytes() == csvs[student_dir / "rounds.csv"]
    assert {p: p.stat().st_mtime_ns for p in states if teacher_dir in p.parents} == {
        p: t for p, t in before.items() if teacher_dir in p.parents
    }


def test_strategy_table_costs_and_selection(pair):
    cfg, out, (teacher_dir, student_dir, _) = pair
    table = {o.strategy: o for o in compare.strategy_table(teacher_dir, student_dir)}
    ex = table["vanilla, exhaustive"]
    vrows = store.read_csv(teacher_dir / "rounds.csv")
    assert ex.trained_until == len(vrows) - 1
    assert ex.pflops_dense == vrows[-1]["train_pflops_dense"]
    assert ex.units == pytest.approx(len(vrows))  # every vanilla round costs one dense run (same epochs)
    es = table["vanilla + early stop"]
    assert es.pflops_dense <= ex.pflops_dense
    dsd = table["DSD² + early stop"]
    incl = table["DSD² + early stop, incl. teacher IMP"]
    assert incl.pflops_dense == pytest.approx(dsd.pflops_dense + ex.pflops_dense)


def test_last_good_selection_keeps_the_sparsest_model_within_tolerance():
    acc = [0.76, 0.75, 0.745, 0.74, 0.745, 0.74, 0.735, 0.70, 0.60]
    rows = [{"round": i, "val_acc": a, "test_acc": a, "sparsity": 1 - 0.8**i} for i, a in enumerate(acc)]
    best = compare.decide(rows, "plain", tolerance=0.03)
    last = compare.decide(rows, "plain", tolerance=0.03, select="last_good")
    assert (best.stop_round, best.selected_round) == (7, 0)
    assert (last.stop_round, last.selected_round) == (7, 6)
    assert compare.decide(rows, "plain").stop_round == 1


def test_recovered_dip():
    rows = lambda acc: [{"round": i, "val_acc": a, "test_acc": a} for i, a in enumerate(acc)]  # noqa: E731
    sdd = compare.recovered_dip(rows([0.60, 0.58, 0.50, 0.55, 0.70, 0.62]))
    assert sdd.depth == pytest.approx(0.10) and sdd.trough == 2 and sdd.before == 0 and sdd.after == 4
    assert compare.recovered_dip(rows([0.7, 0.7, 0.69, 0.6, 0.4])).depth == 0.0
    assert compare.recovered_dip(rows([0.7])).depth == 0.0


def test_decide_errors(tmp_path):
    rows = [{"round": 0, "val_acc": 0.5, "test_acc": 0.5, "entropy": None}]
    with pytest.raises(UserError, match="entropy"):
        compare.decide(rows, "entropy")
    with pytest.raises(UserError, match="unknown stop rule"):
        compare.decide(rows, "magic")
    with pytest.raises(UserError, match="not a dsd2 run directory"):
        compare.load_rows(tmp_path)


@pytest.mark.slow
def test_parallel_pipelines_match_the_in_process_pipeline(pair, tmp_path, capfd):
    """Two pipelines in worker processes (the demo's path): same numbers as in-process, one
    progress line per round on stderr."""
    cfg, out, (teacher_dir, student_dir, _) = pair
    other = load_config("tiny_mnist1d", TINY + ["distill.alpha=0.9", "distill.temperature=4", "seed=1"])
    results = study.run_pipelines_parallel([cfg, other], out=tmp_path, jobs=2)
    (t0, s0), (t1, s1) = results
    assert t0.name == teacher_dir.name  # the student's id includes its teacher's path, which differs here
    assert (t0 / "rounds.csv").read_bytes() == (teacher_dir / "rounds.csv").read_bytes()
    assert (s0 / "rounds.csv").read_bytes() == (student_dir / "rounds.csv").read_bytes()
    assert store.read_json(s1 / "teacher.json")["run_dir"] == str(t1.resolve())
    err = capfd.readouterr().err
    assert f"[{cfg.name} seed 0] round  2" in err and f"[{cfg.name}_dsd2 seed 1] round  2" in err
