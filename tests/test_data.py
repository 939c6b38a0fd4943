import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import random
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dsd2.data.cifar as cifar_mod
import dsd2.data.download as download_mod
import dsd2.data.fashion as fashion_mod
from dsd2.data import (
    AugmentSpec,
    DataSplits,
    RawDataset,
    augment_batch,
    list_datasets,
    load_dataset,
    normalize,
    register_dataset,
)
from dsd2.data.download import download_file, safe_extract_tar
from dsd2.data.safe_pickle import restricted_loads
from dsd2.data.testing import idx_bytes, py2_cifar_batch_pickle, write_cifar, write_fashion
from dsd2.errors import UserError

# ---------------------------------------------------------------- CIFAR


def _pixel(data: np.ndarray, i: int, c: int, r: int, col: int) -> int:
    # official layout: each row of `data` is 1024 red, then 1024 green, then 1024 blue values, row-major
    return int(data[i, c * 1024 + r * 32 + col])


def test_registry_lists_builtin_datasets():
    assert {"cifar10", "cifar100", "fashion_mnist", "mnist1d"} <= set(list_datasets())
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*cifar10"):
        load_dataset("imagenet", None)


def test_cifar10_folder_roundtrip_and_split(tmp_path):
    ref = write_cifar(tmp_path, "cifar10", n_per_train_file=20, n_test=10, seed=1)
    s = load_dataset("cifar10", tmp_path, val_size=30, seed=0)
    assert isinstance(s, DataSplits) and s.name == "cifar10" and s.num_classes == 10
    assert s.train_x.shape == (70, 3, 32, 32) and s.train_x.dtype == torch.uint8 and s.train_x.is_contiguous()
    assert s.val_x.shape == (30, 3, 32, 32) and s.test_x.shape == (10, 3, 32, 32)
    assert s.train_y.dtype == s.val_y.dtype == s.test_y.dtype == torch.int64
    assert s.train_idx.dtype == torch.int64
    # train part in original index order; val and train disjoint and covering
    assert torch.equal(s.train_idx, s.train_idx.sort().values)
    assert set(s.train_idx.tolist()).isdisjoint(s.val_idx.tolist())
    assert sorted(s.train_idx.tolist() + s.val_idx.tolist()) == list(range(100))
    # pixels and labels round-trip at known channel/row/col
    for j in (0, 5, 69):
        i = int(s.train_idx[j])
        for c, r, col in ((0, 0, 0), (1, 7, 3), (2, 31, 30), (0, 15, 31)):
            assert int(s.train_x[j, c, r, col]) == _pixel(ref["train_data"], i, c, r, col)
        assert int(s.train_y[j]) == ref["train_labels"][i]
    for j in range(30):
        i = int(s.val_idx[j])
        assert torch.equal(s.val_x[j].flatten(), torch.from_numpy(ref["train_data"][i]))
        assert int(s.val_y[j]) == ref["train_labels"][i]
    assert torch.equal(s.test_x.reshape(10, -1), torch.from_numpy(ref["test_data"]))
    assert s.test_y.tolist() == ref["test_labels"].tolist()
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225)
    assert s.augment == AugmentSpec(crop_padding=4, flip=True)
    assert s.input_shape == (3, 32, 32) and s.num_train == 70


def test_cifar_split_is_seeded(tmp_path):
    write_cifar(tmp_path, "cifar10")
    a = load_dataset("cifar10", tmp_path, val_size=20, seed=0)
    b = load_dataset("cifar10", tmp_path, val_size=20, seed=0)
    c = load_dataset("cifar10", tmp_path, val_size=20, seed=1)
    assert torch.equal(a.train_idx, b.train_idx) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.train_idx, c.train_idx)


def test_val_size_zero_default_and_augment_off(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_train_file=20)
    s = load_dataset("cifar10", tmp_path, val_size=0, augment=False)
    assert s.val_x.shape == (0, 3, 32, 32) and s.val_y.shape == (0,)
    assert torch.equal(s.train_idx, torch.arange(100))
    assert s.augment == AugmentSpec()
    d = load_dataset("cifar10", tmp_path)  # default 5000 capped to a fifth of a tiny set
    assert d.val_x.shape[0] == 20 and d.train_x.shape[0] == 80


