"""Writers of tiny datasets in the *real* file formats, for tests and demos.

CIFAR: protocol-2 pickles of dicts with bytes keys (``b'data'`` uint8 N×3072, channel-planar
row-major like the official release), plus ``batches.meta`` / ``meta``, as a folder or as the
official ``.tar.gz``. Fashion-MNIST: big-endian idx files, gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from dsd2.data.cifar import CIFAR10, CIFAR100, CifarLayout
from dsd2.data.fashion import FILES as FASHION_FILES


def _layout(kind: str) -> CifarLayout:
    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[kind]


def make_cifar_arrays(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    return data, labels


def write_cifar(
    root: str | Path,
    kind: str = "cifar10",
    *,
    n_per_train_file: int = 20,
    n_test: int = 10,
    seed: int = 0,
    as_tar: bool = False,
) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10/100 under ``root`` (folder, or ``.tar.gz`` when ``as_tar``).

    Returns ``train_data`` (N×3072 uint8 in file order), ``train_labels``, ``test_data``,
    ``test_labels`` so a test can check round trips.
    """
    layout = _layout(kind)
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    train_data, train_labels = [], []
    for i, fname in enumerate(layout.train_files):
        data, labels = make_cifar_arrays(n_per_train_file, layout.num_classes, rng)
        train_data.append(data)
        train_labels += labels
        files[fname] = _batch_pickle(layout, data, labels, f"training batch {i + 1} of {len(layout.train_files)}")
    test_data, test_labels = make_cifar_arrays(n_test, layout.num_classes, rng)
    files[layout.test_file] = _batch_pickle(layout, test_data, test_labels, "testing batch 1 of 1")
    meta_name = "batches.meta" if kind == "cifar10" else "meta"
    meta: dict[bytes, object] = (
        {b"label_names": [f"class{c}".encode() for c in range(10)], b"num_cases_per_batch": n_per_train_file, b"num_vis": 3072}
        if kind == "cifar10"
        else {b"fine_label_names": [f"f{c}".encode() for c in range(100)], b"coarse_label_names": [f"c{c}".encode() for c in range(20)]}
    )
    files[meta_name] = pickle.dumps(meta, protocol=2)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if as_tar:
        with tarfile.open(root / layout.tarball, "w:gz") as tf:
            for fname, blob in files.items():
                info = tarfile.TarInfo(f"{layout.folder}/{fname}")
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    else:
        folder = root / layout.folder
        folder.mkdir(parents=True, exist_ok=True)
        for fname, blob in files.items():
            (folder / fname).write_bytes(blob)
    return {
        "train_data": np.concatenate(train_data),
        "train_labels": np.asarray(train_labels, dtype=np.int64),
        "test_data": test_data,
        "test_labels": np.asarray(test_labels, dtype=np.int64),
    }


def _batch_pickle(layout: CifarLayout, data: np.ndarray, labels: list[int], batch_label: str) -> bytes:
    d: dict[bytes, object] = {
        b"batch_label": batch_label.encode(),
        layout.label_key.encode(): labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if layout.label_key == "fine_labels":
        d[b"coarse_labels"] = [c // 5 for c in labels]
    return pickle.dumps(d, protocol=2)


def idx_bytes(arr: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: magic 0,0,0x08,ndim then big-endian uint32 dims."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_fashion(folder: str | Path, *, n_train: int = 60, n_test: int = 20, seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """Write tiny Fashion-MNIST idx files (``.gz`` unless ``gz=False``) into ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, size=n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, size=n_test).astype(np.uint8),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in FASHION_FILES.items():
        blob = idx_bytes(arrays[key])
        if gz:
            (folder / f"{base}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / base).write_bytes(blob)
    return arrays


def _py2_str(b: bytes) -> bytes:
    """SHORT_BINSTRING / BINSTRING: how Python 2 pickles a ``str``."""
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def py2_cifar_batch_pickle(data: np.ndarray, labels: list[int], label_key: str = "labels") -> bytes:
    """A CIFAR batch pickled the way the official release was (Python 2, numpy 1.x, protocol 2).

    Hand-assembled opcodes: py2 ``str`` keys and array payload (SHORT_BINSTRING/BINSTRING),
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype`` globals.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8)
    n, d = data.shape
    out = b"\x80\x02}q\x00("
    out += _py2_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + _py2_str(b"b") + b"\x87R"
    out += b"(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", d) + b"\x86"
    out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + _py2_str(data.tobytes()) + b"tb"
    out += _py2_str(label_key.encode()) + b"](" + b"".join(b"J" + struct.pack("<i", int(v)) for v in labels) + b"e"
    out += _py2_str(b"batch_label") + _py2_str(b"training batch")
    out += b"u."
    return out


def write_image_folder(
    root: str | Path,
    *,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    n_train: int = 8,
    n_test: int = 4,
    n_val: int = 0,
    test_folder: str = "test",
    sizes: tuple[int, int] = (8, 40),
    seed: int = 0,
) -> list[Path]:
    """A tiny image folder: ``root/train/<class>/``, ``root/<test_folder>/<class>/`` (and
    ``root/val/<class>/`` when ``n_val``), PNG and JPEG files in turn, each of a random size
    between ``sizes`` (width and height drawn apart), coloured by class plus noise so a small
    net can learn the classes. Returns the written paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    written: list[Path] = []
    splits = [("train", n_train), (test_folder, n_test)] + ([("val", n_val)] if n_val else [])
    for split, n in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 97) % 256, (c * 181 + 60) % 256, (c * 53 + 120) % 256], dtype=np.float64)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
                pixels = np.clip(colour + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
                path = folder / f"img_{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
                Image.fromarray(pixels).save(path)
                written.append(path)
    return written
