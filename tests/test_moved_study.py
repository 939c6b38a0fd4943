"""A moved study (docs/run_directory.md, "Overrides on an existing run"): a student names its
teacher by path; when the study folder moves, the new path of the same teacher (same folder name
and recorded config digest) is a location change, recorded like dataset.root; another teacher is
refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import dsd2
from dsd2 import rundir, store, study
from dsd2.cli import main
from dsd2.errors import UserError

from conftest import tiny_config


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A one-round study made in ``<a>/pp`` (`dsd2 pipeline --out pp`; the student records its
    teacher as ``<a>/pp/<teacher>``), its copy in ``<b>/moved``, and the reference: the unmoved student extended to 2 rounds.
    The original is deleted: the student's recorded teacher path no longer resolves."""
    import os

    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    here = os.getcwd()
    os.chdir(a)
    try:
        s = study.run_pipeline(tiny_config("prune.rounds=1"), out=Path("pp"))
        shutil.copytree(a / "pp", b / "moved")
        assert main(["run", str(s.student), "prune.rounds=2", "-q"]) == 0  # the unmoved study, extended
        reference = (a / s.student / "rounds.csv").read_bytes()
    finally:
        os.chdir(here)
    shutil.rmtree(a / "pp")
    return b / "moved" / Path(s.teacher).name, b / "moved" / Path(s.student).name, reference


def _copy(student: Path, tmp_path: Path) -> Path:
    """The moved study's student, copied (each test changes its own)."""
    out = tmp_path / student.name
    shutil.copytree(student, out)
    return out


