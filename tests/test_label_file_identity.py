"""dataset.label_file is data, like dataset.root (docs/run_directory.md, "Data identity"): its
path is a location (out of the run id, recorded absolute, overridable on an existing run), its
content is in meta.json's data fingerprint and checked at every start; runs named when the id
hashed the path (scheme 5 and before) are still found."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dsd2 import imp, rundir, store
from dsd2.cli import main
from dsd2.config import config_hash
from dsd2.errors import UserError

from conftest import TINY, tiny_config, write_mnist1d_label_file


def _write_labels(path, flip_every: int = 3):
    """A CIFAR-N style file for mnist1d: clean labels with every ``flip_every``-th one shifted."""
    write_mnist1d_label_file(path, flip_every)
    return path


def _labels_args(path):
    return ["noise.kind=none", f"dataset.label_file={path}", "dataset.label_key=worse_label"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A finished one-round run on a label file (given relative, from its folder)."""
    import os

    top = tmp_path_factory.mktemp("labelled")
    _write_labels(top / "data" / "labels.pt")
    here = os.getcwd()
    os.chdir(top)
    try:
        cfg = tiny_config("prune.rounds=1", *_labels_args("data/labels.pt"))
        run_dir = imp.run(cfg, top / "runs")
    finally:
        os.chdir(here)
    return top, cfg, run_dir


def test_the_label_files_path_is_out_of_the_id_and_its_presence_in():
    a = tiny_config(*_labels_args("a/labels.pt"))
    assert a.run_id() == tiny_config(*_labels_args("/elsewhere/b.pt")).run_id()
    assert a.run_id() != tiny_config("noise.kind=none").run_id()  # a run without one is another run
    # scheme 5 hashed the path as spelled: runs without a label file keep their id
    assert config_hash(a, version=5) != config_hash(a) and a.legacy_run_ids()[0] == f"{a.name}-{config_hash(a, version=5)}"
    plain = tiny_config()
    assert config_hash(plain, version=5) == config_hash(plain) and plain.run_id() not in plain.legacy_run_ids()


def test_a_new_run_records_the_label_file_absolute_and_its_content(labelled):
    top, cfg, run_dir = labelled
    saved = rundir.read_config(run_dir)
    assert saved.dataset.label_file == str(top / "data" / "labels.pt")
    meta = store.read_json(run_dir / "meta.json")
    assert meta["config_digest"] == saved.digest()  # the digest is of config.yaml as written
    assert meta["data"]["fingerprint"]["label_file"]["sha256"] == store.sha256_file(top / "data" / "labels.pt")
    # dropping the label file is another run, not a location
    with pytest.raises(UserError, match="dataset.label_file, dataset.label_key would change the numbers"):
        rundir.with_overrides(run_dir, ["dataset.label_file=null"])


def test_the_same_labels_at_another_path_are_the_same_run(labelled, tmp_path, capsys):
    top, cfg, run_dir = labelled
    mine = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, mine)
    moved = tmp_path / "elsewhere" / "copy.pt"
    moved.parent.mkdir()
    shutil.copy(top / "data" / "labels.pt", moved)
    args = ["run", "tiny_mnist1d", *TINY, "prune.rounds=1", *_labels_args(moved), "--out", str(tmp_path / "runs"), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"dataset.label_file now {moved}" in out and "the same content" in out and "showing it" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [mine.name]  # reused: no new folder
    change = store.read_json(mine / "meta.json")["execution_changes"][-1]
    assert change["changed"] == {"dataset.label_file": {"from": str(top / "data" / "labels.pt"), "to": str(moved)}}
    assert rundir.read_config(mine).dataset.label_file == str(moved)
    assert store.read_json(mine / "meta.json")["config_digest"] == rundir.read_config(mine).digest()
    # on the run directory too, and resume keeps it
    assert main(["run", str(mine), f"dataset.label_file={top / 'data' / 'labels.pt'}", "prune.rounds=2", "-q"]) == 0
    assert [r.round for r in rundir.read_rounds(mine)] == [0, 1, 2]
    assert main(["resume", str(mine), "-q"]) == 0


def test_other_labels_are_refused_in_one_line(labelled, tmp_path, capsys):
    top, cfg, run_dir = labelled
    mine = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, mine)
    before = {p.name: p.read_bytes() for p in (mine / "config.yaml", mine / "meta.json")}
    other = _write_labels(tmp_path / "other.pt", flip_every=4)
    assert main(["run", str(mine), f"dataset.label_file={other}", "-q"]) == 2
    err = capsys.readouterr().err
    assert "was trained on other data: dataset.label_file's content differs" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (mine / "config.yaml", mine / "meta.json")} == before  # nothing recorded
    # the same path, its content changed since: refused too
    changed = tmp_path / "changed.pt"
    shutil.copy(top / "data" / "labels.pt", changed)
    assert main(["run", str(mine), f"dataset.label_file={changed}", "prune.rounds=2", "-q"]) == 0  # same content: fine
    _write_labels(changed, flip_every=5)
    assert main(["resume", str(mine), "-q"]) == 2
    assert "dataset.label_file's content differs" in capsys.readouterr().err
    assert [r.round for r in rundir.read_rounds(mine)] == [0, 1, 2]


