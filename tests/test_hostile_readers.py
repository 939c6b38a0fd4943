"""Hostile files for every reader (issue 23): each is refused with one line (exit 2, no
traceback) naming the file or setting, never a hang, a crash or a silent pass.

Table-driven per class of hostile input, across the commands that read the same file. The
tiny finished run (``tiny_run``, conftest) is copied for each case, so cases do not interact.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from dsd2 import rundir, store
from dsd2.cli import main
from dsd2.data.image_folder import decode_rgb, scan_folder
from dsd2.data.testing import write_image_folder
from dsd2.errors import UserError


def one_line_exit_2(args: list[str], capsys) -> str:
    """Run the CLI; assert exit 2 without a traceback; return the error text (joined)."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (args, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    return " ".join(err.split())


def deep_json(depth: int = 5000) -> str:
    return "[" * depth + "]" * depth


# ----------------------------------------------------------------------------- image folders (item 3, 7, 8)


def small_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    write_image_folder(root, classes=("a", "b"), n_train=3, n_test=2)
    return root


def test_a_link_back_up_is_a_loop_named(tmp_path):
    root = small_folder(tmp_path)
    (root / "train" / "a" / "up").symlink_to("..")
    with pytest.raises(UserError, match=r"train/a/up is a symbolic link back to .*loop"):
        scan_folder(root)


def test_two_self_links_are_refused_at_once(tmp_path):
    root = small_folder(tmp_path)
    (root / "train" / "a" / "x").symlink_to(".")
    (root / "train" / "a" / "y").symlink_to(".")
    with pytest.raises(UserError, match=r"train/a/[xy] is a symbolic link back to"):
        scan_folder(root)


def test_links_inside_the_root_are_followed_outside_only_when_asked(tmp_path):
    root = small_folder(tmp_path)
    outside = tmp_path / "elsewhere"
    write_image_folder(outside, classes=("a",), n_train=2, n_test=1)
    (root / "train" / "a" / "more").symlink_to(outside / "train" / "a")
    with pytest.raises(UserError, match="outside the dataset root.*dataset.follow_links=true"):
        scan_folder(root)
    assert scan_folder(root, follow_links=True).n_train == 3 + 3 + 2
    (root / "train" / "a" / "more").unlink()
    (root / "train" / "a" / "inside").symlink_to(root / "test" / "a")  # inside the root: followed
    assert scan_folder(root).n_train == 3 + 3 + 2


def test_special_files_and_undecodable_names_in_an_image_folder(tmp_path):
    root = small_folder(tmp_path)
    fifo = root / "train" / "a" / "z.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="z.png is not a regular file"):
        scan_folder(root)
    with pytest.raises(UserError, match="not a regular file"):
        decode_rgb(str(fifo))  # the decoder refuses it too (a file swapped after the scan)
    fifo.unlink()
    bad = os.path.join(os.fsencode(root / "train" / "a"), b"caf\xe9.png")
    shutil.copy(root / "train" / "a" / "img_000.png", bad)
    with pytest.raises(UserError, match=r"caf\\xe9.png: the file name is not UTF-8"):
        scan_folder(root)


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_run_refuses_a_fifo_image_on_both_loaders(loader, tmp_path, capsys):
    root = small_folder(tmp_path)
    os.mkfifo(root / "test" / "b" / "fifo.jpg")
    args = ["run", "tiny_mnist1d", "dataset.name=image_folder", f"dataset.root={root}", "dataset.image_size=8"]
    args += [f"dataset.loader={loader}", "dataset.workers=0", "model.name=lenet5", "--out", str(tmp_path / "o"), "-q"]
    assert "fifo.jpg is not a regular file" in one_line_exit_2(args, capsys)


# ----------------------------------------------------------------------------- launcher variables (item 8)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MASTER_PORT": "abc"}, "MASTER_PORT='abc' is not a port number"),
        ({"MASTER_PORT": "99999"}, "MASTER_PORT='99999' is not a port number"),
        ({"MASTER_PORT": "²"}, "is not a port number"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR='' is not a host name"),
        ({"WORLD_SIZE": "100000000"}, "WORLD_SIZE=100000000 is more processes"),
        ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x' is not an integer"),
        ({"LOCAL_RANK": "7"}, "LOCAL_RANK=7 and LOCAL_WORLD_SIZE=2"),
        ({"DSD2_DDP_JOIN_TIMEOUT_S": "-1"}, "DSD2_DDP_JOIN_TIMEOUT_S='-1' must be"),
    ],
)
def test_bad_launcher_variables(env, message, monkeypatch, tmp_path, capsys):
    base = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "DSD2_DDP_JOIN_TIMEOUT_S": "1"}
    for k, v in {**base, **env}.items():
        monkeypatch.setenv(k, v)
    assert message in one_line_exit_2(["run", "tiny_mnist1d", "--out", str(tmp_path / "o"), "-q"], capsys)
    assert not (tmp_path / "o").exists()


