"""Hints at the point of failure: the message names the fix, the path, or what is happening."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dsd2 import checkpoint, imp
from dsd2.cli import main
from dsd2.errors import UserError

from conftest import TINY


def test_an_option_left_from_another_model_says_to_replace_the_section(tmp_path, capsys):
    # tiny_mnist1d sets model.hidden; model.name=lenet5 keeps it
    assert main(["run", "tiny_mnist1d", *TINY, "model.name=lenet5", "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "has no option 'hidden'" in err and "'model={name: lenet5}'" in err
    # a typo still gets its did-you-mean, not the section hint
    assert main(["run", "tiny_mnist1d", *TINY, "model.hiden=[3]", "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'model.hidden'" in err and "model={name" not in err


def test_ctrl_c_names_the_run_to_resume(tmp_path, monkeypatch, capsys):
    from conftest import tiny_config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dsd2.api.run", interrupted)
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(tmp_path), "-q"]) == 130
    run_dir = tmp_path / tiny_config().run_id()
    assert f"resume with `dsd2 resume {run_dir}`" in capsys.readouterr().err
    # a pipeline resumes by running the same command again; the state does not leak into the next command
    assert main(["pipeline", "tiny_mnist1d", *TINY, "--out", str(tmp_path), "-q"]) == 130
    assert "resume with the same `dsd2 pipeline` command" in capsys.readouterr().err
    # a sweep resumes by running the same command again (finished cells are skipped)
    monkeypatch.setattr("dsd2.sweep.sweep_main", interrupted)
    assert main(["sweep", "whatever.yaml", "--out", str(tmp_path)]) == 130
    assert "resume with the same `dsd2 sweep` command" in capsys.readouterr().err
    # a command that trains nothing is just interrupted
    monkeypatch.setattr("dsd2.report.write_report", interrupted)
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


def test_a_run_resumed_from_an_epoch_checkpoint_says_so(tiny, tmp_path, monkeypatch, capsys):
    from dsd2.imp.loop import resume_notice

    cfg = tiny("train.epochs=4", "prune.rounds=0", "train.checkpoint_interval_s=0", "entropy.enabled=false")
    real = checkpoint.save_epoch_state

    class Boom(Exception):
        pass

    def save_then_die(path, **kw):
        real(path, **kw)
        if kw["next_epoch"] == 2:
            raise Boom

    monkeypatch.setattr(checkpoint, "save_epoch_state", save_then_die)
    with pytest.raises(Boom):
        imp.run(cfg, tmp_path)
    monkeypatch.setattr(checkpoint, "save_epoch_state", real)
    capsys.readouterr()
    imp.resume(tmp_path / cfg.run_id())
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "epoch checkpoint" in ln]
    assert lines == [resume_notice(0, 2, 4)]
    assert "round 0: resuming from its epoch checkpoint (2 of 4 epochs already trained" in lines[0]


def test_fetch_download_says_it_downloads_instead_of_an_error(tmp_path, monkeypatch, capsys):
    calls = []

    def load_dataset(name, root, *, download, **_):
        calls.append(download)
        if not download:
            raise UserError("Fashion-MNIST not found")
        x = SimpleNamespace(shape=(3, 1, 28, 28))
        return SimpleNamespace(train_x=x, test_x=SimpleNamespace(shape=(2, 1, 28, 28)), num_classes=10)

    monkeypatch.setattr("dsd2.data.load_dataset", load_dataset)
    assert main(["fetch", "fashion_mnist", "--root", str(tmp_path), "--download"]) == 0
    out = capsys.readouterr()
    assert calls == [False, True]
    assert f"fashion_mnist is not in {tmp_path} yet: downloading it" in out.err and "error" not in out.err
    assert "3 train, 2 test, 10 classes" in out.out
