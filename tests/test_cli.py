"""The command line: exit codes and one-line messages for bad input, and the happy paths."""

import pytest

from dsd2.cli import main

from conftest import TINY as TINY_RUN

TINY = [*TINY_RUN, "-q"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(out)]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "/no/such/config.yaml"], "not found"),
        (["run", "tiny_mnist1d", "model.name=resnet99"], "resnet99"),
        (["run", "tiny_mnist1d", "model.widht=3"], "widht"),
        (["run", "tiny_mnist1d", "dataset.name=imagenet22k"], "imagenet22k"),
        (["run", "tiny_mnist1d", "noise.rate=1.5"], "noise.rate"),
        (["run", "tiny_mnist1d", "prune.rate=2"], "prune.rate"),
        (["run", "tiny_mnist1d", "prune.rounds=-3"], "prune.rounds"),
        (["run", "tiny_mnist1d", "noise.kind=salt"], "noise.kind"),
        (["run", "tiny_mnist1d", "bogus.key=1"], "unknown key"),
        (["run", "tiny_mnist1d", "dataset.val_size=999999"], "val"),
        (["run", "tiny_mnist1d", "dataset.name=cifar10", "dataset.root=/nonexistent"], "download"),
        (["run", "tiny_mnist1d", "train.device=cuda"], "cuda"),
        (["run", "tiny_mnist1d", "distill.teacher=/no/teacher/run"], "teacher"),
        (["resume", "/no/such/run"], "not a dsd2 run directory"),
        (["show", "/no/such/run"], "missing"),
        (["stop", "/no/such/run"], "not a dsd2 run directory"),
        (["fetch", "cifar10", "--root", "/nonexistent"], "download"),
        (["run", "tiny_mnist1d", "--out", "/proc/dsd2-not-writable"], "cannot create the run directory"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, needle, capsys, tmp_path):
    if args[0] == "run" and "--out" not in args:
        args = args + ["--out", str(tmp_path), "-q"]
    if args[-1] == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and needle in err
    assert "Traceback" not in err


def test_run_prints_table_and_resume_is_a_no_op(tiny_run, capsys):
    assert main(["resume", str(tiny_run), "-q"]) == 0
    out = capsys.readouterr().out
    assert "sparsity %" in out and str(tiny_run) in out
    assert main(["show", str(tiny_run)]) == 0
    assert main(["run", str(tiny_run), "-q"]) == 0  # an existing run directory resumes
    assert main(["run", str(tiny_run), "seed=3"]) == 2  # overrides cannot change a run


def test_refused_commands_leave_the_run_directory_untouched(tiny_run):
    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(tiny_run.rglob("*")) if p.is_file()}

    before = snapshot()
    assert main(["run", str(tiny_run), "seed=3"]) == 2
    assert main(["run", str(tiny_run / "config.yaml"), "prune.rate=1.5", "--out", str(tiny_run.parent)]) == 2
    assert main(["stop", str(tiny_run), "--rule", "nonsense"]) == 2
    assert snapshot() == before