def test_train_subset(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_train_file=20)
    full = load_dataset("cifar10", tmp_path, val_size=10, seed=3)
    sub = load_dataset("cifar10", tmp_path, val_size=10, train_subset=25, seed=3)
    assert sub.train_x.shape[0] == 25 and sub.train_y.shape[0] == 25
    assert torch.equal(sub.train_idx, sub.train_idx.sort().values)
    assert set(sub.train_idx.tolist()) <= set(full.train_idx.tolist())
    assert torch.equal(sub.val_idx, full.val_idx)
    pos = torch.searchsorted(full.train_idx, sub.train_idx)
    assert torch.equal(sub.train_x, full.train_x[pos])
    again = load_dataset("cifar10", tmp_path, val_size=10, train_subset=25, seed=3)
    assert torch.equal(again.train_idx, sub.train_idx)


def test_split_validation(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_train_file=20)
    with pytest.raises(UserError, match="val_size must be an integer >= 0"):
        load_dataset("cifar10", tmp_path, val_size=-1)
    with pytest.raises(UserError, match="val_size=100 leaves no training samples"):
        load_dataset("cifar10", tmp_path, val_size=100)
    with pytest.raises(UserError, match="train_subset=91 is larger than the 90"):
        load_dataset("cifar10", tmp_path, val_size=10, train_subset=91)
    with pytest.raises(UserError, match="train_subset must be a positive integer"):
        load_dataset("cifar10", tmp_path, val_size=10, train_subset=0)


def test_cifar100_from_tarball(tmp_path):
    ref = write_cifar(tmp_path, "cifar100", n_per_train_file=60, n_test=15, as_tar=True)
    assert not (tmp_path / "cifar-100-python").exists()
    s = load_dataset("cifar100", tmp_path, val_size=10, seed=0)
    assert (tmp_path / "cifar-100-python" / "train").is_file()  # extracted once, next to the archive
    assert s.num_classes == 100 and s.train_x.shape == (50, 3, 32, 32) and s.test_x.shape == (15, 3, 32, 32)
    i = int(s.train_idx[4])
    assert int(s.train_x[4, 2, 10, 20]) == _pixel(ref["train_data"], i, 2, 10, 20)
    assert s.train_y.tolist() == ref["train_labels"][s.train_idx.numpy()].tolist()  # fine labels
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    s2 = load_dataset("cifar100", tmp_path, val_size=10, seed=0)  # second load uses the folder
    assert torch.equal(s.train_x, s2.train_x)


def test_cifar10_from_tarball_and_root_is_the_batch_folder(tmp_path):
    ref = write_cifar(tmp_path, "cifar10", as_tar=True)
    s = load_dataset("cifar10", tmp_path, val_size=0)
    assert torch.equal(s.train_x.reshape(100, -1), torch.from_numpy(ref["train_data"]))
    direct = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", val_size=0)
    assert torch.equal(direct.train_x, s.train_x)


class _Evil:
    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return self.payload


@pytest.mark.parametrize("how", ["system", "open", "eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, how):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    payload = {
        "system": (os.system, (f"touch {marker}",)),
        "open": (open, (str(marker), "w")),
        "eval": (eval, (f"open({str(marker)!r}, 'w')",)),
    }[how]
    blob = pickle.dumps({b"data": _Evil(payload), b"labels": [0]}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(blob)
    with pytest.raises(UserError, match=r"refusing to unpickle .* from .*data_batch_3"):
        load_dataset("cifar10", tmp_path, val_size=0)
    assert not marker.exists()


def test_restricted_unpickler_admits_plain_numpy_pickles():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    obj = {b"a": arr, b"l": [1, 2], b"s": {1, 2}, b"b": b"xyz"}
    for proto in (2, 3, 4, 5):
        out = restricted_loads(pickle.dumps(obj, protocol=proto), source="mem")
        assert np.array_equal(out[b"a"], arr) and out[b"l"] == [1, 2] and out[b"s"] == {1, 2} and out[b"b"] == b"xyz"
    with pytest.raises(UserError, match="refusing to unpickle collections.OrderedDict from mem"):
        import collections

        restricted_loads(pickle.dumps(collections.OrderedDict(a=1), protocol=2), source="mem")


def test_truncated_or_corrupt_pickle(tmp_path):
    write_cifar(tmp_path, "cifar10")
    p = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    full = p.read_bytes()
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match=r"data_batch_2 is truncated or corrupt"):
        load_dataset("cifar10", tmp_path, val_size=0)
    p.write_bytes(b"")
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset("cifar10", tmp_path, val_size=0)
    # well-formed pickle with wrong content
    p.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, protocol=2))
    with pytest.raises(UserError, match=r"uint8 array of shape N×3072"):
        load_dataset("cifar10", tmp_path, val_size=0)
    p.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, protocol=2))
    with pytest.raises(UserError, match="4 images but 3 labels"):
        load_dataset("cifar10", tmp_path, val_size=0)
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2))
    with pytest.raises(UserError, match=r"labels outside \[0, 10\)"):
        load_dataset("cifar10", tmp_path, val_size=0)
    p.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(UserError, match="not a CIFAR batch"):
        load_dataset("cifar10", tmp_path, val_size=0)


