"""A run's identity (docs/run_directory.md, "Run id"): the id hashes exactly the settings that can
change the run's numbers in its mode; the data a run read is fingerprinted; overrides on an
existing run are used or refused, never dropped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dsd2 import imp, study
from dsd2.config import config_hash, differing_settings, unused_options
from dsd2.config.identity import teacher_identity

from conftest import tiny_config


def _dirs(out):
    return sorted(p.name for p in out.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------- settings identity


@pytest.mark.parametrize(
    "overrides",
    [
        ["distill.alpha=0.3", "distill.temperature=2", "distill.round=dense", "distill.student_init=independent"],
        ["noise.class_map={0: 1}", "noise.instance_std=0.3"],  # symmetric noise reads neither
        ["prune.gradual_start=1", "prune.gradual_end=2"],  # iterative schedule
        ["prune.rewind_epoch=0", "prune.finetune_lr=0.5", "prune.finetune_epochs=3"],  # lr_rewind
        ["prune.score_batches=2"],  # magnitude criterion
        ["train.momentum=0.5"],  # adam (the tiny preset's optimizer)
        ["train.milestones=[0.1, 0.2]", "train.lr_decay=0.5"],  # cosine schedule
        ["early_stop.patience=3", "early_stop.tolerance=0.1", "early_stop.select=last_good"],  # no stop rule
        ["dataset.label_key=worse_label"],  # no label file
    ],
)
def test_options_of_an_unselected_choice_leave_the_run_id(overrides):
    base = tiny_config()
    cfg = tiny_config(*overrides)
    assert cfg.run_id() == base.run_id(), overrides
    assert differing_settings(base, cfg) == []
    # the older scheme hashed them: its id still finds the folders it named
    assert f"{cfg.name}-{config_hash(cfg, version=3)}" in cfg.legacy_run_ids()


@pytest.mark.parametrize(
    "choice, option",
    [
        (["noise.kind=asymmetric"], "noise.class_map={0: 1}"),
        (["noise.kind=instance"], "noise.instance_std=0.3"),
        (["prune.schedule=gradual"], "prune.gradual_start=1"),
        (["prune.retrain=late_rewind", "train.epochs=3"], "prune.rewind_epoch=2"),
        (["prune.retrain=finetune"], "prune.finetune_lr=0.5"),
        (["prune.criterion=snip", "prune.allocation=global"], "prune.score_batches=2"),
        (["train.optimizer=sgd"], "train.momentum=0.5"),
        (["train.schedule=multistep"], "train.lr_decay=0.5"),
        (["early_stop.rule=plain"], "early_stop.patience=3"),
        (["distill.teacher=some/run"], "distill.alpha=0.3"),
        (["noise.kind=none"], "seed=3"),
    ],
)
def test_options_of_the_selected_choice_stay_in_the_run_id(choice, option):
    a, b = tiny_config(*choice), tiny_config(*choice, option)
    assert a.run_id() != b.run_id()
    assert differing_settings(a, b) == [option.split("=")[0]]


def test_a_split_seed_equal_to_the_seed_is_the_same_run():
    assert tiny_config("dataset.split_seed=0").run_id() == tiny_config().run_id()
    assert tiny_config("dataset.split_seed=1", "seed=1").run_id() == tiny_config("seed=1").run_id()
    assert tiny_config("dataset.split_seed=0", "seed=1").run_id() != tiny_config("seed=1").run_id()


def test_every_distill_setting_of_a_run_without_a_teacher_is_unused():
    assert {k for s, k in unused_options(tiny_config()) if s == "distill"} == {
        "teacher",
        "round",
        "teachers",
        "feature",
        "alpha",
        "temperature",
        "student_init",
    }


def test_pipeline_after_a_plain_run_reuses_it_as_the_teacher(tmp_path):
    """The plain run of a preset that sets distill.alpha (as demo_fmnist does) is the pipeline's
    teacher: only the student's folder is made, and the teacher's rounds are not retrained."""
    cfg = tiny_config("distill.alpha=0.9", "distill.temperature=4")
    plain = imp.run(cfg, tmp_path)
    states = {p: p.stat().st_mtime_ns for p in plain.glob("round_*/state.safetensors")}
    csv = (plain / "rounds.csv").read_bytes()
    s = study.run_pipeline(cfg, out=tmp_path)
    assert s.teacher == plain
    assert _dirs(tmp_path) == sorted([plain.name, s.student.name])
    assert {p: p.stat().st_mtime_ns for p in states} == states
    assert (plain / "rounds.csv").read_bytes() == csv


def test_pipeline_reuses_a_plain_run_named_by_the_older_scheme(tmp_path):
    """A plain run made before unused options left the id (its folder has the third scheme's id)
    is still found as the pipeline's teacher: its saved config has the same settings."""
    cfg = tiny_config("distill.alpha=0.9", "prune.rounds=1")
    plain = imp.run(cfg, tmp_path)
    old = tmp_path / f"{cfg.name}-{config_hash(cfg, version=3)}"
    assert old != plain
    shutil.move(plain, old)
    s = study.run_pipeline(cfg, out=tmp_path)
    assert s.teacher == old
    assert _dirs(tmp_path) == sorted([old.name, s.student.name])


def test_a_sweep_cell_equal_to_an_earlier_run_is_that_run(tmp_path):
    """build_jobs gives a cell the directory `dsd2 run` would use: an earlier run of the same
    settings, even one named by an older id scheme, is that cell's job (and counts as finished)."""
    import yaml

    from dsd2.sweep import build_jobs, expand, load_sweep, run_is_finished

    from conftest import TINY

    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump({"name": "s", "base": "tiny_mnist1d", "overrides": [*TINY, "distill.alpha=0.9"], "grid": {"seed": [0, 1]}})
    )
    spec = load_sweep(path)
    cells = expand(spec)
    out = tmp_path / "runs"
    earlier = imp.run(cells[0].config, out)
    old = out / f"{cells[0].config.name}-{config_hash(cells[0].config, version=3)}"
    shutil.move(earlier, old)
    jobs, cell_jobs = build_jobs(spec, cells, out)
    first = jobs[cell_jobs[0][0]]
    assert first.run_dir == old and run_is_finished(first.config, first.run_dir)
    assert jobs[cell_jobs[1][0]].run_dir == out / cells[1].config.run_id()