def test_stop_and_compare(tiny_run, capsys):
    assert main(["stop", str(tiny_run), "--rule", "plain"]) == 0
    assert "selected round" in capsys.readouterr().out
    assert main(["stop", str(tiny_run), "--rule", "entropy"]) == 0
    assert main(["compare", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "vanilla, exhaustive" in out and "vanilla + early stop" in out


def test_config_models_presets_listings(capsys):
    assert main(["config"]) == 0
    assert "prune.retrain" in capsys.readouterr().out
    assert main(["config", "demo_fmnist", "prune.rounds=3"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 3" in out and "run id: demo_fmnist-" in out
    assert main(["models"]) == 0
    assert "vgg_like" in capsys.readouterr().out
    assert main(["presets"]) == 0
    assert "cifar10_vgg_noise50" in capsys.readouterr().out


def test_usage_error_exit_code(capsys):
    assert main(["run"]) == 2
    assert main(["no-such-command"]) == 2


def test_pipeline_with_a_different_student_architecture(tmp_path, capsys):
    """`dsd2 pipeline TEACHER --student STUDENT`: the paper's ResNet-18 → VGG-like shape, in miniature."""
    import yaml

    from dsd2 import store
    from dsd2.config import load_config

    student = load_config("tiny_mnist1d", [o for o in TINY if o != "-q"] + ["name=small", "model.hidden=[8]", "distill.round=dense"])
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(student.resolved()))
    overrides = [o for o in TINY if o != "-q" and not o.startswith("model.")]
    # overrides apply to both configs: the student's width lives in its own file only
    assert main(["pipeline", "tiny_mnist1d", *overrides, "--student", str(path), "--out", str(tmp_path / "runs"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "DSD² + early stop" in out
    (sdir,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("small-")]
    info = store.read_json(sdir / "teacher.json")
    assert info["round"] == 0 and info["model"] == "mlp"
    masks = store.load_tensors(sdir / "round_000" / "masks.safetensors")
    assert sum(m.numel() for m in masks.values()) == 40 * 8 + 8 * 10
    # the vanilla baseline of the student's architecture was run and the table uses it
    assert "vanilla baseline" in out
    (vdir,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("small_vanilla-")]
    vmasks = store.load_tensors(vdir / "round_000" / "masks.safetensors")
    assert sum(m.numel() for m in vmasks.values()) == 40 * 8 + 8 * 10
    assert not (vdir / "teacher.json").exists()
    # compare refuses swapped arguments and a vanilla curve of the teacher's architecture
    teacher = info["run_dir"]
    assert main(["compare", str(sdir), str(vdir)]) == 2
    assert "give the vanilla run first" in " ".join(capsys.readouterr().err.split())
    assert main(["compare", teacher, str(sdir)]) == 2
    assert "student's architecture" in " ".join(capsys.readouterr().err.split())
    assert main(["compare", str(vdir), str(sdir)]) == 0


def test_divergence_then_resume_with_a_lower_lr(tmp_path, capsys):
    """NaN: exit 2 naming epoch and step, finished rounds kept; `resume --lr-scale` finishes the run."""
    from dsd2 import store

    args = ["run", "tiny_mnist1d", *TINY, "train.optimizer=sgd", "train.lr=10000", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "diverged at epoch 1, step" in err and "--lr-scale" in err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert store.finished_rounds(run_dir) == []
    assert main(["resume", str(run_dir), "--lr-scale", "0.0"]) == 2  # (0, 1] only
    assert main(["resume", str(run_dir), "--lr-scale", "0.00001", "-q"]) == 0
    assert store.finished_rounds(run_dir) == [0, 1, 2]
    assert store.read_json(run_dir / "lr_scale.json") == {"history": [{"from_round": 0, "scale": 1e-05}]}
    assert [r["lr_scale"] for r in store.read_csv(run_dir / "timings.csv")] == [1e-05] * 3


def test_user_text_is_never_read_as_markup(tmp_path, capsys):
    assert main(["run", "[/]"]) == 2
    assert "config file [/] not found" in " ".join(capsys.readouterr().err.split())
    out = tmp_path / "exp[lr=0.1]"
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {out}/" in printed


def test_messages_for_common_slips(tmp_path, capsys, monkeypatch):
    # a folder named like a preset does not shadow the preset
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_mnist1d").mkdir()
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(tmp_path / "runs")]) == 0
    assert "is a folder, not a run directory: using the preset" in capsys.readouterr().err
    # --seeds that names no seed
    assert main(["demo", "--seeds", ","]) == 2
    assert "names no seed" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dsd2.config.load_config", interrupted)
    assert main(["run", "tiny_mnist1d"]) == 130
    # interrupted while loading its config: no run directory was printed or made
    assert "interrupted before any run started: nothing to resume" in capsys.readouterr().err


def test_pipeline_says_which_teacher_round_it_chose(tmp_path, capsys):
    assert main(["pipeline", "tiny_mnist1d", *TINY, "--out", str(tmp_path)]) == 0
    assert "teacher: " in capsys.readouterr().out


def test_version_and_choices(tiny_run, capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dsd2 ")
    assert main(["stop", str(tiny_run), "--rule", "entropy", "--select", "last_good"]) == 0
    assert main(["stop", str(tiny_run), "--rule", "bogus"]) != 0
    # --lr-scale on a finished run changes nothing: refused, nothing written
    assert main(["resume", str(tiny_run), "--lr-scale", "0.1"]) == 2
    assert "is finished" in " ".join(capsys.readouterr().err.split())
    assert not (tiny_run / "lr_scale.json").exists()


def test_damaged_tables_are_one_line_errors(tiny_run, tmp_path, capsys):
    import shutil

    # run folders whose tables are damaged, with matching checksums: the tables themselves are checked
    no_sums = shutil.ignore_patterns("tables.sha256.json")
    binary = tmp_path / "binary"
    shutil.copytree(tiny_run, binary, ignore=no_sums)
    (binary / "rounds.csv").write_bytes(bytes(range(256)))
    edited = tmp_path / "edited"
    shutil.copytree(tiny_run, edited, ignore=no_sums)
    lines = (edited / "rounds.csv").read_text().splitlines()
    lines[1] = "x" + lines[1][1:]
    (edited / "rounds.csv").write_text("\n".join(lines) + "\n")
    from dsd2 import rundir

    for damaged in (binary, edited):  # checksums of the damaged tables: the parsing itself is tested
        rundir.record_tables(damaged)
    cases = [
        (["show", str(binary)], "binary, truncated"),
        (["stop", str(binary)], "binary, truncated"),
        (["report", str(binary), "-o", str(tmp_path / "rep")], "binary, truncated"),
        (["compare", str(edited)], "non-numeric round='x'"),
        (["show", "/etc/passwd"], "is a file, not a dsd2 run directory"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        assert expected in " ".join(capsys.readouterr().err.split()), args


def test_divergence_advice_follows_the_retry(tmp_path, capsys):
    """The advice lowers the factor in use; a retry that started from an epoch checkpoint is also
    offered --restart-round, which drops that checkpoint."""
    from dsd2 import checkpoint, imp

    msg = "training diverged at epoch 2, step 3 of 9: the loss became nan. Finished rounds and ..."
    first = imp.loop._divergence_advice(msg, tmp_path, 1.0, resumed=False)
    assert first.startswith("training diverged at epoch 2, step 3") and "--lr-scale 0.1" in first and "--restart-round" not in first
    again = imp.loop._divergence_advice(msg, tmp_path, 0.1, resumed=True)
    assert "--lr-scale 0.01" in again and "--restart-round" in again

    args = ["run", "tiny_mnist1d", *TINY, "train.optimizer=sgd", "train.lr=10000"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "--lr-scale 0.1" in " ".join(capsys.readouterr().err.split())
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    partial = checkpoint.partial_path(run_dir, 0)
    partial.write_bytes(b"diverged weights")  # what an epoch checkpoint of a diverging round may hold
    assert main(["resume", str(run_dir), "--lr-scale", "0.00001", "--restart-round", "-q"]) == 0
    assert not partial.exists()


def test_a_hand_edited_rounds_csv_is_detected(tiny_run, tmp_path, capsys):
    import shutil

    from dsd2 import store

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rows = store.read_csv(run / "rounds.csv")
    rows[1]["val_acc"] = 0.99  # a better-looking round
    store.write_csv(run / "rounds.csv", rows, list(rows[0]))
    for args in (["compare", str(run)], ["stop", str(run)], ["show", str(run)], ["report", str(run), "-o", str(tmp_path / "r")]):
        assert main(args) == 2, args
        assert "was changed after dsd2 wrote it" in " ".join(capsys.readouterr().err.split())
    assert main(["resume", str(run), "-q"]) == 0  # rewrites the tables from the checksummed rounds
    assert main(["compare", str(run)]) == 0


def test_fetch_names_its_own_flag(tmp_path, capsys):
    assert main(["fetch", "cifar10", "--root", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--download" in err and "dataset.download=true" not in err


def _all_commands():
    import typer.main

    from dsd2.cli import app

    group = typer.main.get_command(app)
    return group, {name: group.commands[name] for name in group.commands}  # type: ignore[attr-defined]


def test_every_option_and_argument_has_help():
    group, commands = _all_commands()
    missing = [
        f"{name} {p.name}"
        for name, cmd in [("dsd2", group), *commands.items()]
        for p in cmd.params
        if not (getattr(p, "help", None) or "").strip()
    ]
    assert not missing, f"no help text: {missing}"
    assert not [name for name, c in commands.items() if not (c.help or "").strip()]


def test_help_shows_no_bool_placeholder_and_every_command_takes_plugin(capsys):
    group, commands = _all_commands()
    for args in [["--help"], *[[name, "--help"] for name in commands]]:
        assert main(args) == 0, args
        text = capsys.readouterr().out
        assert "<bool>" not in text, args
        if args[0] != "--help":
            assert "--plugin" in text, args


def test_the_command_list_wraps_at_the_terminal_not_at_docstring_breaks(monkeypatch, capsys):
    """`dsd2 --help` at 80 columns: a description continues on the next line only where the
    line is full (models, stop-rules and report broke after a few words where their docstrings did)."""
    group, commands = _all_commands()
    assert all("\n" not in c.help.replace("\n\n", "") for c in commands.values())
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--help"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│")]
    cells = [ln[1:-1].rstrip() for ln in lines]
    # a row continued below (no command name) breaks only where the next word would not fit
    ragged = [a for a, b in zip(cells, cells[1:]) if b.startswith(" " * 13) and len(a) + 1 + len(b.split()[0]) <= len(cells[0]) - 1]
    assert not ragged, ragged


def test_resume_takes_the_overrides_run_does_on_a_run_directory(tiny_run, tmp_path, capsys):
    """`dsd2 resume RUN train.threads=2` was a usage error ("unexpected extra argument"): it now
    uses or refuses them as `dsd2 run RUN ...` does."""
    import shutil

    from dsd2 import store

    run_dir = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run_dir)
    assert main(["resume", str(run_dir), "train.eval_batch_size=77", "-q"]) == 0
    assert store.read_json(run_dir / "meta.json")["execution_changes"][-1]["changed"] == {"train.eval_batch_size": {"from": 1000, "to": 77}}
    capsys.readouterr()
    assert main(["resume", str(run_dir), "train.lr=0.5", "-q"]) == 2
    assert "train.lr would change the numbers" in capsys.readouterr().err


def test_show_on_a_sweep_folder_points_to_report(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text("{}")
    assert main(["show", str(tmp_path)]) == 2
    assert f"is a sweep's folder, not a run: `dsd2 report {tmp_path}`" in capsys.readouterr().err


def test_run_on_a_run_directory_resumes_without_restarting_the_round(tiny_run, capsys):
    # `run DIR` calls resume(); its unset options must not arrive as typer's (truthy) defaults
    assert main(["run", str(tiny_run)]) == 0
    err = capsys.readouterr().err
    assert "restarts" not in err and "lr ×" not in err


def test_ray_token_notice_is_dropped_and_other_records_kept(caplog):
    import logging

    from dsd2.sweep.backends import _TOKEN_LOGGER, quiet_ray_token_notice

    quiet_ray_token_notice()
    quiet_ray_token_notice()  # idempotent: one filter
    logger = logging.getLogger(_TOKEN_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=_TOKEN_LOGGER):
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        logger.error("cannot write the token file")
    assert [r.getMessage()[:37] for r in caplog.records] == ["Token authentication is disabled for ", "cannot write the token file"]
