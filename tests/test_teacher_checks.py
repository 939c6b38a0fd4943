"""A student's teacher: whole curve for the best-fit choice, same task, unchanged since the student started."""

import shutil

import pytest

from dsd2 import imp, store, study
from dsd2.config import load_config
from dsd2.errors import UserError

from conftest import tiny_config


def tiny(*extra):
    return tiny_config("model.hidden=[16]", "entropy.enabled=false", *extra)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return imp.run(tiny("name=teacher"), tmp_path_factory.mktemp("t"))


def student(teacher_dir, *extra):
    return tiny("name=student", f"distill.teacher={teacher_dir}", "prune.rounds=0", *extra)


def test_best_round_needs_the_whole_teacher_curve(teacher, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(teacher, cut)
    shutil.rmtree(store.round_dir(cut, 2))
    with pytest.raises(UserError, match=r"whole curve.*2 of 3 rounds"):
        imp.run(student(cut), tmp_path)
    # an explicit finished round is fine
    imp.run(student(cut, "distill.round=1"), tmp_path)


def test_early_stopped_teacher_is_refused_for_best(teacher, tmp_path):
    cut = tmp_path / "stopped"
    shutil.copytree(teacher, cut)
    shutil.rmtree(store.round_dir(cut, 2))
    store.write_json(cut / "early_stop.json", {"rule": "plain", "stop_round": 1, "selected_round": 0})
    with pytest.raises(UserError, match="early_stop rule stopped it"):
        imp.run(student(cut), tmp_path)


def test_running_teacher_is_refused_for_best(teacher, tmp_path):
    with store.run_lock(teacher):
        with pytest.raises(UserError, match="still running"):
            imp.run(student(teacher), tmp_path)


def test_student_with_other_noise_or_subset_is_refused(teacher, tmp_path):
    with pytest.raises(UserError, match="noisy labels"):
        imp.run(student(teacher, "noise.rate=0.3"), tmp_path)
    with pytest.raises(UserError, match="training samples"):
        imp.run(student(teacher, "dataset.val_size=400"), tmp_path)
    with pytest.raises(UserError, match="normalisation"):
        imp.run(student(teacher, "dataset.mean=[0.1]", "dataset.std=[1.0]"), tmp_path)


def test_teacher_changed_since_the_student_started_is_refused(teacher, tmp_path):
    t = tmp_path / "teacher"
    shutil.copytree(teacher, t)
    cfg = tiny("name=student", f"distill.teacher={t}", "prune.rounds=1")
    run_dir = imp.run(cfg, tmp_path)
    info = store.read_json(run_dir / "teacher.json")
    assert len(info["digest"]) == 64 and info["rounds_seen"] == 3
    # the teacher's last round is recomputed (other weights): the student must not mix teachers
    shutil.rmtree(store.round_dir(run_dir, 1))
    state = store.round_dir(t, 2) / "state.safetensors"
    tensors = store.load_tensors(state)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    store.save_tensors(state, tensors)
    store.write_manifest(store.round_dir(t, 2), ["state.safetensors", "masks.safetensors", "metrics.json"])
    with pytest.raises(UserError, match="changed since this student started"):
        imp.run(cfg, tmp_path)


def test_teacher_config_has_no_kd_and_no_early_stop():
    cfg = tiny("distill.alpha=0.5", "distill.temperature=4", "early_stop.rule=plain")
    t = study.teacher_config(cfg, name="t")
    assert t.distill == type(t.distill)() and t.early_stop.rule == "none" and t.name == "t"
    # the student's KD choices never change the teacher's run id
    assert study.teacher_config(tiny("distill.alpha=0.9"), name="t").run_id() == t.run_id()


def test_split_seed_fixes_the_data_across_seeds(tmp_path):
    from dsd2.imp import build_data

    a, b = (build_data(tiny(f"seed={s}", "dataset.split_seed=7")) for s in (0, 1))
    assert a.train_idx.equal(b.train_idx)
    c = build_data(tiny("seed=1"))  # default: the run seed draws the split
    assert not a.train_idx.equal(c.train_idx)


def test_student_init_shared_or_independent(teacher, tmp_path):
    init = store.load_tensors(teacher / "init.safetensors")
    shared = imp.run(student(teacher, "distill.round=dense"), tmp_path / "a")
    indep = imp.run(student(teacher, "distill.round=dense", "distill.student_init=independent"), tmp_path / "b")
    same = store.load_tensors(shared / "init.safetensors")
    other = store.load_tensors(indep / "init.safetensors")
    assert all(same[k].equal(init[k]) for k in init)
    assert not all(other[k].equal(init[k]) for k in init)
    assert store.read_json(indep / "meta.json")["init_seed"] != store.read_json(shared / "meta.json")["init_seed"]


def test_pipeline_teacher_trains_its_whole_curve_and_only_the_student_stops_early(tmp_path):
    cfg = tiny("early_stop.rule=plain", "early_stop.tolerance=0", "prune.rounds=3")
    runs = study.run_pipeline(cfg, out=tmp_path)
    assert store.finished_rounds(runs.teacher) == [0, 1, 2, 3]
    assert not (runs.teacher / "early_stop.json").exists()
    scfg = load_config(runs.student / "config.yaml")
    assert scfg.early_stop.rule == "plain"
    assert (runs.student / "early_stop.json").is_file()