def _tar_with(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)


@pytest.mark.parametrize("bad", ["../evil.txt", "cifar-10-batches-py/../../evil.txt", "/tmp/dsd2_evil_abs.txt", "symlink"])
def test_tar_with_unsafe_member_refused(tmp_path, bad):
    root = tmp_path / "root"
    root.mkdir()
    members = [("cifar-10-batches-py/data_batch_1", b"x")]
    if bad == "symlink":
        _tar_with(root / "cifar-10-python.tar.gz", members, symlink="cifar-10-batches-py/test_batch")
        match = "link or special file"
    else:
        _tar_with(root / "cifar-10-python.tar.gz", [*members, (bad, b"evil")])
        match = "absolute path or '..'"
    with pytest.raises(UserError, match=match):
        load_dataset("cifar10", root, val_size=0)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/dsd2_evil_abs.txt").exists()
    assert not (root / "cifar-10-batches-py").exists()  # nothing extracted at all


def test_tar_member_outside_expected_folder_and_truncated_tar(tmp_path):
    _tar_with(tmp_path / "cifar-10-python.tar.gz", [("other/x", b"x")])
    with pytest.raises(UserError, match="outside cifar-10-batches-py/"):
        load_dataset("cifar10", tmp_path, val_size=0)
    write_cifar(tmp_path / "t", "cifar10", as_tar=True)
    tb = tmp_path / "t" / "cifar-10-python.tar.gz"
    tb.write_bytes(tb.read_bytes()[:300])
    with pytest.raises(UserError, match="truncated|corrupt|not a readable tar"):
        load_dataset("cifar10", tmp_path / "t", val_size=0)


def test_missing_cifar_mentions_paths_and_download(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*cifar-10-python\.tar\.gz.*dataset\.download=true"):
        load_dataset("cifar10", tmp_path, val_size=0)
    with pytest.raises(UserError, match=r"cifar-100-python.*dataset\.download=true"):
        load_dataset("cifar100", tmp_path / "nowhere", val_size=0)
    with pytest.raises(UserError, match="needs dataset.root"):
        load_dataset("cifar10", None)
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(UserError, match="incomplete: missing data_batch_4"):
        load_dataset("cifar10", tmp_path, val_size=0)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_download_offline_and_checksum_mismatch(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", offline)
    with pytest.raises(
        UserError,
        match=r"could not download https://www\.cs\.toronto\.edu/~kriz/cifar-10-python"
        r"\.tar\.gz .*offline",
    ):
        load_dataset("cifar10", tmp_path, val_size=0, download=True)
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"junk"))
    with pytest.raises(UserError, match="checksum mismatch.*expected c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", tmp_path, val_size=0, download=True)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_verified_then_extracted(tmp_path, monkeypatch):
    src = tmp_path / "src"
    ref = write_cifar(src, "cifar10", as_tar=True)
    blob = (src / "cifar-10-python.tar.gz").read_bytes()
    md5 = hashlib.md5(blob).hexdigest()
    urls = []

    def serve(url, timeout=None):
        urls.append(url)
        return _FakeResponse(blob)

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", serve)
    monkeypatch.setattr(cifar_mod, "CIFAR10", dataclasses.replace(cifar_mod.CIFAR10, md5=md5))
    root = tmp_path / "root"
    s = load_dataset("cifar10", root, val_size=0, download=True)
    assert urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").read_bytes() == blob
    assert torch.equal(s.train_x.reshape(100, -1), torch.from_numpy(ref["train_data"]))
    # an existing file with the right checksum is not downloaded again
    download_file("https://example.invalid/x", root / "cifar-10-python.tar.gz", md5)
    assert len(urls) == 1


