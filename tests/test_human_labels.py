"""CIFAR-10N / CIFAR-100N human label files: real-format fixtures, safety, validation."""

from __future__ import annotations

import builtins
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file as st_save_file

from dsd2.data.human_labels import (
    HUMAN_LABEL_KEYS,
    human_labels,
    load_label_file,
    realized_noise_rate,
)
from dsd2.errors import UserError

N = 1000  # the real files have 50,000 labels; a smaller N keeps the tests fast


def _labels(seed: int, k: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n).astype(np.int64)


def _flip(clean: np.ndarray, rate: float, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = clean.copy()
    idx = rng.choice(clean.size, size=int(rate * clean.size), replace=False)
    out[idx] = (clean[idx] + rng.integers(1, k, size=idx.size)) % k
    return out


def _cifar10n_dict() -> dict[str, np.ndarray]:
    clean = _labels(0, 10)
    return {
        "clean_label": clean,
        "aggre_label": _flip(clean, 0.09, 10, 1),
        "worse_label": _flip(clean, 0.40, 10, 2),
        "random_label1": _flip(clean, 0.17, 10, 3),
        "random_label2": _flip(clean, 0.18, 10, 4),
        "random_label3": _flip(clean, 0.176, 10, 5),
    }


def _cifar100n_dict() -> dict[str, np.ndarray]:
    clean = _labels(10, 100)
    coarse = clean // 5  # any 100 -> 20 map will do for a fixture
    return {
        "clean_label": clean,
        "noisy_label": _flip(clean, 0.40, 100, 11),
        "clean_coarse_label": coarse,
        "noisy_coarse_label": _flip(coarse, 0.25, 20, 12),
    }


def _torch_save(obj, path: Path, **kw) -> Path:
    torch.save(obj, path, **kw)  # numpy arrays inside: exactly how the CIFAR-N files were made
    return path


def _rewrite_zip(src: Path, dst: Path, *, data_pkl: bytes | None = None, prefix: str | None = None) -> Path:
    """Copy a torch zip archive, optionally replacing data.pkl and/or renaming the prefix."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            old_prefix, rest = info.filename.split("/", 1)
            name = f"{prefix or old_prefix}/{rest}"
            payload = data_pkl if (rest == "data.pkl" and data_pkl is not None) else zin.read(info.filename)
            zout.writestr(name, payload)
    return dst


def _data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        return zf.read(name)


@pytest.fixture
def c10n(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    d = _cifar10n_dict()
    return _torch_save(d, tmp_path / "CIFAR-10_human.pt"), d


# ------------------------------------------------------------------ real format, 10N and 100N


def test_cifar10n_file_round_trip(c10n):
    path, d = c10n
    assert zipfile.is_zipfile(path)
    got = load_label_file(path)
    assert set(got) == set(HUMAN_LABEL_KEYS["cifar10"]) == set(d)
    for k, v in d.items():
        assert got[k].dtype == np.int64 and got[k].shape == (N,)
        np.testing.assert_array_equal(got[k], v)
    t = human_labels(path, "worse_label", expected_len=N, num_classes=10, clean_labels=torch.from_numpy(d["clean_label"]))
    assert t.dtype == torch.int64 and t.shape == (N,)
    np.testing.assert_array_equal(t.numpy(), d["worse_label"])
    assert realized_noise_rate(t, d["clean_label"]) == pytest.approx(0.40)


def test_torch_weights_only_refuses_the_real_format(c10n):
    """Why this module exists: torch's safe loader refuses numpy arrays, the unsafe one runs code."""
    path, _ = c10n
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    pkl = _data_pkl(path)
    # the globals the pickle needs: numpy's array reconstruct (numpy 2 spells it numpy._core),
    # numpy.ndarray, numpy.dtype and _codecs.encode (protocol 2 bytes)
    assert b"multiarray\n_reconstruct" in pkl
    assert b"numpy\nndarray" in pkl and b"numpy\ndtype" in pkl and b"_codecs\nencode" in pkl


def test_numpy1_spelling_and_other_prefix(tmp_path, c10n):
    """Files written under numpy 1.x name numpy.core.multiarray; old torch used the file stem as prefix."""
    path, d = c10n
    pkl = _data_pkl(path)
    old = pkl.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert old != pkl or b"numpy.core.multiarray\n" in pkl
    out = _rewrite_zip(path, tmp_path / "old.pt", data_pkl=old, prefix="CIFAR-10_human")
    got = load_label_file(out)
    np.testing.assert_array_equal(got["aggre_label"], d["aggre_label"])


def test_legacy_torch_format(tmp_path):
    d = _cifar10n_dict()
    path = _torch_save(d, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    got = load_label_file(path)
    np.testing.assert_array_equal(got["random_label2"], d["random_label2"])


def test_cifar100n_keys(tmp_path):
    d = _cifar100n_dict()
    path = _torch_save(d, tmp_path / "CIFAR-100_human.pt")
    got = load_label_file(path)
    assert set(got) == set(HUMAN_LABEL_KEYS["cifar100"])
    clean = torch.from_numpy(d["clean_label"])
    t = human_labels(path, "noisy_label", expected_len=N, num_classes=100, clean_labels=clean)
    np.testing.assert_array_equal(t.numpy(), d["noisy_label"])
    assert realized_noise_rate(t, clean) == pytest.approx(0.40)
    tc = human_labels(path, "noisy_coarse_label", expected_len=N, num_classes=20, clean_labels=clean)
    assert int(tc.max()) < 20
    # a 10-class dataset given the 100N file: out of range
    with pytest.raises(UserError, match=r"outside \[0, 10\)"):
        human_labels(path, "noisy_label", expected_len=N, num_classes=10)


def test_plain_torch_file_of_tensors(tmp_path):
    d = {k: torch.from_numpy(v) for k, v in _cifar10n_dict().items()}
    path = _torch_save(d, tmp_path / "tensors.pth")
    torch.load(path, weights_only=True)  # loads with torch's safe loader
    got = load_label_file(path)
    assert got["aggre_label"].dtype == np.int64
    t = human_labels(path, "aggre_label", expected_len=N, num_classes=10, clean_labels=d["clean_label"])
    assert torch.equal(t, d["aggre_label"])


# ------------------------------------------------------------------ other formats


def test_npy_npz_and_safetensors(tmp_path):
    d = _cifar10n_dict()
    np.save(tmp_path / "worse.npy", d["worse_label"])
    assert set(load_label_file(tmp_path / "worse.npy")) == {"labels"}
    for key in (None, "labels"):
        t = human_labels(tmp_path / "worse.npy", key, expected_len=N, num_classes=10)
        np.testing.assert_array_equal(t.numpy(), d["worse_label"])

    np.save(tmp_path / "obj.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="object array"):
        load_label_file(tmp_path / "obj.npy")

    np.savez(tmp_path / "all.npz", **d)
    t = human_labels(tmp_path / "all.npz", "random_label3", expected_len=N, num_classes=10, clean_labels=d["clean_label"])
    np.testing.assert_array_equal(t.numpy(), d["random_label3"])
    with pytest.raises(UserError, match="several label arrays"):
        human_labels(tmp_path / "all.npz", None, expected_len=N, num_classes=10)

    st = tmp_path / "labels.safetensors"
    st_save_file({k: torch.from_numpy(v) for k, v in d.items()}, str(st))
    t = human_labels(st, "aggre_label", expected_len=N, num_classes=10, clean_labels=d["clean_label"])
    np.testing.assert_array_equal(t.numpy(), d["aggre_label"])

    stf = tmp_path / "float.safetensors"
    st_save_file({"labels": torch.zeros(N)}, str(stf))
    with pytest.raises(UserError, match="dtype float32.*integers"):
        human_labels(stf, "labels", expected_len=N, num_classes=10)

    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_label_file(tmp_path / "cut.safetensors")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "worse.npy").read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_label_file(tmp_path / "cut.npy")


# ------------------------------------------------------------------ errors


def test_file_errors(tmp_path, c10n):
    path, _ = c10n
    with pytest.raises(UserError, match="does not exist"):
        human_labels(tmp_path / "nope.pt", "aggre_label", expected_len=N, num_classes=10)
    with pytest.raises(UserError, match="not a regular file"):
        load_label_file(tmp_path)
    (tmp_path / "notes.pt").write_text("hello, these are not labels\n")
    with pytest.raises(UserError, match="not a label file in a known format"):
        load_label_file(tmp_path / "notes.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_label_file(tmp_path / "empty.pt")

    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupt zip"):
        load_label_file(tmp_path / "trunc.pt")

    # damage a byte inside data.pkl's stored payload: the zip CRC check catches it
    pkl = _data_pkl(path)
    pos = raw.index(pkl[:64]) + len(pkl) // 2
    bad = bytearray(raw)
    bad[pos] ^= 0xFF
    (tmp_path / "crc.pt").write_bytes(bytes(bad))
    with pytest.raises(UserError, match="corrupt"):
        load_label_file(tmp_path / "crc.pt")

    # a truncated data.pkl inside a well-formed zip
    cut = _rewrite_zip(path, tmp_path / "cutpkl.pt", data_pkl=pkl[: len(pkl) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_label_file(cut)

    # a zip that is not a torch archive
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(UserError, match="neither a torch archive"):
        load_label_file(tmp_path / "other.zip")


def test_label_errors(tmp_path, c10n):
    path, d = c10n
    with pytest.raises(UserError, match="no labels named 'noisy_label'") as ei:
        human_labels(path, "noisy_label", expected_len=N, num_classes=10)
    assert "aggre_label" in str(ei.value) and "worse_label" in str(ei.value)

    with pytest.raises(UserError, match=f"has {N} labels, the dataset's training set has 50000"):
        human_labels(path, "aggre_label", expected_len=50000, num_classes=10)

    bad = dict(d, aggre_label=np.where(np.arange(N) == 7, 10, d["aggre_label"]))
    p = _torch_save(bad, tmp_path / "range.pt")
    with pytest.raises(UserError, match=r"1 labels outside \[0, 10\)"):
        human_labels(p, "aggre_label", expected_len=N, num_classes=10)
    neg = dict(d, aggre_label=np.where(np.arange(N) == 7, -1, d["aggre_label"]))
    with pytest.raises(UserError, match="outside"):
        human_labels(_torch_save(neg, tmp_path / "neg.pt"), "aggre_label", expected_len=N, num_classes=10)

    flt = dict(d, aggre_label=d["aggre_label"].astype(np.float64))
    with pytest.raises(UserError, match="dtype float64"):
        human_labels(_torch_save(flt, tmp_path / "float.pt"), "aggre_label", expected_len=N, num_classes=10)
    two_d = dict(d, aggre_label=d["aggre_label"].reshape(2, -1))
    with pytest.raises(UserError, match="1-D"):
        human_labels(_torch_save(two_d, tmp_path / "2d.pt"), "aggre_label", expected_len=N, num_classes=10)


def test_clean_label_must_match_dataset(tmp_path, c10n):
    path, d = c10n
    other = d["clean_label"].copy()
    other[[3, 500]] = (other[[3, 500]] + 1) % 10
    with pytest.raises(UserError, match="does not belong to this dataset/order") as ei:
        human_labels(path, "worse_label", expected_len=N, num_classes=10, clean_labels=other)
    assert "2 of 1000" in str(ei.value) and "index 3" in str(ei.value)
    # a shuffled training set is rejected too
    perm = np.random.default_rng(0).permutation(N)
    with pytest.raises(UserError, match="does not belong"):
        human_labels(path, "worse_label", expected_len=N, num_classes=10, clean_labels=d["clean_label"][perm])
    with pytest.raises(UserError, match="before any split"):
        human_labels(path, "worse_label", expected_len=N, num_classes=10, clean_labels=d["clean_label"][:900])
    # a file without clean_label cannot be checked: accepted
    p = _torch_save({"worse_label": d["worse_label"]}, tmp_path / "only.pt")
    t = human_labels(p, "worse_label", expected_len=N, num_classes=10, clean_labels=other)
    np.testing.assert_array_equal(t.numpy(), d["worse_label"])


# ------------------------------------------------------------------ malicious pickles


class _SystemPayload:
    def __reduce__(self):
        return (os.system, ("touch MARKER",))


class _OpenPayload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.open, (self.target, "w"))


def test_malicious_data_pkl_runs_nothing(tmp_path, c10n, monkeypatch):
    path, d = c10n
    monkeypatch.chdir(tmp_path)  # "touch MARKER" would land here
    marker = tmp_path / "MARKER"
    marker2 = tmp_path / "MARKER2"

    # the open() payload is live: what a plain unpickler calls for it (the REDUCE of its
    # __reduce__) creates the file, so the refusals below prove something
    live = tmp_path / "proof"
    call, args = _OpenPayload(str(live)).__reduce__()
    call(*args).close()
    assert live.exists()

    cases = [
        ("system.pt", {"clean_label": d["clean_label"], "worse_label": _SystemPayload()}, marker, "system"),
        ("open.pt", {"clean_label": _OpenPayload(str(marker2))}, marker2, r"io\.open"),  # builtins.open pickles as io.open
    ]
    for name, obj, mark, what in cases:
        evil = _rewrite_zip(path, tmp_path / name, data_pkl=pickle.dumps(obj, protocol=2))
        with pytest.raises(UserError, match=rf"refusing to unpickle \S*{what} from .*{name}"):
            load_label_file(evil)
        with pytest.raises(UserError, match="refusing to unpickle"):
            human_labels(evil, "clean_label", expected_len=N, num_classes=10)
        assert not mark.exists()

    # the same payload as a bare pickle / legacy-format file
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"a": _SystemPayload()}, protocol=2))
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_label_file(tmp_path / "evil.pkl")
    assert not marker.exists()


# ------------------------------------------------------------------ realized_noise_rate


def test_realized_noise_rate():
    clean = np.array([0, 1, 2, 3])
    assert realized_noise_rate(np.array([0, 1, 2, 3]), clean) == 0.0
    assert realized_noise_rate(torch.tensor([1, 1, 2, 0]), torch.from_numpy(clean)) == 0.5
    assert realized_noise_rate(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0.0
    with pytest.raises(ValueError):
        realized_noise_rate(np.array([1, 2]), clean)
    d = _cifar10n_dict()
    assert realized_noise_rate(d["aggre_label"], d["clean_label"]) == pytest.approx(0.09)
