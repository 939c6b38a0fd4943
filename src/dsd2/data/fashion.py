"""Fashion-MNIST from the official idx files (gzip-compressed or plain).

Searched, in order: ``root``, ``root/fashion-mnist``, ``root/fashion_mnist``,
``root/FashionMNIST/raw`` (torchvision's layout), then ``/usr/share/datasets/fashion-mnist``
(Debian package ``dataset-fashion-mnist``). ``download=True`` fetches the four .gz files
(md5-verified) into ``root/fashion-mnist``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from dsd2.data.core import AugmentSpec, RawDataset, register_dataset
from dsd2.data.download import download_file
from dsd2.errors import UserError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83fd310",
}
MEAN = (0.2860,)
STD = (0.3530,)
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


# Fashion-MNIST's largest file is 47 MB unpacked: anything far above is not an idx file of it
# (and a small gzip must not unpack to gigabytes).
MAX_IDX_BYTES = 256 << 20


def _gunzip(packed: bytes, path: Path) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    raw = d.decompress(packed, MAX_IDX_BYTES + 1)
    if len(raw) > MAX_IDX_BYTES:
        raise UserError(f"{path} unpacks to more than {MAX_IDX_BYTES} bytes: not a Fashion-MNIST file; delete it and obtain it again")
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")
    return raw


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (``.gz`` or plain) into a uint8 array, validated."""
    from dsd2.safe_read import read_bytes

    packed = read_bytes(path, max_bytes=MAX_IDX_BYTES)  # a regular file (not a FIFO), bounded
    try:
        raw = _gunzip(packed, path) if path.suffix == ".gz" else packed
    except (EOFError, OSError, zlib.error) as e:
        raise UserError(f"{path} is truncated or not a valid gzip file ({e}); delete it and obtain it again") from e
    if len(raw) < 4:
        raise UserError(f"{path} is truncated: {len(raw)} bytes, not even an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expect_magic:
        raise UserError(f"{path} is not the expected idx file: magic number {magic}, expected {expect_magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated inside its idx header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise UserError(f"{path} is {what}: {len(raw)} bytes, its header {dims} implies {expected}; obtain it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(folder: Path, base: str) -> Path | None:
    for cand in (folder / f"{base}.gz", folder / base):
        if cand.is_file():
            return cand
    return None


def candidate_dirs(root: Path | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs += [root, root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw"]
    dirs.append(SYSTEM_DIR)
    return dirs


def find_fashion_files(root: Path | None, *, download: bool) -> dict[str, Path]:
    """Return the paths of the four idx files, downloading them into root/fashion-mnist if allowed."""
    dirs = candidate_dirs(root)
    for d in dirs:
        found = {k: _find(d, base) for k, base in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if download:
        if root is None:
            raise UserError("dataset.download=true needs dataset.root: the folder to download Fashion-MNIST into")
        target = root / "fashion-mnist"
        for fname, md5 in MD5.items():
            download_file(BASE_URL + fname, target / fname, md5)
        return {k: target / f"{base}.gz" for k, base in FILES.items()}
    names = ", ".join(f"{b}(.gz)" for b in FILES.values())
    raise UserError(
        f"Fashion-MNIST not found: looked for {names} in {', '.join(str(d) for d in dirs)}. "
        f"Install it with `apt-get install dataset-fashion-mnist` (files go to {SYSTEM_DIR}), "
        f"or set dataset.download=true to fetch it (md5-verified) from {BASE_URL}"
        + (f" into {root / 'fashion-mnist'}" if root is not None else " (needs dataset.root)")
    )


def _images(path: Path) -> np.ndarray:
    x = read_idx(path, IDX_IMAGES_MAGIC)
    if x.ndim != 3:
        raise UserError(f"{path}: images must be N×H×W, got shape {x.shape}")
    return x[:, None, :, :]


def _labels(path: Path, n: int, num_classes: int) -> np.ndarray:
    y = read_idx(path, IDX_LABELS_MAGIC).astype(np.int64)
    if y.shape != (n,):
        raise UserError(f"{path}: {y.shape[0] if y.ndim == 1 else y.shape} labels for {n} images")
    if y.size and y.max() >= num_classes:
        raise UserError(f"{path}: labels outside [0, {num_classes}); not Fashion-MNIST labels")
    return y


CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@register_dataset("fashion_mnist", num_classes=10, input_shape=(1, 28, 28), train_size=60000, test_size=10000, default_val_size=5000)
def _fashion_mnist(root: Path | None, *, download: bool = False, seed: int = 0) -> RawDataset:
    files = find_fashion_files(root, download=download)
    train_x = _images(files["train_x"])
    test_x = _images(files["test_x"])
    return RawDataset(
        name="fashion_mnist",
        num_classes=10,
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_y=torch.from_numpy(_labels(files["train_y"], train_x.shape[0], 10)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(_labels(files["test_y"], test_x.shape[0], 10)),
        mean=MEAN,
        std=STD,
        augment=AugmentSpec(),
        default_val_size=5000,
        class_names=CLASSES,
    )