def test_a_download_never_replaces_a_file_it_did_not_write(tmp_path, no_system_fashion, monkeypatch):
    """Fashion-MNIST with 3 of its 4 files in root/fashion-mnist (the user's own copies, e.g.
    recompressed) and dataset.download=true: the download replaced them with the published ones."""
    write_fashion(tmp_path / "fashion-mnist", n_train=30, n_test=10)
    mine = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    before = mine.read_bytes()
    blob = b"published"
    monkeypatch.setattr(fashion_mod, "MD5", {name: hashlib.md5(blob).hexdigest() for name in fashion_mod.MD5})
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(blob))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz is there but is not the file .* dsd2 does not replace it"):
        load_dataset("fashion_mnist", tmp_path, val_size=0, download=True)
    assert mine.read_bytes() == before


def test_safe_extract_plain_archive(tmp_path):
    _tar_with(tmp_path / "a.tar.gz", [("top/sub/f.txt", b"hello")])
    safe_extract_tar(tmp_path / "a.tar.gz", tmp_path / "out")
    assert (tmp_path / "out" / "top" / "sub" / "f.txt").read_bytes() == b"hello"


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mod, "SYSTEM_DIR", tmp_path / "no-system-dir")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_idx_roundtrip(tmp_path, no_system_fashion, gz):
    ref = write_fashion(tmp_path / "fashion-mnist", n_train=60, n_test=20, gz=gz)
    s = load_dataset("fashion_mnist", tmp_path, val_size=10, seed=0)
    assert s.train_x.shape == (50, 1, 28, 28) and s.train_x.dtype == torch.uint8
    assert s.val_x.shape == (10, 1, 28, 28) and s.test_x.shape == (20, 1, 28, 28)
    for j in (0, 17, 49):
        i = int(s.train_idx[j])
        assert int(s.train_x[j, 0, 5, 21]) == int(ref["train_x"][i, 5, 21])
        assert int(s.train_y[j]) == int(ref["train_y"][i])
    assert torch.equal(s.test_x[:, 0], torch.from_numpy(ref["test_x"]))
    assert s.test_y.tolist() == ref["test_y"].tolist()
    assert s.mean == (0.2860,) and s.std == (0.3530,) and s.augment == AugmentSpec()


def test_fashion_truncated_and_corrupt_idx(tmp_path, no_system_fashion):
    write_fashion(tmp_path, n_train=30, n_test=10)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz is truncated or not a valid gzip"):
        load_dataset("fashion_mnist", tmp_path, val_size=0)
    raw = gzip.decompress(good)
    p.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, truncated idx payload
    with pytest.raises(UserError, match=r"is truncated: .* its header \(30, 28, 28\)"):
        load_dataset("fashion_mnist", tmp_path, val_size=0)
    p.write_bytes(gzip.compress(raw[:10]))
    with pytest.raises(UserError, match="truncated inside its idx header"):
        load_dataset("fashion_mnist", tmp_path, val_size=0)
    p.write_bytes(gzip.compress(idx_bytes(np.zeros(30, np.uint8))))  # a labels file where images belong
    with pytest.raises(UserError, match="magic number 2049, expected 2051"):
        load_dataset("fashion_mnist", tmp_path, val_size=0)
    p.write_bytes(good)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(29, np.uint8))))
    with pytest.raises(UserError, match="29 labels for 30 images"):
        load_dataset("fashion_mnist", tmp_path, val_size=0)


def test_fashion_missing_says_apt_and_download(tmp_path, no_system_fashion):
    with pytest.raises(UserError, match=r"apt-get install dataset-fashion-mnist.*dataset\.download=true"):
        load_dataset("fashion_mnist", tmp_path, val_size=0)
    with pytest.raises(UserError, match="needs dataset.root"):
        load_dataset("fashion_mnist", None, val_size=0, download=True)


def test_fashion_download_uses_official_urls_and_md5(tmp_path, no_system_fashion, monkeypatch):
    seen = []

    def offline(url, timeout=None):
        seen.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="could not download http://fashion-mnist.s3-website.eu-central-1"):
        load_dataset("fashion_mnist", tmp_path, val_size=0, download=True)
    assert seen == ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_real_dataset():
    s = load_dataset("fashion_mnist", None, val_size=5000, seed=0)
    assert s.train_x.shape == (55000, 1, 28, 28) and s.val_x.shape == (5000, 1, 28, 28)
    assert s.test_x.shape == (10000, 1, 28, 28)
    counts = torch.bincount(torch.cat([s.train_y, s.val_y]), minlength=10)
    assert counts.tolist() == [6000] * 10
    assert torch.bincount(s.test_y, minlength=10).tolist() == [1000] * 10
    assert abs(s.train_x.float().mean().item() / 255 - 0.2860) < 0.002