# ----------------------------------------------------------------------------- data identity


def _folder_config(root, *extra):
    from dsd2.config import load_config

    return load_config(
        None,
        [
            "name=imf",
            "dataset.name=image_folder",
            f"dataset.root={root}",
            "dataset.image_size=16",
            "dataset.loader=stream",
            "dataset.workers=0",
            "dataset.val_size=6",
            "model.name=lenet5",
            "train.epochs=1",
            "train.batch_size=8",
            "train.optimizer=adam",
            "train.lr=0.001",
            "train.schedule=constant",
            "train.device=cpu",
            "prune.rounds=0",
            "noise.rate=0.2",
            "entropy.enabled=false",
            *extra,
        ],
    )


@pytest.fixture
def folder_run(tmp_path):
    from dsd2.data.testing import write_image_folder

    root = tmp_path / "imgs"
    write_image_folder(root, n_train=4, n_test=2)
    run_dir = imp.run(_folder_config(root), tmp_path / "runs")
    return root, run_dir


def test_a_copied_image_folder_is_the_same_run(folder_run, tmp_path):
    """Moving or copying the data keeps the run: the copy (other mtimes) finds the finished run,
    trains nothing, and the run records the new folder (config.yaml, meta.json)."""
    from dsd2 import rundir, store

    root, run_dir = folder_run
    copy = tmp_path / "elsewhere" / "imgs"
    shutil.copytree(root, copy)  # copytree keeps mtimes: make them differ, as a plain cp does
    for p in copy.rglob("*.*"):
        p.touch()
    state = (run_dir / "round_000" / "state.safetensors").stat().st_mtime_ns
    assert imp.run(_folder_config(copy), tmp_path / "runs") == run_dir
    assert (run_dir / "round_000" / "state.safetensors").stat().st_mtime_ns == state
    assert rundir.read_config(run_dir).dataset.root == str(copy)
    meta = store.read_json(run_dir / "meta.json")
    assert meta["execution_changes"][-1]["changed"] == {"dataset.root": {"from": str(root), "to": str(copy)}}
    fp = meta["data"]["fingerprint"]["images"]
    assert fp["files"] == 18 and fp["content"] == "whole"


def test_a_relative_data_folder_given_to_an_existing_run_is_recorded_absolute(folder_run, tmp_path, monkeypatch):
    """`dsd2 run RUN dataset.root=imgs` from the folder holding imgs/: config.yaml and meta.json
    record where the data is, so a later resume from another folder finds it."""
    from dsd2 import rundir, store

    root, run_dir = folder_run
    copy = tmp_path / "elsewhere" / "imgs"
    shutil.copytree(root, copy)
    monkeypatch.chdir(copy.parent)
    assert imp.run(_folder_config("imgs"), tmp_path / "runs") == run_dir
    assert rundir.read_config(run_dir).dataset.root == str(copy)
    assert store.read_json(run_dir / "meta.json")["execution_changes"][-1]["changed"]["dataset.root"]["to"] == str(copy)