def test_a_missing_peer_is_a_bounded_wait_with_a_clear_message(monkeypatch, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DSD2_DDP_JOIN_TIMEOUT_S": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    err = one_line_exit_2(["run", "tiny_mnist1d", "--out", str(tmp_path / "o"), "-q"], capsys)
    assert "process 1 of 2 could not join the job" in err and "DSD2_DDP_JOIN_TIMEOUT_S" in err


# ----------------------------------------------------------------------------- sweep --address (item 8)


@pytest.mark.parametrize(
    "address, says",
    [
        ("127.0.0.1:²", "is not HOST:PORT"),
        ("127.0.0.1:99999", "is not HOST:PORT"),
        ("a" * 70 + ":6379", "is not a host name"),
        ("", "is not HOST:PORT"),
        ("   ", "is not HOST:PORT"),
    ],
)
def test_bad_sweep_address_is_refused_before_anything_starts(address, says, monkeypatch, tmp_path, capsys):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init called for a refused address"))
    err = one_line_exit_2(["sweep", "tiny_demo", "--address", address, "--out", str(tmp_path / "o")], capsys)
    assert says in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- run folders (items 5, 7, 8)

from conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny finished run (3 rounds); cases copy it."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(out), "-q"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def student(finished, tmp_path_factory) -> Path:
    """A tiny finished DSD² student of ``finished``."""
    out = tmp_path_factory.mktemp("student")
    assert main(["run", "tiny_mnist1d", *TINY, f"distill.teacher={finished}", "name=stu", "--out", str(out), "-q"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def copy_run(src: Path, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def edited_lr(run: Path) -> None:
    """The tamper of item 5: config.yaml's lr changed after the run started."""
    cfg = (run / "config.yaml").read_text()
    assert "lr: 0.001" in cfg or "lr:" in cfg
    text = "\n".join(("  lr: 0.3" if line.strip().startswith("lr:") else line) for line in cfg.splitlines()) + "\n"
    (run / "config.yaml").write_text(text)


def unfinish(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and drop the last round, so that a resume trains (and reads it)."""
    path.write_text(text)
    shutil.rmtree(path.parent / "round_002")


def drop_key(path: Path, key: str, value=...) -> None:
    data = json.loads(path.read_text())
    if value is ...:
        data.pop(key)
    else:
        data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "tamper, says",
    [
        (lambda r: drop_key(r / "meta.json", "config_digest"), "edited after the run started"),
        (lambda r: drop_key(r / "meta.json", "config_digest", []), "config_digest"),
        (lambda r: drop_key(r / "meta.json", "config_digest", None), "lacks the config digest"),
        (lambda r: (r / "meta.json").unlink(), "has trained rounds but no meta.json"),
    ],
    ids=["digest-removed", "digest-list", "digest-null", "meta-deleted"],
)
def test_an_edited_config_cannot_resume_once_its_guard_is_removed(tamper, says, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    edited_lr(run)
    tamper(run)
    for args in (["resume", str(run), "-q"], ["run", str(run), "-q"]):
        assert says in one_line_exit_2(args, capsys), args


@pytest.mark.parametrize(
    "tamper, says",
    [
        (lambda r: (r / "teacher.json").unlink(), "has no teacher.json"),
        (lambda r: drop_key(r / "teacher.json", "digest"), "lacks a teacher's fingerprint"),
        (lambda r: drop_key(r / "teacher.json", "digest", 7), "teacher.json is not what dsd2 writes"),
        (lambda r: (r / "teacher.json").write_text("[]"), "does not record the teacher"),
        (lambda r: (r / "teacher.json").write_text(deep_json()), "nests deeper than"),
    ],
    ids=["deleted", "digest-removed", "digest-int", "empty-list", "deep"],
)
def test_a_student_cannot_resume_without_its_teacher_fingerprint(tamper, says, student, tmp_path, capsys):
    run = copy_run(student, tmp_path)
    tamper(run)
    assert says in one_line_exit_2(["resume", str(run), "-q"], capsys)


def test_table_checksums_removed_fail_closed_for_every_reader(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    rows = store.read_csv(run / "rounds.csv")
    rows[1]["test_acc"] = 0.99
    store.write_csv(run / "rounds.csv", rows, list(rows[0]))
    (run / "tables.sha256.json").unlink()
    for args in (["show", str(run)], ["stop", str(run)], ["compare", str(run)], ["report", str(run), "-o", str(tmp_path / "rep")]):
        assert "no tables.sha256.json" in one_line_exit_2(args, capsys), args
    store.write_json(run / "tables.sha256.json", {"entropy.csv": "0" * 64})  # rounds.csv's entry removed
    assert "does not list rounds.csv" in one_line_exit_2(["show", str(run)], capsys)
    assert main(["resume", str(run), "-q"]) == 0  # rewrites the tables and their checksums from the round files
    assert main(["show", str(run)]) == 0
    assert store.read_csv(run / "rounds.csv")[1]["test_acc"] != 0.99


# (file, how it is damaged, the commands that read it, what the error says)
RUN_FILE_CASES = [
    ("rounds.csv", fifo, ["show"], "is a FIFO"),
    ("rounds.csv", fifo, ["stop", "compare", "report"], "no rounds.csv"),
    ("rounds.csv", as_dir, ["show"], "is a directory"),
    ("rounds.csv", as_dir, ["stop", "compare", "report"], "no rounds.csv"),
    ("meta.json", fifo, ["export", "resume", "report"], "is a FIFO"),
    ("meta.json", as_dir, ["export", "resume", "report"], "is a directory"),
    ("meta.json", lambda p: p.write_text(deep_json()), ["export", "resume", "report"], "nests deeper than"),
    ("meta.json", lambda p: p.write_text('{"data": {"num_classes": "ten"}}'), ["export", "resume", "report"], "meta.json is not what dsd2"),
    ("tables.sha256.json", lambda p: p.write_text(deep_json()), ["show", "stop", "report"], "nests deeper than"),
    ("tables.sha256.json", lambda p: p.write_text('{"rounds.csv": 5}'), ["show", "stop", "report"], "not what dsd2 writes"),
    ("tables.sha256.json", fifo, ["show", "stop", "report"], "is a FIFO"),
    ("noise.json", lambda p: p.write_text(deep_json()), ["show", "report"], "nests deeper than"),
    ("noise.json", lambda p: p.write_text("[1, 2]"), ["show", "report"], "noise.json is not what dsd2 writes"),
    ("round_001/MANIFEST.json", lambda p: p.write_text(deep_json()), ["resume", "export"], "nests deeper than"),
    ("round_001/MANIFEST.json", lambda p: p.write_text('{"files": {"../../etc/passwd": "00"}}'), ["resume", "export"], "not what dsd2"),
    ("round_001/metrics.json", lambda p: p.write_text("{}"), ["resume"], "does not match its checksum"),
    ("config.yaml", lambda p: p.write_text("a: " + "[" * 3000 + "]" * 3000), ["resume", "report", "export"], "nests deeper"),
    ("config.yaml", fifo, ["report"], "is a FIFO"),
    ("config.yaml", fifo, ["resume", "export"], "no config.yaml"),
    ("lr_scale.json", lambda p: unfinish(p, '{"history": [{"from_round": "x"}]}'), ["resume"], "lr_scale.json is not what dsd2"),
    ("lr_scale.json", lambda p: unfinish(p, '{"history": [{"from_round": 0, "scale": 5}]}'), ["resume"], "lr_scale.json is not what"),
    ("lr_scale.json", lambda p: unfinish(p, deep_json()), ["resume"], "nests deeper than"),
    ("early_stop.json", lambda p: p.write_text('{"stop_round": "x"}'), ["report"], "early_stop.json is not what dsd2"),
]


def command(name: str, run: Path, tmp_path: Path) -> list[str]:
    return {
        "show": ["show", str(run)],
        "stop": ["stop", str(run)],
        "compare": ["compare", str(run)],
        "report": ["report", str(run), "-o", str(tmp_path / "rep")],
        "export": ["export", str(run), "-o", str(tmp_path / "exp")],
        "resume": ["resume", str(run), "-q"],
    }[name]


@pytest.mark.parametrize("name, damage, commands, says", RUN_FILE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(RUN_FILE_CASES)])
def test_damaged_run_files_are_one_line_errors_in_every_reader(name, damage, commands, says, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    path = run / name
    if not path.exists():
        path.write_text("{}")
    damage(path)
    for cmd in commands:
        err = one_line_exit_2(command(cmd, run, tmp_path), capsys)
        assert says in err, (cmd, err)


def _rewrite_masks(round_folder: Path, change) -> None:
    """Rewrite a round's masks with ``change`` and its checksums to match, as a hostile or
    foreign file that passes the manifest would be."""
    import torch

    masks = store.load_tensors(round_folder / "masks.safetensors")
    name = sorted(masks)[0]
    change(masks, name, torch)
    store.save_tensors(round_folder / "masks.safetensors", masks)
    store.write_manifest(round_folder, list(store.read_json(round_folder / "MANIFEST.json")["files"]))


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda m, k, t: m.__setitem__(k, t.ones(3, 3, dtype=t.bool)), "not bool [16, 40] like its weight"),
        (lambda m, k, t: m.__setitem__(k, m[k].float() * 7), "is float32 [16, 40], not bool"),
        (lambda m, k, t: m.__setitem__("evil.weight", t.ones(4, dtype=t.bool)), "masks evil.weight, which the model does not have"),
        (lambda m, k, t: m.pop(k), "no mask for"),
    ],
    ids=["shape", "float", "extra", "missing"],
)
def test_masks_that_pass_their_checksums_must_still_fit_the_model(change, says, finished, tmp_path, capsys):
    """A round's masks are checked against the model, not only their checksums: before, a wrong
    shape was a traceback in export and resume, a float mask scaled the weights of the next round,
    an unknown tensor was ignored and a missing one a KeyError in resume."""
    run = copy_run(finished, tmp_path)
    _rewrite_masks(run / "round_001", change)
    shutil.rmtree(run / "round_002")  # resume continues from round 1's masks
    err = one_line_exit_2(["resume", str(run), "-q"], capsys)
    assert says in err and "round_001/masks.safetensors" in err and "delete" in err, err
    assert not (run / "round_002").exists()
    if "no mask" not in says:  # export reads only the masks there are (the weights hold the zeros)
        err = one_line_exit_2(["export", str(run), "-o", str(tmp_path / "exp"), "--round", "1"], capsys)
        assert says in err and "round_001/masks.safetensors" in err, err
        assert not (tmp_path / "exp").exists()


# ----------------------------------------------------------------------------- configs, sweeps, matrices (items 4, 7, 8)


def test_deep_yaml_fifo_and_huge_values_in_configs_sweeps_and_matrices(tmp_path, capsys):
    deep = "a: " + "[" * 3000 + "]" * 3000 + "\n"
    (tmp_path / "deep.yaml").write_text(deep)
    (tmp_path / "sweep.yaml").write_text("name: s\ngrid:\n  seed: " + "[" * 3000 + "]" * 3000 + "\n")
    (tmp_path / "m.yaml").write_text("matrix: " + "[" * 3000 + "]" * 3000 + "\n")
    os.mkfifo(tmp_path / "fifo.yaml")
    os.mkfifo(tmp_path / "fifo_sweep.yaml")
    out = ["--out", str(tmp_path / "o")]
    cases = [
        (["run", str(tmp_path / "deep.yaml"), *out], "deep.yaml nests deeper than 64 levels"),
        (["sweep", str(tmp_path / "sweep.yaml"), "--dry-run", *out], "sweep.yaml nests deeper than 64 levels"),
        (["run", "tiny_mnist1d", "noise.kind=transition", f"noise.matrix={tmp_path / 'm.yaml'}", *out], "m.yaml nests deeper"),
        (["run", "tiny_mnist1d", "noise.kind=transition", f"noise.matrix={tmp_path / 'fifo.yaml'}", *out], "is a FIFO"),
        (["run", "tiny_mnist1d", "noise.kind=transition", "noise.matrix=/dev/zero", *out], "must end in .npy or .yaml"),
        (["sweep", str(tmp_path / "fifo_sweep.yaml"), "--dry-run", *out], "not found"),
        (["run", "tiny_mnist1d", "train.threads=100000", *out], "train.threads"),
        (["run", "tiny_mnist1d", "model.hidden=[100000000000]", *out], "model.hidden: 100000000000 is larger"),
        (["run", "tiny_mnist1d", "dataset.image_size=60000", *out], "dataset.image_size"),
        (["estimate", "tiny_mnist1d", "train.batch_size=100000000"], "train.batch_size"),
        (["estimate", "tiny_mnist1d", "dataset.image_size=60000"], "dataset.image_size"),
        (["run", "tiny_mnist1d", "name=" + "n" * 300, *out], "name"),
    ]
    for args, says in cases:
        assert says in one_line_exit_2(args, capsys), args
    assert not (tmp_path / "o").exists()


def test_a_resume_checks_the_recorded_training_samples_too(finished, tmp_path, capsys):
    """labels.safetensors rewritten (with its checksum) to other train_idx resumed as if nothing
    changed, leaving a file whose samples a student's teacher check trusts."""
    run = copy_run(finished, tmp_path)
    labels = store.load_tensors(run / "labels.safetensors")
    labels["train_idx"] = labels["train_idx"].flip(0)
    store.save_tensors(run / "labels.safetensors", labels)
    shutil.rmtree(run / "round_002")
    err = one_line_exit_2(["resume", str(run), "-q"], capsys)
    assert "labels.safetensors does not match the labels this config produces (train_idx differs)" in err, err
    assert not (run / "round_002").exists()


def alias_bomb(levels: int = 6) -> list[str]:
    """YAML lines whose last anchor ``a{levels}`` expands to 10**(levels + 1) values (small on disk)."""
    lines = ["- &a0 [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]"]
    lines += [f"- &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return lines


def test_yaml_alias_bombs_are_refused_by_every_yaml_reader(finished, tmp_path, capsys):
    """A sweep file, a transition matrix and a run folder's config.yaml read by the report went
    through YAML parsers that bounded depth but not the values aliases expand to: each hung
    (10**9 values) where a config file was refused. A million values here, refused at 100,000."""
    bomb = alias_bomb()
    (tmp_path / "sweep.yaml").write_text("name: s\nbase: tiny_mnist1d\nx:\n" + "\n".join("  " + b for b in bomb) + "\ngrid: {seed: *a6}\n")
    (tmp_path / "m.yaml").write_text("\n".join(bomb) + "\n")
    run = copy_run(finished, tmp_path)
    (run / "config.yaml").write_text("x:\n" + "\n".join("  " + b for b in bomb) + "\nseed: *a6\n")
    out = ["--out", str(tmp_path / "o")]
    for args in (
        ["sweep", str(tmp_path / "sweep.yaml"), "--dry-run", *out],
        ["run", "tiny_mnist1d", "noise.kind=transition", f"noise.matrix={tmp_path / 'm.yaml'}", *out],
        ["report", str(run), "-o", str(tmp_path / "rep")],
    ):
        err = one_line_exit_2(args, capsys)
        assert "expands to more than 100000 values" in err, (args, err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "rep").exists()


def test_a_big_npy_matrix_is_refused_from_its_header(tmp_path):
    from dsd2.config import read_matrix_file

    big = tmp_path / "big.npy"
    with open(big, "wb") as f:  # a 3000 x 3000 header and no data: only the header may be read
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (3000, 3000)})
    with pytest.raises(ValueError, match=r"2-D numeric K x K array with 2 <= K <= 1000, got dtype float64 and shape \(3000, 3000\)"):
        read_matrix_file(str(big))
    (tmp_path / "dev.npy").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="is a character device"):
        read_matrix_file(str(tmp_path / "dev.npy"))


# ----------------------------------------------------------------------------- pickles (item 4)


def test_a_tiny_pickle_cannot_allocate_a_gigabyte_and_cifar_batches_still_load(tmp_path):
    from dsd2.data.safe_pickle import restricted_load, restricted_loads

    bomb = b"\x80\x02c__builtin__\nfrozenset\nc__builtin__\nbytearray\nJ\x00\xca\x9a\x3b\x85R\x85R."  # frozenset(bytearray(1e9))
    with pytest.raises(UserError, match="bytearray\\(\\) of a int"):
        restricted_loads(bomb, source="labels.pkl")
    # a CIFAR-format batch (as cPickle wrote it under Python 2, protocol 2, and under Python 3)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [3, 1, 4, 1],
        b"data": np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072),
        b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
    }
    for protocol in (2, 4, 5):
        path = tmp_path / f"data_batch_{protocol}"
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        got = restricted_load(path)
        assert got[b"labels"] == [3, 1, 4, 1] and np.array_equal(got[b"data"], batch[b"data"])
    kept = restricted_loads(pickle.dumps({"b": bytearray(b"xy"), "s": {1, 2}, "f": frozenset({3})}, protocol=2))
    assert kept == {"b": bytearray(b"xy"), "s": {1, 2}, "f": frozenset({3})}
    os.mkfifo(tmp_path / "fifo_batch")
    with pytest.raises(UserError, match="is a FIFO"):
        restricted_load(tmp_path / "fifo_batch")


# ----------------------------------------------------------------------------- tables: report and stop-rules (item 8)


def rounds_rows(run: Path) -> list[dict]:
    return store.read_csv(run / "rounds.csv")


@pytest.mark.parametrize(
    "change, says",
    [
        ({"test_acc": float("nan")}, "test_acc=nan"),
        ({"val_acc": float("inf")}, "val_acc=inf"),
        ({"sparsity": -0.5}, "sparsity=-0.5"),
        ({"train_acc_clean": 1.5}, "train_acc_clean=1.5"),
        ({"round": 0}, "lists rounds [0, 0, 2]"),
        ({"epochs": 1.5}, "epochs=1.5"),
    ],
)
def test_report_show_and_compare_refuse_impossible_numbers(change, says, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    rows = rounds_rows(run)
    rows[1].update(change)
    store.write_csv(run / "rounds.csv", rows, list(rows[0]))
    rundir.record_tables(run)  # checksums match: the numbers themselves are judged
    for args in (["report", str(run), "-o", str(tmp_path / "rep")], ["show", str(run)], ["compare", str(run)], ["stop", str(run)]):
        assert says in one_line_exit_2(args, capsys), args


def test_stop_rules_on_broken_banks(finished, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "curve").mkdir()
    (empty / "curve" / "rounds.csv").write_text("round,sparsity\n")
    missing = tmp_path / "missing"
    (missing / "c").mkdir(parents=True)
    (missing / "c" / "rounds.csv").write_text("round,sparsity\n0,0.0\n")
    strings = tmp_path / "strings"
    (strings / "c").mkdir(parents=True)
    rows = rounds_rows(finished)
    rows[0]["test_acc"] = "high"
    store.write_csv(strings / "c" / "rounds.csv", rows, list(rows[0]))
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    cases = [(empty, "has no rows"), (missing, "lacks the column(s)"), (strings, "test_acc='high'"), (nothing, "holds no")]
    for bank, says in cases:
        assert says in one_line_exit_2(["stop-rules", str(bank)], capsys), bank


def test_a_partial_checkpoint_with_deep_or_malformed_metadata(finished, tmp_path, capsys):
    import torch

    for logs in (deep_json(), '{"a": 1}', "[1"):
        run = copy_run(finished, tmp_path, f"run{len(logs)}")
        shutil.rmtree(run / "round_002")
        meta = {"next_epoch": "1", "logs": logs, "optimizer": "[]"}
        store.save_tensors(run / "round_002.partial.safetensors", {"rng": torch.zeros(3, dtype=torch.uint8)}, meta)
        err = one_line_exit_2(["resume", str(run), "-q"], capsys)
        assert "round_002.partial.safetensors" in err and "delete it to redo that round" in err


def test_a_gzip_that_unpacks_past_the_cap_is_refused(tmp_path, monkeypatch):
    import gzip

    from dsd2.data import fashion

    monkeypatch.setattr(fashion, "MAX_IDX_BYTES", 1000)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0" * 5000))
    with pytest.raises(UserError, match="unpacks to more than 1000 bytes"):
        fashion.read_idx(path, fashion.IDX_IMAGES_MAGIC)


def test_a_batch_whose_activations_cannot_fit_is_refused_before_allocating(tmp_path, capsys, monkeypatch):
    from dsd2 import memory_bound

    monkeypatch.setattr(memory_bound, "available_bytes", lambda device: 10**9)  # a 1 GB machine
    args = ["tiny_mnist1d", *TINY, "model.hidden=[4096, 4096]", "train.batch_size=65536"]
    for cmd in (["estimate", *args], ["run", *args, "--out", str(tmp_path / "o"), "-q"]):
        err = one_line_exit_2(cmd, capsys)
        assert "train.batch_size=65536 needs about" in err and "lower train.batch_size" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert main(["estimate", "tiny_mnist1d", *TINY]) == 0  # an ordinary batch fits