def test_a_label_file_gone_from_its_place_says_how_to_repoint_it(labelled, tmp_path, capsys):
    # before: "cannot read .../labels.pt to fingerprint it: No such file or directory", no word
    # of dataset.label_file nor of giving a moved file its new place
    top, cfg, run_dir = labelled
    mine = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, mine)
    gone = tmp_path / "gone.pt"
    shutil.copy(top / "data" / "labels.pt", gone)
    assert main(["run", str(mine), f"dataset.label_file={gone}", "-q"]) == 0
    moved = gone.rename(tmp_path / "moved.pt")
    before = {p.name: p.read_bytes() for p in (mine / "config.yaml", mine / "meta.json")}
    assert main(["resume", str(mine), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"dataset.label_file={gone} cannot be read" in err and "dataset.label_file=NEW" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (mine / "config.yaml", mine / "meta.json")} == before
    assert main(["resume", str(mine), f"dataset.label_file={moved}", "-q"]) == 0


def test_a_run_of_the_scheme_that_hashed_the_path_is_found(labelled, tmp_path, monkeypatch):
    """A folder named when the id hashed the label file's path as spelled (scheme 5), its
    config.yaml holding the relative path: the same command from the same folder finds it."""
    top, cfg, run_dir = labelled
    old = tmp_path / "runs" / f"{cfg.name}-{config_hash(cfg, version=5)}"
    shutil.copytree(run_dir, old)
    saved = rundir.read_config(old).resolved()
    saved["dataset"]["label_file"] = "data/labels.pt"  # as that scheme recorded it
    store.write_yaml(old / "config.yaml", saved)
    meta = store.read_json(old / "meta.json")
    from dsd2.config import validate_config

    store.write_json(
        old / "meta.json",
        {**meta, "config_hash": config_hash(cfg, version=5), "config_digest": validate_config(saved).digest()},
    )
    monkeypatch.chdir(top)
    assert rundir.run_dir_for(cfg, tmp_path / "runs") == old
    assert imp.run(tiny_config("prune.rounds=2", *_labels_args("data/labels.pt")), tmp_path / "runs") == old
    assert [r.round for r in rundir.read_rounds(old)] == [0, 1, 2]
    with pytest.raises(UserError, match="content differs"):
        _write_labels(tmp_path / "x.pt", flip_every=7)
        imp.run(tiny_config("prune.rounds=2", *_labels_args(tmp_path / "x.pt")), tmp_path / "runs")


def test_a_moved_study_with_its_label_file(tmp_path, monkeypatch):
    """Study and labels move together; the teacher is repointed to the labels first (its digest,
    which counts the label file's path, is recorded anew), then the student to both: still its
    teacher (the teacher's earlier digest is in its execution_changes)."""
    from dsd2 import study

    monkeypatch.chdir(tmp_path)
    _write_labels(tmp_path / "old" / "data" / "labels.pt")
    s = study.run_pipeline(tiny_config("prune.rounds=1", *_labels_args("old/data/labels.pt")), out=Path("old/pp"))
    shutil.copytree("old", "new")
    shutil.rmtree("old")
    teacher, student = Path("new/pp") / Path(s.teacher).name, Path("new/pp") / Path(s.student).name
    labels = tmp_path / "new" / "data" / "labels.pt"
    assert main(["run", str(teacher), f"dataset.label_file={labels}", "-q"]) == 0
    assert "config_digest" in store.read_json(teacher / "meta.json")["execution_changes"][-1]
    args = [f"distill.teacher={teacher}", f"dataset.label_file={labels}", "prune.rounds=2", "-q"]
    assert main(["resume", str(student), *args]) == 0
    assert [r.round for r in rundir.read_rounds(student)] == [0, 1, 2]
    changed = store.read_json(student / "meta.json")["execution_changes"][-1]["changed"]
    assert sorted(changed) == ["dataset.label_file", "distill.teacher"]
