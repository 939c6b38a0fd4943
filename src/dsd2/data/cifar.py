"""CIFAR-10 / CIFAR-100 from the official python-pickle release (folder or .tar.gz).

The batch files are pickles: they are read with :mod:`dsd2.data.safe_pickle`, which only
admits numpy arrays and plain containers. Expected layout under ``root``::

    root/cifar-10-batches-py/{data_batch_1..5, test_batch}      or root/cifar-10-python.tar.gz
    root/cifar-100-python/{train, test}                          or root/cifar-100-python.tar.gz

``root`` may also be the batch folder itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsd2.data.core import AugmentSpec, RawDataset, register_dataset
from dsd2.data.download import download_file, safe_extract_tar
from dsd2.data.safe_pickle import restricted_load
from dsd2.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASE_URL = "https://www.cs.toronto.edu/~kriz/"

# Class names in label order, as the release's batches.meta / meta files list them.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
    caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
    forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
    mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
    possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
    sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree
    wolf woman worm""".split()
)


@dataclass(frozen=True)
class CifarLayout:
    name: str
    title: str
    num_classes: int
    folder: str
    tarball: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str

    @property
    def url(self) -> str:
        return BASE_URL + self.tarball


CIFAR10 = CifarLayout(
    name="cifar10",
    title="CIFAR-10",
    num_classes=10,
    folder="cifar-10-batches-py",
    tarball="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_key="labels",
)
CIFAR100 = CifarLayout(
    name="cifar100",
    title="CIFAR-100",
    num_classes=100,
    folder="cifar-100-python",
    tarball="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    label_key="fine_labels",
)


def _has_files(folder: Path, layout: CifarLayout) -> bool:
    return all((folder / f).is_file() for f in (*layout.train_files, layout.test_file))


def _expected(root: Path, layout: CifarLayout) -> str:
    files = ", ".join((*layout.train_files, layout.test_file))
    return f"{root / layout.folder}/ (holding {files}) or the archive {root / layout.tarball}"


def find_cifar_folder(root: Path | None, layout: CifarLayout, *, download: bool) -> Path:
    """Return the folder holding the batch files, extracting or downloading the archive if needed."""
    if root is None:
        raise UserError(
            f"{layout.title} needs dataset.root: a folder holding {layout.folder}/ or {layout.tarball} "
            f"(set dataset.download=true to fetch {layout.url})"
        )
    folder = root / layout.folder
    if folder.is_dir():
        missing = [f for f in (*layout.train_files, layout.test_file) if not (folder / f).is_file()]
        if not missing:
            return folder
        raise UserError(
            f"{layout.title} folder {folder} is incomplete: missing {', '.join(missing)}; delete the folder "
            f"so that {layout.tarball} is extracted again (or downloaded, with dataset.download=true)"
        )
    if root.is_dir() and _has_files(root, layout):
        return root  # root is the batch folder itself
    archive = root / layout.tarball
    if not archive.is_file():
        if not download:
            raise UserError(
                f"{layout.title} not found: expected {_expected(root, layout)}. Set dataset.download=true "
                f"to download it ({layout.url}, md5-verified), or download it by hand and put it there"
            )
        download_file(layout.url, archive, layout.md5)
    safe_extract_tar(archive, root, expect_top=layout.folder)
    if not _has_files(folder, layout):
        raise UserError(f"{archive} did not contain the expected files ({_expected(root, layout)}); delete it and obtain it again")
    return folder


def _str_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def read_cifar_batch(path: Path, *, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle batch: ``(uint8 N×3×32×32, int64 N)``, shapes and ranges validated."""
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR batch (a pickled dict), it holds a {type(obj).__name__}")
    d = _str_keys(obj)
    if "data" not in d or label_key not in d:
        raise UserError(f"{path} is not a CIFAR batch: keys {sorted(d)} lack 'data' or {label_key!r}")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be a uint8 array of shape N×3072, got {desc}; the file is corrupt")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {label_key!r} is not a list of integers ({e})") from e
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise UserError(
            f"{path}: {data.shape[0]} images but {labels.shape[0] if labels.ndim == 1 else labels.shape} labels; "
            "the file is truncated or corrupt"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels outside [0, {num_classes}); the file is corrupt or of another dataset")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(root: Path | None, layout: CifarLayout, *, download: bool) -> RawDataset:
    folder = find_cifar_folder(root, layout, download=download)
    xs, ys = [], []
    for f in layout.train_files:
        x, y = read_cifar_batch(folder / f, label_key=layout.label_key, num_classes=layout.num_classes)
        xs.append(x)
        ys.append(y)
    tx, ty = read_cifar_batch(folder / layout.test_file, label_key=layout.label_key, num_classes=layout.num_classes)
    return RawDataset(
        name=layout.name,
        num_classes=layout.num_classes,
        train_x=torch.from_numpy(np.ascontiguousarray(np.concatenate(xs))),
        train_y=torch.from_numpy(np.concatenate(ys)),
        test_x=torch.from_numpy(np.array(tx, copy=True, order="C")),
        test_y=torch.from_numpy(np.array(ty, copy=True)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=AugmentSpec(crop_padding=4, flip=True),
        default_val_size=5000,
        class_names=CIFAR10_CLASSES if layout.num_classes == 10 else CIFAR100_CLASSES,
    )


@register_dataset("cifar10", num_classes=10, input_shape=(3, 32, 32), train_size=50000, test_size=10000, default_val_size=5000)
def _cifar10(root: Path | None, *, download: bool = False, seed: int = 0) -> RawDataset:
    return load_cifar(root, CIFAR10, download=download)


@register_dataset("cifar100", num_classes=100, input_shape=(3, 32, 32), train_size=50000, test_size=10000, default_val_size=5000)
def _cifar100(root: Path | None, *, download: bool = False, seed: int = 0) -> RawDataset:
    return load_cifar(root, CIFAR100, download=download)