# ---------------------------------------------------------------- MNIST-1D


def test_mnist1d_shapes_determinism_and_global_rng():
    random.seed(5)
    np.random.seed(5)
    expect_py, expect_np = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    a = load_dataset("mnist1d", None, seed=0)
    assert (random.random(), np.random.rand()) == (expect_py, expect_np)  # global RNGs restored
    assert a.train_x.shape == (3500, 40) and a.train_x.dtype == torch.float32
    assert a.val_x.shape == (500, 40) and a.test_x.shape == (1000, 40)
    assert a.num_classes == 10 and a.mean == (0.0,) and a.std == (1.0,) and a.augment == AugmentSpec()
    assert int(a.train_y.min()) == 0 and int(a.train_y.max()) == 9
    b = load_dataset("mnist1d", None, seed=0)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_dataset("mnist1d", "/nonexistent", seed=1, val_size=0)
    assert c.train_x.shape == (4000, 40)
    assert not torch.equal(a.test_x, c.test_x)


# ---------------------------------------------------------------- registry


def test_register_custom_dataset():
    @register_dataset("tiny_custom", overwrite=True)
    def _tiny(root, *, download=False, seed=0):
        x = torch.arange(40, dtype=torch.float32).view(20, 2)
        y = torch.arange(20) % 2
        return RawDataset("tiny_custom", 2, x, y, x[:4], y[:4], (0.0,), (1.0,), default_val_size=5)

    assert "tiny_custom" in list_datasets()
    s = load_dataset("Tiny-Custom", None)
    assert s.train_x.shape == (16, 2) and s.val_x.shape == (4, 2)  # default 5 capped at 20 // 5
    assert torch.equal(s.train_x, torch.arange(40, dtype=torch.float32).view(20, 2)[s.train_idx])
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny_custom")(lambda root, **kw: None)


# ---------------------------------------------------------------- augmentation / normalisation


