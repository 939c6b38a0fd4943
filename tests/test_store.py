import errno
import os

import pytest
import torch

from dsd2 import store
from dsd2.errors import UserError


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "f.txt"
    store.atomic_write_text(p, "one")
    store.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [f.name for f in p.parent.iterdir()] == ["f.txt"]


def test_full_disk_fails_cleanly_and_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "rounds.csv"
    store.atomic_write_text(p, "old")
    real_fsync = os.fsync

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match="no space left"):
        store.atomic_write_text(p, "new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["rounds.csv"]


def test_tensors_roundtrip_and_corruption(tmp_path):
    p = tmp_path / "m.safetensors"
    masks = {"a.weight": torch.tensor([[True, False]]), "b.weight": torch.ones(3, dtype=torch.bool)}
    store.save_tensors(p, masks)
    back = store.load_tensors(p)
    assert all(torch.equal(back[k], v) for k, v in masks.items())
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(UserError, match="corrupt"):
        store.load_tensors(p)
    with pytest.raises(UserError, match="missing"):
        store.load_tensors(tmp_path / "nope.safetensors")


def test_manifest_detects_bit_flip_and_missing_file(tmp_path):
    rd = store.round_dir(tmp_path, 0)
    store.save_tensors(rd / "state.safetensors", {"w": torch.arange(10.0)})
    store.save_tensors(rd / "masks.safetensors", {"w": torch.ones(10, dtype=torch.bool)})
    store.write_json(rd / "metrics.json", {"row": {}})
    store.write_manifest(rd, ["state.safetensors", "masks.safetensors", "metrics.json"])
    assert store.finished_rounds(tmp_path) == [0]
    data = bytearray((rd / "state.safetensors").read_bytes())
    data[-3] ^= 0x01
    (rd / "state.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"state.safetensors does not match its checksum.*recompute"):
        store.finished_rounds(tmp_path)
    (rd / "state.safetensors").unlink()
    with pytest.raises(UserError, match="missing"):
        store.verify_manifest(rd)


def test_round_without_manifest_is_not_finished(tmp_path):
    rd = store.round_dir(tmp_path, 0)
    store.save_tensors(rd / "state.safetensors", {"w": torch.zeros(1)})
    assert store.finished_rounds(tmp_path) == []


def test_csv_roundtrip_exact_floats(tmp_path):
    rows = [{"round": 0, "acc": 0.1 + 0.2, "val": None, "phase": "light"}]
    store.write_csv(tmp_path / "r.csv", rows)
    back = store.read_csv(tmp_path / "r.csv")
    assert back == rows


@pytest.mark.parametrize("name", ["labels.safetensors", "init.safetensors", "masks.safetensors", "round_003.partial.safetensors"])
def test_bit_flip_in_any_tensor_file_is_detected(tmp_path, name):
    """Files outside a round manifest (labels, init, epoch checkpoints) carry their own checksum."""
    p = tmp_path / name
    store.save_tensors(p, {"noisy": torch.arange(1000), "flipped": torch.arange(10)}, metadata={"next_epoch": "3"})
    assert store.load_tensors(p)["noisy"].sum() == 499500
    data = bytearray(p.read_bytes())
    data[-100] ^= 0x04  # inside the tensor data: safetensors alone would not notice
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{name} does not match its checksum.*delete it"):
        store.load_tensors(p)


def test_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        with store.run_lock(run):
            pass
    assert victim.read_text() == "precious"
    assert store.is_locked(run) is False


def test_malformed_manifests_and_a_file_in_place_of_a_round_are_clear_errors(tmp_path):
    run = tmp_path / "run"
    rd = store.round_dir(run, 0)
    rd.mkdir(parents=True)
    (rd / store.MANIFEST).write_text("[1, 2]")
    with pytest.raises(UserError, match="MANIFEST.json is not what dsd2 writes"):
        store.finished_rounds(run)
    store.write_json(rd / store.MANIFEST, {"files": {}})  # an empty list must not mark a round finished
    with pytest.raises(UserError, match="does not list state.safetensors"):
        store.finished_rounds(run)
    (rd / store.MANIFEST).unlink()
    rd.rmdir()
    rd.write_text("not a folder")
    with pytest.raises(UserError, match="is a file where dsd2 keeps a folder"):
        store.finished_rounds(run)


def test_temp_files_of_a_killed_writer_are_removed_under_the_lock(tmp_path):
    run = tmp_path / "run"
    (run / "round_000").mkdir(parents=True)
    stale = [run / ".rounds.csv.abc123.tmp", run / "round_000" / ".state.safetensors.xyz.tmp"]
    for p in stale:
        p.write_bytes(b"half written")
    keep = run / "notes.tmp"
    keep.write_text("mine")
    with store.run_lock(run):
        pass
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_tensors_with_several_metadata_keys_save_to_the_same_bytes_every_time(tmp_path):
    # safetensors writes metadata in hash-map order: an export's sha256 changed from one export to the next
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    meta = {f"key_{i}": str(i) for i in range(12)}
    blobs = set()
    for i in range(6):
        store.save_tensors(tmp_path / f"{i}.safetensors", tensors, meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    loaded = store.load_tensors(tmp_path / "0.safetensors")
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert {k: v for k, v in f.metadata().items() if k.startswith("key_")} == meta