def test_a_new_run_records_a_relative_data_folder_absolute_under_the_same_id(tmp_path, monkeypatch):
    """`dsd2 run` with dataset.root=imgs (and a transition matrix from a relative file) from the
    folder holding them: config.yaml records both absolute, the run id is the one of the relative
    spelling, and a resume from another folder finds the data."""
    from dsd2 import rundir, store
    from dsd2.data.testing import write_image_folder

    work = tmp_path / "work"
    write_image_folder(work / "imgs", n_train=4, n_test=2)
    (work / "m.yaml").write_text("[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]\n")
    monkeypatch.chdir(work)
    cfg = _folder_config("imgs", "noise.kind=transition", "noise.matrix=m.yaml")
    assert cfg.dataset.root == "imgs" and cfg.noise.matrix_file == "m.yaml"
    run_dir = imp.run(cfg, tmp_path / "runs")
    assert run_dir.name == cfg.run_id()
    saved = rundir.read_config(run_dir)
    assert saved.dataset.root == str(work / "imgs") and saved.noise.matrix_file == str(work / "m.yaml")
    assert saved.run_id() == cfg.run_id() and saved.digest() == cfg.digest()
    monkeypatch.chdir(tmp_path)
    assert imp.resume(run_dir) == run_dir  # found from elsewhere: nothing left to train, no error
    monkeypatch.chdir(work)
    assert imp.run(_folder_config("imgs", "noise.kind=transition", "noise.matrix=m.yaml"), tmp_path / "runs") == run_dir
    assert "execution_changes" not in store.read_json(run_dir / "meta.json")  # the same folder, spelled relative


@pytest.mark.parametrize("edit", ["pixel", "remove", "add"])
def test_other_data_never_reuses_a_run(folder_run, tmp_path, edit):
    """One changed image, a removed or an added one: refused with one line saying what changed;
    nothing of the run is touched."""
    from PIL import Image

    from dsd2.errors import UserError

    root, run_dir = folder_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    image = sorted((copy / "train" / "bee").iterdir())[0]
    if edit == "pixel":
        with Image.open(image) as im:
            im = im.convert("RGB")
            im.putpixel((0, 0), tuple(255 - v for v in im.getpixel((0, 0))))
            im.save(image)
        expected = "train/bee: files changed or renamed"
    elif edit == "remove":
        image.unlink()
        expected = "train/bee: 1 file removed"
    else:
        shutil.copy(image, image.with_name("extra.png"))
        expected = "train/bee: 1 file added"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != ".lock"}
    with pytest.raises(UserError, match="trained on other data") as err:
        imp.run(_folder_config(copy), tmp_path / "runs")
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != ".lock"} == before


def test_label_file_and_teacher_fingerprints():
    from dsd2.data.fingerprint import fingerprint_mismatch

    a = {"label_file": {"sha256": "a" * 64, "bytes": 3}}
    assert fingerprint_mismatch(a, a) is None
    assert "label_file's content differs" in fingerprint_mismatch(a, {"label_file": {"sha256": "b" * 64, "bytes": 3}})
    assert fingerprint_mismatch({}, a) is None  # a run recorded before fingerprints: nothing to compare


# ----------------------------------------------------------------------------- overrides on an existing run


@pytest.mark.slow
def test_execution_overrides_apply_to_a_resumed_run_and_are_recorded(tmp_path):
    """train.threads=2 on an unfinished run trains its next rounds with 2 threads (timings.csv),
    and meta.json says from which round; the run id and the rounds trained before are the same."""
    from dsd2 import rundir, store

    from conftest import run_interrupted

    cfg = tiny_config("train.threads=1")
    run_dir = run_interrupted(cfg, tmp_path, after_round=0)
    assert imp.run(tiny_config("train.threads=2"), tmp_path) == run_dir
    threads = [int(r["threads"]) for r in store.read_csv(run_dir / "timings.csv")]
    assert threads == [1, 2, 2]
    meta = store.read_json(run_dir / "meta.json")
    assert meta["execution_changes"] == [
        {"at": meta["execution_changes"][0]["at"], "round": 1, "changed": {"train.threads": {"from": 1, "to": 2}}}
    ]
    assert rundir.read_config(run_dir).train.threads == 2  # a later `dsd2 resume` keeps it