def _slow_reference(x, p, oy, ox, flips):
    xp = F.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    outs = []
    for i in range(x.shape[0]):
        crop = xp[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        outs.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(outs)


def _images(n=16, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def test_augment_identity_returns_same_tensor():
    x = _images()
    assert augment_batch(x, AugmentSpec()) is x
    f = torch.randn(5, 40)
    assert augment_batch(f, AugmentSpec(crop_padding=4, flip=True)) is f
    with pytest.raises(ValueError, match="N×C×H×W"):
        augment_batch(torch.zeros(3, 8, 8), AugmentSpec(flip=True))


def test_augment_flip_only():
    x = _images(64)
    out = augment_batch(x, AugmentSpec(flip=True), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 10 < int(flipped.sum()) < 54 and 10 < int(same.sum()) < 54


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_crop_matches_slow_reference(flip, dtype):
    p = 4
    x = _images(32).to(dtype)
    seed = 11
    out = augment_batch(x, AugmentSpec(crop_padding=p, flip=flip), torch.Generator().manual_seed(seed))
    # replay the documented draw order: row offsets, column offsets, then flips
    g = torch.Generator().manual_seed(seed)
    oy = torch.randint(0, 2 * p + 1, (32,), generator=g)
    ox = torch.randint(0, 2 * p + 1, (32,), generator=g)
    flips = (torch.rand(32, generator=g) < 0.5) if flip else torch.zeros(32, dtype=torch.bool)
    ref = _slow_reference(x, p, oy.tolist(), ox.tolist(), flips.tolist())
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, ref)
    assert len(set(zip(oy.tolist(), ox.tolist()))) > 5  # offsets really differ per sample


def test_augment_crop_every_output_is_a_shifted_padded_image():
    # independent of the draw order: each output must equal some shifted (and maybe flipped) crop
    p = 2
    x = _images(8, c=2, h=6, w=5, seed=3)
    out = augment_batch(x, AugmentSpec(crop_padding=p, flip=True), torch.Generator().manual_seed(1))
    xp = F.pad(x, (p, p, p, p))
    for i in range(8):
        candidates = [
            xp[i, :, dy : dy + 6, dx : dx + 5].flip(-1) if fl else xp[i, :, dy : dy + 6, dx : dx + 5]
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for fl in (False, True)
        ]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_augment_same_seed_same_output_and_channels_last():
    x = _images(16)
    spec = AugmentSpec(crop_padding=4, flip=True)
    a = augment_batch(x, spec, torch.Generator().manual_seed(5))
    b = augment_batch(x, spec, torch.Generator().manual_seed(5))
    c = augment_batch(x, spec, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    xc = x.contiguous(memory_format=torch.channels_last)
    d = augment_batch(xc, spec, torch.Generator().manual_seed(5))
    assert torch.equal(d, a) and d.is_contiguous(memory_format=torch.channels_last)
    e = augment_batch(x, AugmentSpec(flip=True), None)  # global RNG works too
    assert e.shape == x.shape


def test_normalize_matches_hand_computation():
    x = _images(4)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        hand = (x[:, c].double() / 255 - mean[c]) / std[c]
        assert torch.allclose(out[:, c].double(), hand, atol=1e-5)
    f = torch.randn(6, 40)
    assert torch.allclose(normalize(f, (0.5,), (2.0,)), (f - 0.5) / 2.0)
    g = _images(2, c=1)
    assert torch.allclose(normalize(g, (0.2860,), (0.3530,)), (g.float() / 255 - 0.2860) / 0.3530)
    assert torch.allclose(normalize(x[0], mean, std), out[0])  # a single C×H×W image
    with pytest.raises(ValueError, match="3 channel means"):
        normalize(_images(2, c=1), mean, std)
    with pytest.raises(TypeError):
        normalize(torch.zeros(2, 3, dtype=torch.int64), (0.0,), (1.0,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_and_normalize_on_cuda():
    x = _images(32).cuda()
    spec = AugmentSpec(crop_padding=4, flip=True)
    out = augment_batch(x, spec, torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.dtype == torch.uint8 and out.shape == x.shape
    again = augment_batch(x, spec, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(out, again)
    xp = F.pad(x, (4, 4, 4, 4)).cpu()
    for i in range(32):  # every output is a shifted (maybe flipped) crop of its padded image
        o = out[i].cpu()
        assert any(
            torch.equal(o, xp[i, :, dy : dy + 8, dx : dx + 8]) or torch.equal(o, xp[i, :, dy : dy + 8, dx : dx + 8].flip(-1))
            for dy in range(9)
            for dx in range(9)
        )
    with pytest.raises(ValueError, match="generator lives on"):
        augment_batch(x, spec, torch.Generator().manual_seed(0))
    n = normalize(out, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert n.is_cuda and torch.allclose(n.cpu(), normalize(out.cpu(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))


def test_python2_written_cifar_batch_loads(tmp_path):
    # the official files were written by Python 2 + numpy 1.x: py2 str opcodes, numpy.core globals
    ref = write_cifar(tmp_path, "cifar10", n_per_train_file=20)
    data = np.random.default_rng(9).integers(0, 256, (20, 3072), dtype=np.uint8)
    labels = [int(v) for v in np.random.default_rng(9).integers(0, 10, 20)]
    blob = py2_cifar_batch_pickle(data, labels)
    assert b"numpy.core.multiarray" in blob and b"_codecs" not in blob
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(blob)
    s = load_dataset("cifar10", tmp_path, val_size=0)
    assert torch.equal(s.train_x[:20].reshape(20, -1), torch.from_numpy(data))
    assert s.train_y[:20].tolist() == labels
    assert torch.equal(s.train_x[20:].reshape(80, -1), torch.from_numpy(ref["train_data"][20:]))


def test_a_tiny_pickle_cannot_ask_for_a_huge_array(tmp_path):
    """67 bytes that call numpy.ndarray((600000, 3072), uint8): refused before numpy allocates."""
    import tracemalloc

    from dsd2.data.safe_pickle import restricted_loads

    payload = b"\x80\x02cnumpy\nndarray\nq\x00J\xc0'\t\x00M\x00\x0c\x86q\x01cnumpy\ndtype\nq\x02X\x02\x00\x00\x00u1q\x03\x85q\x04Rq\x05\x86q\x06Rq\x07."
    tracemalloc.start()
    with pytest.raises(UserError, match="asks for a 1758 MiB array"):
        restricted_loads(payload, source="evil.pkl")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20
