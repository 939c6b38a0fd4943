"""Image folders (``dataset.name: image_folder``): ``root/train/<class>/*`` and ``root/test/<class>/*``.

Layout (docs/data.md)::

    root/train/<class>/**/<image>      the training set; class names = the sorted folder names
    root/test/<class>/**/<image>       the test set (or root/val/ when there is no test/: ImageNet's layout)
    root/val/<class>/**/<image>        next to test/: a fixed validation split (Flowers-102's official split)

Any image PIL (torchvision's default image loader) decodes counts (``.jpg .jpeg .png .gif
.webp .bmp .tif .tiff .ppm .pgm .pbm``, case-insensitive); it is converted to RGB uint8. Hidden
files and folders (a leading ``.``) and other files are skipped. A file that does not decode is a
:class:`~dsd2.errors.UserError` naming it.

Index order. The rows of a split interleave the classes: the first file of every class (sorted
by path, classes in sorted order), then the second of every class, and so on. Label noise that
flips "the first εN samples" (``noise.kind=symmetric``, the reference rule) then flips about ε of
every class, as on CIFAR, whose files come in random class order; a class-sorted order would flip
whole classes. ``labels.safetensors``' ``train_idx`` and the validation split index this order.

Two data paths behind the trainer's one interface, chosen by ``dataset.loader``:

* ``memory``: every image decoded once at load, resized (shorter side to ``image_size``) and
  centre-cropped to ``image_size``², kept as one uint8 tensor; training augments it on the
  device like CIFAR (random crop after zero padding of ``image_size // 8``, horizontal flip).
* ``stream``: images stay on disk and are decoded each time by DataLoader workers
  (:class:`ImageLoader`) with torchvision transforms v2: RandomResizedCrop(image_size) and a
  horizontal flip for training, Resize(image_size / 0.875) and CenterCrop(image_size) for
  evaluation. A sample's random transform is seeded by (epoch seed, sample index): the result does
  not depend on the number of workers, and a resumed run reproduces the uninterrupted one.
* ``auto``: ``memory`` when the decoded set (N · 3 · image_size² bytes, all splits) fits
  ``dataset.memory_budget_gb``, else ``stream``.

The folder is scanned by :mod:`dsd2.data.folder_scan` and decoded by :mod:`dsd2.data.image_loader`;
this module registers the dataset and chooses the data path.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dsd2.data.cifar import IMAGENET_MEAN, IMAGENET_STD
from dsd2.data.core import AugmentSpec, RawDataset, register_dataset
from dsd2.data.files import ImageFiles
from dsd2.data.folder_scan import IMAGE_EXTENSIONS, MAX_SCAN_DEPTH, MAX_SCAN_ENTRIES, TEST_FOLDER, VAL_FOLDERS, ImageFolder, scan_folder
from dsd2.data.image_loader import (
    EVAL,
    EVAL_CROP_FRACTION,
    MAX_AUTO_WORKERS,
    RESIDENT,
    TRAIN,
    ImageLoader,
    decode_all,
    decode_rgb,
    default_workers,
    eval_resize,
    resolve_workers,
    sample_seeds,
)
from dsd2.errors import UserError

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MEMORY_BUDGET_GB",
    "EVAL",
    "EVAL_CROP_FRACTION",
    "IMAGE_EXTENSIONS",
    "MAX_AUTO_WORKERS",
    "MAX_SCAN_DEPTH",
    "MAX_SCAN_ENTRIES",
    "RESIDENT",
    "TEST_FOLDER",
    "TRAIN",
    "VAL_FOLDERS",
    "ImageFiles",
    "ImageFolder",
    "ImageLoader",
    "LoaderMode",
    "choose_loader",
    "decode_all",
    "decode_rgb",
    "decoded_bytes",
    "default_workers",
    "eval_resize",
    "image_folder_facts",
    "load_image_folder",
    "resolve_workers",
    "sample_seeds",
    "scan_folder",
]

DEFAULT_IMAGE_SIZE = 224
DEFAULT_MEMORY_BUDGET_GB = 4.0

LoaderMode = Literal["auto", "memory", "stream"]


def decoded_bytes(n_images: int, image_size: int) -> int:
    """Bytes of ``n_images`` decoded at ``image_size``² RGB uint8."""
    return int(n_images) * 3 * int(image_size) ** 2


def choose_loader(mode: str, n_images: int, image_size: int, memory_budget_gb: float) -> Literal["memory", "stream"]:
    """``auto``: memory when the decoded set fits the budget (GB = 10^9 bytes), else stream."""
    if mode in ("memory", "stream"):
        return mode  # type: ignore[return-value]
    if mode != "auto":
        raise UserError(f"dataset.loader must be auto, memory or stream, got {mode!r}")
    return "memory" if decoded_bytes(n_images, image_size) <= memory_budget_gb * 1e9 else "stream"


def _check_fits_memory(n_images: int, image_size: int) -> None:
    """loader=memory decodes every image at once: refuse a set larger than the machine's memory
    before decoding the first image (dataset.image_size=60000 would ask 130 GB)."""
    need = decoded_bytes(n_images, image_size)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if need > have:
        raise UserError(
            f"dataset.loader=memory would decode {n_images} images at {image_size}x{image_size} into {need / 1e9:.1f} GB, more than "
            f"this machine's {have / 1e9:.1f} GB: lower dataset.image_size, or use dataset.loader=stream (or auto)"
        )


@functools.lru_cache(maxsize=8)
def _scan_cached(root: str, follow_links: bool = False) -> ImageFolder:
    return scan_folder(root, follow_links=follow_links)


def image_folder_facts(dataset: dict[str, Any]) -> dict[str, Any]:
    """What the sweep's cost estimate needs, from the folder's file counts (no image is decoded)."""
    root = dataset.get("root")
    if not root:
        raise UserError("dataset.root is not set: an image folder's size is counted from its files")
    folder = _scan_cached(str(Path(root).expanduser().resolve()), bool(dataset.get("follow_links")))
    size = dataset.get("image_size") or DEFAULT_IMAGE_SIZE
    facts: dict[str, Any] = {
        "num_classes": len(folder.classes),
        "input_shape": (3, size, size),
        "train_size": folder.n_train,
        "test_size": folder.n_test,
    }
    if folder.n_val:  # a val/ folder next to test/ is the validation split: nothing is carved from train/
        facts["default_val_size"] = 0
    return facts


@register_dataset("image_folder", facts=image_folder_facts)
def load_image_folder(
    root: Path | None,
    *,
    download: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    loader: str = "auto",
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    workers: int | str | None = "auto",
    follow_links: bool = False,
) -> RawDataset:
    """An image folder as a :class:`RawDataset`: uint8 tensors (memory path) or :class:`ImageFiles`
    (stream path); ImageNet mean/std; a val/ folder next to test/ as the fixed validation rows."""
    if download:
        raise UserError("image_folder has nothing to download: set dataset.download=false and dataset.root to the folder")
    if root is None:
        raise UserError("image_folder needs dataset.root: the folder holding train/<class>/ and test/<class>/")
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise UserError(f"dataset.image_size must be a positive integer, got {image_size!r}")
    folder = scan_folder(root, follow_links=follow_links)
    path = choose_loader(loader, folder.n_total, size, float(memory_budget_gb))
    if path == "memory":
        _check_fits_memory(folder.n_total, size)
    n_tv = folder.n_train + folder.n_val
    train_files = ImageFiles(folder.table, np.arange(n_tv, dtype=np.int64), size)
    test_files = ImageFiles(folder.table, np.arange(n_tv, folder.n_total, dtype=np.int64), size)
    train_x: torch.Tensor | ImageFiles
    test_x: torch.Tensor | ImageFiles
    if path == "memory":
        n_workers = resolve_workers(workers)
        train_x, test_x = decode_all(train_files, workers=n_workers), decode_all(test_files, workers=n_workers)
        augment = AugmentSpec(crop_padding=max(1, size // 8), flip=True)
    else:
        train_x, test_x = train_files, test_files
        augment = AugmentSpec(flip=True, resized_crop=True)
    labels = torch.from_numpy(folder.labels)
    return RawDataset(
        name="image_folder",
        num_classes=len(folder.classes),
        train_x=train_x,
        train_y=labels[:n_tv].clone(),
        test_x=test_x,
        test_y=labels[n_tv:].clone(),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=augment,
        class_names=folder.classes,
        val_rows=torch.arange(folder.n_train, n_tv) if folder.n_val else None,
        files_digest=folder.table.digest(),
    )
