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

from dsd2 import rundir, safe_read, store
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