def test_a_moved_student_says_how_to_give_its_teachers_new_place(moved, capsys):
    _, student, _ = moved
    assert main(["resume", str(student), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is not there (a moved study?)" in err and "distill.teacher=NEW_DIR" in err and len(err.strip().splitlines()) == 1
    assert main(["show", str(student)]) == 0  # shown as it is


def test_repointing_a_moved_student_extends_it_as_the_unmoved_one(moved, tmp_path, capsys):
    teacher, student, reference = moved
    mine = _copy(student, tmp_path)
    assert main(["run", str(mine), f"distill.teacher={teacher}", "prune.rounds=2", "-q"]) == 0
    assert (mine / "rounds.csv").read_bytes() == reference
    change = store.read_json(mine / "meta.json")["execution_changes"][-1]
    assert change["round"] == 2 and change["changed"]["distill.teacher"]["to"] == str(teacher)
    assert change["changed"]["distill.teacher"]["from"].endswith(f"/pp/{teacher.name}")  # recorded absolute at the start
    cfg = rundir.read_config(mine)
    assert cfg.distill.teacher == str(teacher) and cfg.digest() == store.read_json(mine / "meta.json")["config_digest"]
    assert cfg.run_id() == student.name  # the same run
    capsys.readouterr()
    assert main(["resume", str(mine), "-q"]) == 0  # config.yaml names the new place from now on
    assert "showing it" in capsys.readouterr().out


def test_a_moved_student_resumes_through_the_api(moved, tmp_path):
    teacher, student, reference = moved
    mine = _copy(student, tmp_path)
    assert mine.name == student.name
    res = dsd2.resume(mine, [f"distill.teacher={teacher}", "prune.rounds=2"], progress=False)
    assert (res.run_dir / "rounds.csv").read_bytes() == reference
    # the same teacher given under another spelling of the same new place: no change to record
    assert dsd2.resume(mine, [f"distill.teacher={teacher}/"], progress=False).run_dir == mine


def test_another_teacher_is_refused_by_name(moved, tmp_path, capsys):
    teacher, student, _ = moved
    mine = _copy(student, tmp_path)
    before = {p.name: p.read_bytes() for p in (mine / "config.yaml", mine / "meta.json")}
    # another folder name
    other = tmp_path / "tiny_mnist1d-0000000000"
    shutil.copytree(teacher, other)
    assert main(["run", str(mine), f"distill.teacher={other}", "-q"]) == 2
    err = capsys.readouterr().err
    assert "is another teacher: run tiny_mnist1d-0000000000" in err and len(err.strip().splitlines()) == 1
    # no run there
    assert main(["resume", str(mine), f"distill.teacher={tmp_path / 'nothing'}", "-q"]) == 2
    assert "no dsd2 run there" in capsys.readouterr().err
    # the same folder name, another curve (extended since: another config digest)
    longer = tmp_path / "ext" / teacher.name
    shutil.copytree(teacher, longer)
    assert main(["run", str(longer), "prune.rounds=2", "-q"]) == 0
    capsys.readouterr()
    with pytest.raises(UserError, match="another curve than the teacher"):
        rundir.with_overrides(mine, [f"distill.teacher={longer}"])
    assert {p.name: p.read_bytes() for p in (mine / "config.yaml", mine / "meta.json")} == before  # nothing changed


def test_a_moved_student_of_several_teachers(tmp_path, monkeypatch):
    """distill.teachers: each entry's run moves; the list as a whole is given again."""
    monkeypatch.chdir(tmp_path)
    teacher = study.run_pipeline(tiny_config("prune.rounds=1"), out=Path("pp")).teacher
    spec = f"distill.teachers=[{{run: {teacher}, round: dense}}, {{run: {teacher}, round: best}}]"
    student = dsd2.run(tiny_config("name=multi", "prune.rounds=1", spec), out=Path("pp"), progress=False).run_dir
    shutil.copytree("pp", "moved")
    shutil.rmtree("pp")
    mine, new = Path("moved") / Path(student).name, tmp_path / "moved" / Path(teacher).name
    with pytest.raises(UserError, match="a moved study"):
        dsd2.resume(mine, ["prune.rounds=2"], progress=False)
    moved_spec = f"distill.teachers=[{{run: {new}, round: dense}}, {{run: {new}, round: best}}]"
    res = dsd2.resume(mine, [moved_spec, "prune.rounds=2"], progress=False)
    assert [r.round for r in res.rows] == [0, 1, 2]
    changed = store.read_json(mine / "meta.json")["execution_changes"][-1]["changed"]
    assert sorted(changed) == ["distill.teachers[0].run", "distill.teachers[1].run"]
    with pytest.raises(UserError, match="distill.teachers.* would change the numbers"):
        rundir.with_overrides(mine, [f"distill.teachers=[{{run: {new}, round: best}}]"])  # another list: another run


def test_a_teachers_earlier_digests_stop_at_an_extension(tmp_path):
    """Followed back from today's digest through location changes only: a digest from before an
    extension (another curve) never proves a moved teacher."""
    store.write_json(
        tmp_path / "meta.json",
        {
            "config_digest": "D",
            "execution_changes": [
                {"changed": {"dataset.label_file": {}}, "config_digest": {"from": "A", "to": "B"}},
                # an extension took B to C here (meta.json's "extensions", not execution_changes)
                {"changed": {"train.threads": {"from": 1, "to": 2}}},
                {"changed": {"dataset.label_file": {}}, "config_digest": {"from": "C", "to": "D"}},
            ],
        },
    )
    assert rundir.moved._digests_before_moves(tmp_path, "D") == ["C"]
    assert rundir.moved._digests_before_moves(tmp_path, "B") == []  # not today's digest: nothing follows


def test_a_student_made_with_a_relative_teacher_path_extends_from_another_folder(tmp_path, monkeypatch):
    """Nothing moved: the student's teacher is recorded absolute, as dataset.root is. Before, a
    study made with `dsd2 pipeline --out pp` recorded distill.teacher=pp/<teacher>, and extending
    the student from any other folder was refused as 'a moved study?'."""
    monkeypatch.chdir(tmp_path)
    s = study.run_pipeline(tiny_config("prune.rounds=1"), out=Path("pp"))
    student = tmp_path / s.student
    assert rundir.read_config(student).distill.teacher == str(tmp_path / s.teacher)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(student), "prune.rounds=2", "-q"]) == 0
    assert [r.round for r in rundir.read_rounds(student)] == [0, 1, 2]
    assert "execution_changes" not in store.read_json(student / "meta.json")  # nothing moved, nothing recorded
    monkeypatch.chdir(tmp_path)  # the pipeline again, as it was given: the same finished runs
    again = study.run_pipeline(tiny_config("prune.rounds=1"), out=Path("pp"))
    assert Path(again.student).name == student.name and "execution_changes" not in store.read_json(student / "meta.json")


def test_a_report_of_a_moved_study_pairs_the_student_with_its_teacher(moved):
    # before: teacher.json names the teacher's old folder, so the report of the moved study lost
    # the pairing (no teacher role, no "vanilla vs DSD² student" compute figure)
    from dsd2.report.data import load_runs, teacher_of

    teacher, student, _ = moved
    runs = load_runs([teacher, student])
    t, s = runs
    assert (t.role, s.role) == ("teacher", "student") and teacher_of(s, runs) is t


def test_compare_of_a_moved_study_counts_its_teachers_cost(moved):
    # before: 'dsd2 compare TEACHER STUDENT' of a moved study failed on the teacher's old folder
    # (teacher.json's run_dir: "... is not a dsd2 run directory"), and the report dropped the row
    from dsd2 import compare

    teacher, student, _ = moved
    rows = {o.strategy: o for o in compare.strategy_table(teacher, student)}
    with_teacher = rows["DSD² + early stop, incl. teacher IMP"]
    assert with_teacher.pflops_dense > rows["DSD² + early stop"].pflops_dense