def test_run_dir_overrides_are_used_or_refused_naming_them(tmp_path, capsys):
    from dsd2 import store
    from dsd2.cli import main

    from conftest import TINY

    out = tmp_path / "runs"
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(out), "-q"]) == 0
    (run_dir,) = out.iterdir()
    capsys.readouterr()
    assert main(["run", str(run_dir), "train.lr=0.5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "train.lr would change the numbers" in err and "config.yaml train.lr=0.5" in err
    assert main(["run", str(run_dir), "distill.alpha=0.5", "-q"]) == 2
    assert "distill.alpha: not read by the run" in capsys.readouterr().err
    # top-level keys: one line each, no traceback; the folder keeps its name
    assert main(["run", str(run_dir), "name=other", "-q"]) == 2
    err = capsys.readouterr().err
    assert "name names the run directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["run", str(run_dir), "plugins=[os]", "-q"]) == 2
    assert "plugins: not read by the run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [run_dir.name]
    assert main(["run", str(run_dir), "train.eval_batch_size=77", "-q"]) == 0
    text = capsys.readouterr().out
    assert "finished on " in text and ", 2 rounds; showing it" in text
    assert text.index("showing it") < text.index("sparsity")  # the note comes before the table
    meta = store.read_json(run_dir / "meta.json")
    assert meta["execution_changes"][-1]["changed"] == {"train.eval_batch_size": {"from": 1000, "to": 77}}


def test_run_on_a_finished_run_says_so_before_the_table(tmp_path, capsys):
    from dsd2.cli import main

    from conftest import TINY

    args = ["run", "tiny_mnist1d", *TINY, "--out", str(tmp_path), "-q"]
    assert main(args) == 0
    assert "showing it" not in capsys.readouterr().out  # trained now: nothing to say
    assert main(args) == 0
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert first.startswith("finished on ") and first.endswith(", 2 rounds; showing it")
    assert main([*args, "prune.rounds=3"]) == 0  # an extension trains: no note
    assert "showing it" not in capsys.readouterr().out


def test_the_finished_note_counts_one_round_in_the_singular(tmp_path):
    from dsd2 import rundir

    cfg = tiny_config("prune.rounds=1")
    run_dir = imp.run(cfg, tmp_path)
    assert rundir.finished_note(cfg, run_dir).endswith(", 1 round; showing it")


# ----------------------------------------------------------------------------- the decision table
#
# Every config field, and what the run id does with it. A field added to the schema without a
# line here fails test_every_config_field_has_an_identity_decision: decide, then add it.
#   "id"         hashed (when away from its default)
#   "execution"  where / how the run executes: out of the id, usable on an existing run (EXECUTION_FIELDS)
#   "record"     set on loading, a record of where a value came from (the value itself is hashed)
#   "name"       the id's prefix (name) or not a setting (plugins: the names they register are hashed)
#   "rounds"     out of the id: more rounds extend the same curve (the digest counts it)
#   ("mode", unused_in, used_in): hashed only when the run's choices read it (config.unused_options);
#                overrides of a tiny config where it is unused, and where it is used
TEACHER = ["distill.teacher=some/run"]
DECISIONS: dict[str, object] = {
    "plugins": "name",
    "name": "name",
    "seed": "id",
    "dataset.name": "id",
    "dataset.root": "execution",
    "dataset.download": "execution",
    "dataset.val_size": "id",
    "dataset.train_subset": "id",
    "dataset.split_seed": "id",  # equal to the seed: the same data seed as None, the same id
    "dataset.augment": "id",
    "dataset.label_file": "execution",  # its path (a location); its content is in the data fingerprint (meta.json)
    "dataset.label_key": ("mode", [], ["dataset.label_file=labels.pt", "noise.kind=none"]),
    "dataset.soft_labels": "id",  # valid only with a label file
    "dataset.mean": "id",
    "dataset.std": "id",
    "dataset.image_size": "id",  # image_folder only (other loaders refuse it)
    "dataset.loader": "id",
    "dataset.follow_links": "id",  # links out of the root may add images: another sample set
    "dataset.memory_budget_gb": ("mode", ["dataset.loader=memory"], []),
    "dataset.workers": "execution",
    "noise.kind": "id",
    "noise.rate": ("mode", ["noise.kind=none"], []),
    "noise.class_map": ("mode", [], ["noise.kind=asymmetric"]),
    "noise.matrix": "id",  # valid only with noise.kind=transition
    "noise.options": "id",  # valid only with a plugin kind registered with an options model (which reads them)
    "noise.matrix_file": "record",
    "noise.matrix_sha256": "record",
    "noise.instance_std": ("mode", [], ["noise.kind=instance"]),
    "noise.probe": "id",  # flips more labels: another experiment (docs/noise.md, "Memorisation probe")
    "model.name": "id",
    "model.<option>": "id",
    "train.epochs": "id",
    "train.batch_size": "id",
    "train.optimizer": "id",
    "train.optimizer_options": "id",  # valid only with a plugin optimizer registered with an options model (which reads them)
    "train.lr": "id",
    "train.momentum": ("mode", ["train.optimizer=adam"], ["train.optimizer=sgd"]),
    "train.weight_decay": "id",
    "train.schedule": "id",
    "train.schedule_options": "id",  # likewise for a plugin lr schedule
    "train.milestones": ("mode", ["train.schedule=cosine"], ["train.schedule=multistep"]),
    "train.lr_decay": ("mode", ["train.schedule=cosine"], ["train.schedule=multistep"]),
    "train.warmup_epochs": "id",
    "train.eval_batch_size": "execution",
    "train.device": "execution",  # GPU: numbers differ from the CPU's, yet a device is where a run executes
    "train.amp": "id",  # GPU only: bf16 autocast is ignored on CPU
    "train.compile": "execution",  # not bitwise equal to eager mode, left out like the device
    "train.channels_last": "id",  # 4-D inputs only; memory format can change float summation order
    "train.threads": "execution",
    "train.tensorboard": "execution",
    "train.select_epoch": "id",
    "train.checkpoint_interval_s": "execution",
    "prune.rounds": "rounds",
    "prune.rate": ("mode", ["prune.schedule=one_shot", "prune.targets=[0.5, 0.7]"], []),
    "prune.method": "id",
    "prune.include_classifier": "id",
    "prune.exclude_first_conv": "id",
    "prune.criterion": "id",
    "prune.allocation": "id",
    "prune.score_batches": ("mode", [], ["prune.criterion=snip", "prune.allocation=global"]),
    "prune.score_batchnorm": ("mode", [], ["prune.criterion=snip", "prune.allocation=global"]),
    "prune.min_channels": ("mode", [], ["prune.criterion=magnitude", "prune.allocation=channel_uniform"]),
    "prune.criterion_options": "id",  # valid only with a plugin criterion registered with an options model (which reads them)
    "prune.allocation_options": "id",  # likewise for a plugin allocation
    "prune.slimming_lambda": "id",  # the L1 penalty trains the BatchNorm scales whatever the criterion
    "prune.include": "id",
    "prune.exclude": "id",
    "prune.retrain": "id",
    "prune.retrain_options": "id",  # likewise for a plugin retraining mode
    "prune.finetune_lr": ("mode", [], ["prune.retrain=finetune"]),
    "prune.finetune_epochs": ("mode", [], ["prune.retrain=finetune"]),
    "prune.rewind_epoch": ("mode", [], ["prune.retrain=late_rewind", "train.epochs=3"]),
    "prune.schedule": "id",
    "prune.schedule_options": "id",  # likewise for a plugin pruning schedule
    "prune.gradual_start": ("mode", [], ["prune.schedule=gradual"]),
    "prune.gradual_end": ("mode", [], ["prune.schedule=gradual"]),
    "prune.targets": "id",
    "distill.teacher": ("mode", [], TEACHER),
    "distill.round": ("mode", ["distill.teachers=[{run: a}, {run: b}]"], TEACHER),
    "distill.teachers": ("mode", [], ["distill.teachers=[{run: a}, {run: b}]"]),
    "distill.teachers.run": "id",
    "distill.teachers.round": "id",
    "distill.teachers.weight": "id",
    "distill.feature": ("mode", [], TEACHER),
    "distill.feature.student_layer": "id",
    "distill.feature.teacher_layer": "id",
    "distill.feature.weight": "id",
    "distill.alpha": ("mode", [], TEACHER),
    "distill.temperature": ("mode", [], TEACHER),
    "distill.student_init": ("mode", [], TEACHER),
    "entropy.enabled": "id",
    "entropy.batch_size": "execution",
    "early_stop.rule": "id",
    "early_stop.rule_options": "id",  # likewise for a plugin stop rule
    "early_stop.tolerance": ("mode", [], ["early_stop.rule=plain"]),
    "early_stop.patience": ("mode", [], ["early_stop.rule=plain"]),
    "early_stop.select": ("mode", [], ["early_stop.rule=plain"]),
}


def _schema_fields(model=None, prefix=""):
    """Every field of the config schema, sections and nested models (optional or in lists) included."""
    import typing

    from pydantic import BaseModel

    from dsd2.config import ModelConfig, RunConfig

    model = model or RunConfig
    keys = []
    for name, field in model.model_fields.items():
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        nested += [
            b for a in typing.get_args(field.annotation) for b in typing.get_args(a) if isinstance(b, type) and issubclass(b, BaseModel)
        ]
        if field.annotation in nested:  # a section: only its fields are settings
            keys += _schema_fields(field.annotation, f"{prefix}{name}.")
            if field.annotation is ModelConfig:
                keys.append(f"{prefix}{name}.<option>")
            continue
        keys.append(f"{prefix}{name}")
        for sub in dict.fromkeys(nested):
            keys += _schema_fields(sub, f"{prefix}{name}.")
    return keys


def test_every_config_field_has_an_identity_decision():
    from dsd2.config import EXECUTION_FIELDS, describe_schema

    fields = _schema_fields()
    assert len(fields) == len(set(fields))
    assert {k for k, _, _ in describe_schema()} <= set(fields)  # what `dsd2 config` lists is covered
    missing = sorted(set(fields) - DECISIONS.keys())
    assert not missing, f"config fields without an identity decision (add them to DECISIONS): {missing}"
    assert not sorted(DECISIONS.keys() - set(fields)), "DECISIONS names fields the schema no longer has"
    assert {k for k, v in DECISIONS.items() if v == "execution"} == {f"{s}.{k}" for s, k in EXECUTION_FIELDS}


@pytest.mark.parametrize("key", sorted(k for k, v in DECISIONS.items() if isinstance(v, tuple)))
def test_mode_dependent_fields_leave_the_id_exactly_where_unused(key):
    _, unused_in, used_in = DECISIONS[key]
    section, field = key.split(".")
    assert (section, field) in unused_options(tiny_config(*unused_in))
    assert (section, field) not in unused_options(tiny_config(*used_in))


def test_only_mode_dependent_fields_are_ever_left_out():
    probes = [tiny_config(*o) for v in DECISIONS.values() if isinstance(v, tuple) for o in v[1:]]
    left_out = {f"{s}.{k}" for cfg in probes for s, k in unused_options(cfg)}
    assert left_out <= {k for k, v in DECISIONS.items() if isinstance(v, tuple)}


# Tiny runs at two values of a field: the id changes iff the numbers of rounds.csv change.
# (field override, expected: True = id and numbers change, False = both stay). Not run here:
# train.device, train.amp (numbers differ on a GPU only; a device is where a run executes),
# train.compile (changes the float order, out of the id like the device; tested in test_imp),
# DDP (world size: out of the id, the sample order does not depend on it; test_ddp).
RUN_PAIRS = [
    ("seed=1", True),
    ("train.lr=0.01", True),
    ("noise.rate=0.4", True),
    ("prune.rate=0.3", True),
    ("model.hidden=[8, 8]", True),
    ("entropy.enabled=false", True),
    ("train.threads=2", False),
    ("train.eval_batch_size=77", False),
    ("entropy.batch_size=77", False),
    ("train.checkpoint_interval_s=0", False),
    ("distill.alpha=0.3", False),
    ("noise.instance_std=0.3", False),
    ("prune.gradual_start=1", False),
    ("train.momentum=0.5", False),
    ("early_stop.patience=3", False),
    ("prune.score_batches=2", False),
    ("train.batch_size=64", True),
    ("dataset.val_size=200", True),
    ("dataset.split_seed=5", True),
    ("dataset.split_seed=0", False),  # the run seed: the data seed it has anyway
    ("noise.kind=uniform", True),
    ("noise.probe=0.1", True),
    ("prune.retrain=lottery", True),
    ("prune.include_classifier=false", True),
    ("train.select_epoch=best_val", True),
    ("prune.finetune_lr=0.5", False),
    ("early_stop.select=last_good", False),
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    cfg = tiny_config("prune.rounds=1")
    return cfg, imp.run(cfg, out)


@pytest.mark.slow
@pytest.mark.parametrize("override, changes", RUN_PAIRS)
def test_the_id_changes_iff_the_numbers_do(base_run, tmp_path, override, changes):
    base_cfg, base_dir = base_run
    cfg = tiny_config("prune.rounds=1", override)
    assert (cfg.run_id() != base_cfg.run_id()) is changes
    other = imp.run(cfg, tmp_path)  # its own output folder: a run of its own either way
    same_numbers = (other / "rounds.csv").read_bytes() == (base_dir / "rounds.csv").read_bytes()
    assert same_numbers is not changes


def test_a_student_refuses_a_teacher_trained_on_other_data(folder_run, tmp_path):
    from dsd2.errors import UserError

    root, teacher = folder_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    sorted((copy / "test" / "ant").iterdir())[0].unlink()
    student = _folder_config(copy, "name=imf_student", f"distill.teacher={teacher}", "distill.round=dense")
    with pytest.raises(UserError, match=r"teacher .* was trained on other data than this student reads: .*test/ant: 1 file removed"):
        imp.run(student, tmp_path / "runs")
    assert not (tmp_path / "runs" / student.run_id()).exists()  # a failed start leaves no folder


def test_a_large_folder_hashes_each_files_ends(tmp_path, monkeypatch):
    """Above the whole-content budget each file's size and first and last END_BYTES are hashed:
    an edit there is seen, one in the middle of a file of the same size is not (documented)."""
    from dsd2.data import fingerprint as fp

    monkeypatch.setattr(fp, "WHOLE_CONTENT_BYTES", 0)
    monkeypatch.setattr(fp, "END_BYTES", 4)
    (tmp_path / "train" / "a").mkdir(parents=True)
    f = tmp_path / "train" / "a" / "x.png"
    f.write_bytes(b"0123456789abcdef")
    base = fp.folder_fingerprint(tmp_path, ["train/a/x.png"])
    assert base["content"] == "size, first and last 4 bytes" and base["folders"]["train/a"][:2] == [1, 16]
    f.write_bytes(b"0123456789abcdeF")
    assert fp.describe_change(base, fp.folder_fingerprint(tmp_path, ["train/a/x.png"])) == (
        "1 file then, 1 now (train/a: files changed or renamed (same count, 1 file))"
    )
    f.write_bytes(b"0123XXXXXXXXcdef")
    assert fp.describe_change(base, fp.folder_fingerprint(tmp_path, ["train/a/x.png"])) is None


def test_a_gradual_run_with_the_default_window_never_takes_an_earlier_schemes_folder():
    # before, the default window pruned until the last epoch: an old folder holds other masks
    default = tiny_config("prune.schedule=gradual")
    assert default.legacy_run_ids() == []
    assert config_hash(default) != config_hash(default, version=3)
    explicit = tiny_config("prune.schedule=gradual", "prune.gradual_end=2")
    assert config_hash(explicit) == config_hash(explicit, version=3)


def test_an_earlier_schemes_gradual_folder_is_only_shown(tmp_path):
    """An old default-window gradual run (its folder and meta.json name the third scheme's hash):
    the same config finds neither it by id nor by its saved config (a new folder trains), and by
    its directory it is shown when finished but never resumed or extended."""
    from dsd2 import rundir, store
    from dsd2.errors import UserError

    cfg = tiny_config("prune.schedule=gradual", "train.epochs=2", "prune.rounds=1", "entropy.enabled=false")
    made = imp.run(cfg, tmp_path / "made")
    old = tmp_path / "out" / f"{cfg.name}-{config_hash(cfg, version=3)}"
    old.parent.mkdir()
    shutil.move(made, old)
    meta = store.read_json(old / "meta.json")
    store.write_json(old / "meta.json", {**meta, "config_hash": config_hash(cfg, version=3)})
    assert rundir.run_dir_for(cfg, old.parent) == old.parent / cfg.run_id()
    assert (
        rundir.run_dir_for(tiny_config("prune.schedule=gradual", "train.epochs=2", "prune.rounds=2", "entropy.enabled=false"), old.parent)
        != old
    )
    assert imp.run(cfg, old.parent, run_dir=old) == old  # finished: shown
    with pytest.raises(UserError, match="gradual run started before gradual pruning left the last quarter") as err:
        imp.run(tiny_config("prune.schedule=gradual", "train.epochs=2", "prune.rounds=2", "entropy.enabled=false"), old.parent, run_dir=old)
    assert "prune.gradual_end=1" in str(err.value) and "\n" not in str(err.value)
    assert [r["round"] for r in store.read_csv(old / "rounds.csv")] == [0, 1]


def test_a_student_is_the_same_run_whatever_its_teachers_path_spelling(tmp_path, monkeypatch):
    """`dsd2 pipeline … --out pp` then `--out /abs/pp` trained a second, identical student: the id
    hashed the teacher's path. Now a teacher counts as its folder's name and recorded digest."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("prune.rounds=1")
    first = study.run_pipeline(cfg, out=Path("pp"))
    student_csv = (tmp_path / first.student / "rounds.csv").read_bytes()
    again = study.run_pipeline(cfg, out=tmp_path / "pp")
    assert Path(again.student).resolve() == (tmp_path / first.student).resolve()
    assert _dirs(tmp_path / "pp") == sorted([Path(first.teacher).name, Path(first.student).name])
    assert (tmp_path / first.student / "rounds.csv").read_bytes() == student_csv
    # another teacher curve (more rounds: another digest) is another student
    longer = teacher_identity(str(first.teacher))
    assert longer == {"run": Path(first.teacher).name, "digest": rundir_meta_digest(tmp_path / first.teacher)}
    assert teacher_identity("no/such/run") == "no/such/run"


def rundir_meta_digest(run_dir):
    import json

    return json.loads((run_dir / "meta.json").read_text())["config_digest"]


def test_a_teachers_identity_is_read_once_per_version_of_its_meta(tmp_path, monkeypatch):
    """run_id() asks for the teacher's identity on every call: its meta.json is read once per
    version of the file, and a rewritten one (another digest) is never answered from before."""
    from dsd2 import safe_read, store

    run = tmp_path / "t-0123456789"
    run.mkdir()
    store.write_json(run / "meta.json", {"config_digest": "aaa"})
    reads = []
    real = safe_read.read_json
    monkeypatch.setattr(safe_read, "read_json", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    student = tiny_config(f"distill.teacher={run}")
    first = student.run_id()
    assert [student.run_id() for _ in range(5)] == [first] * 5
    assert teacher_identity(str(run)) == {"run": run.name, "digest": "aaa"} and len(reads) == 1
    teacher_identity(str(run))["digest"] = "edited"  # a caller's copy: the kept answer stays
    assert teacher_identity(str(run))["digest"] == "aaa"
    store.write_json(run / "meta.json", {"config_digest": "bbb"})  # extended since: another teacher
    assert teacher_identity(str(run)) == {"run": run.name, "digest": "bbb"} and student.run_id() != first
    assert len(reads) == 2
    (run / "meta.json").unlink()
    assert teacher_identity(str(run)) == str(run)  # no run there any more: the path


def test_a_start_lists_an_image_folder_once_and_hashes_it_once(folder_run, tmp_path, monkeypatch):
    """The fingerprint and the loader share one listing per start (dsd2.data.scans); every start
    hashes every file again (no stat shortcut: docs/run_directory.md, "Data identity"), so a file
    changed in place between two starts, its size and modification time kept, is still caught."""
    import os

    from dsd2.data import fingerprint, folder_scan, scans
    from dsd2.errors import UserError

    root, run_dir = folder_run
    listed, hashed = [], []
    real_scan, real_hash = folder_scan.scan_folder, fingerprint._file_hash
    monkeypatch.setattr(folder_scan, "scan_folder", lambda *a, **k: listed.append(a) or real_scan(*a, **k))
    monkeypatch.setattr(fingerprint, "_file_hash", lambda *a, **k: hashed.append(a) or real_hash(*a, **k))
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    assert imp.run(_folder_config(root, "prune.rounds=1"), tmp_path / "runs") == run_dir  # an extension: a start
    assert len(listed) == 1 and len(hashed) == n_files
    # outside a start nothing is kept: a notebook's next start lists the folder again
    scans.scan(root)
    scans.scan(root)
    assert len(listed) == 3
    # one byte changed in place, size and mtime kept: the next start refuses it
    image = sorted((root / "train" / "bee").iterdir())[0]
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(UserError, match="trained on other data: the image folder's files differ"):
        imp.run(_folder_config(root, "prune.rounds=1"), tmp_path / "runs")


def test_a_built_in_dataset_at_another_root_must_hold_the_same_data(tmp_path, monkeypatch, capsys):
    """dataset.root is where a run's data lives, not in its id; a built-in dataset's local copy is
    not checked against the published files: Fashion-MNIST at another root holding other images
    (same labels) trained the next rounds of the same run, silently. Now the loaded content is
    pinned (meta.json data.fingerprint.content): the same data, even uncompressed, goes on; other
    data is one line, and nothing is written."""
    import gzip

    import dsd2.data.fashion as fashion_mod
    from dsd2 import store
    from dsd2.cli import main
    from dsd2.data.testing import idx_bytes, write_fashion

    monkeypatch.setattr(fashion_mod, "SYSTEM_DIR", tmp_path / "no-system-dir")
    write_fashion(tmp_path / "a", n_train=120, n_test=40)
    write_fashion(tmp_path / "same", n_train=120, n_test=40, gz=False)  # the same arrays, other bytes
    other = write_fashion(tmp_path / "other", n_train=120, n_test=40)
    (tmp_path / "other" / "train-images-idx3-ubyte.gz").unlink()

    (tmp_path / "other" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(255 - other["train_x"])))
    args = [
        "dataset.name=fashion_mnist",
        "dataset.val_size=20",
        "dataset.train_subset=100",
        "model.name=lenet_300_100",
        "train.epochs=1",
        "prune.rate=0.5",
    ]
    common = ["train.batch_size=32", "train.threads=1", "entropy.enabled=false"]
    assert (
        main(
            [
                "run",
                "demo_fmnist",
                *args,
                *common,
                f"dataset.root={tmp_path / 'a'}",
                "prune.rounds=1",
                "--out",
                str(tmp_path / "runs"),
                "-q",
            ]
        )
        == 0
    )
    (run,) = [p for p in (tmp_path / "runs").iterdir()]
    assert isinstance(store.read_json(run / "meta.json")["data"]["fingerprint"]["content"], str)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert main(["run", str(run), f"dataset.root={tmp_path / 'other'}", "prune.rounds=2", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was trained on other data: the fashion_mnist samples or labels" in err and "content sha256" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert not (run / "round_002").exists()
    assert main(["run", str(run), f"dataset.root={tmp_path / 'same'}", "prune.rounds=2", "-q"]) == 0
    assert (run / "round_002").is_dir()
    # a student reading other images than its teacher was trained on (the labels agree)
    student = ["run", "demo_fmnist", *args, *common, "name=stu", f"distill.teacher={run}", "prune.rounds=1"]
    assert main([*student, f"dataset.root={tmp_path / 'other'}", "--out", str(tmp_path / "st"), "-q"]) == 2
    assert "teacher" in (err := " ".join(capsys.readouterr().err.split())) and "trained on other data than this student loads" in err
    assert main([*student, f"dataset.root={tmp_path / 'same'}", "--out", str(tmp_path / "st"), "-q"]) == 0
