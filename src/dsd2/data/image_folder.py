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
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dsd2 import safe_read
from dsd2.data import scans
from dsd2.data.cifar import IMAGENET_MEAN, IMAGENET_STD
from dsd2.data.core import AugmentSpec, RawDataset, register_dataset
from dsd2.data.files import ImageFiles, PathTable
from dsd2.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
DEFAULT_IMAGE_SIZE = 224
DEFAULT_MEMORY_BUDGET_GB = 4.0
EVAL_CROP_FRACTION = 0.875  # evaluation: resize the shorter side to image_size / 0.875, centre-crop image_size
TEST_FOLDER = "test"
VAL_FOLDERS = ("val", "valid")
MAX_AUTO_WORKERS = 8

# What a loader item asks for: a seeded random training transform, the evaluation transform, or
# the resize + centre crop of the memory path.
TRAIN, EVAL, RESIDENT = 0, 1, 2

LoaderMode = Literal["auto", "memory", "stream"]


# ----------------------------------------------------------------------------- the file list


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """A scanned folder: one :class:`PathTable` of train rows, then val rows, then test rows."""

    root: Path
    classes: tuple[str, ...]
    table: PathTable
    labels: np.ndarray  # int64 class of every table row
    n_train: int
    n_val: int  # rows of a val/ folder next to test/ (0: none, the validation split is carved from train)
    n_test: int
    test_folder: str

    @property
    def n_total(self) -> int:
        return self.n_train + self.n_val + self.n_test


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# A scan is bounded: folders deeper than this, or more entries than this, are not a dataset.
MAX_SCAN_DEPTH = 32
MAX_SCAN_ENTRIES = 20_000_000


def _display(path: str) -> str:
    """A path for a message, whatever bytes its name holds."""
    return os.fsencode(path).decode("utf-8", "backslashreplace") if _has_surrogates(path) else path


def _has_surrogates(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _images_under(folder: str, root: str | None = None, *, follow_links: bool = False) -> list[str]:
    """Image files under ``folder`` (recursively), "/"-relative, sorted; hidden entries skipped.

    Symbolic links to files are followed. A link to a folder is followed when it stays inside
    ``root`` (the dataset root, resolved; ``follow_links``: anywhere) and does not lead back to a
    folder the walk is inside (a loop such as ``up -> ..`` would repeat the images under another
    class, and two self-links make the walk exponential): such a link is a UserError naming it.
    Special files (FIFOs, devices) and names that are not UTF-8 are UserErrors too."""
    root_real = os.path.realpath(root if root is not None else folder)
    found: list[str] = []
    count = 0
    # (real path, relative prefix, real paths of the folders above it)
    stack: list[tuple[str, str, frozenset[str], int]] = [(folder, "", frozenset({os.path.realpath(folder)}), 0)]
    while stack:
        current, prefix, above, depth = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name, reverse=True)
        except OSError as err:
            raise UserError(f"cannot list {_display(current)}: {err.strerror or err}") from None
        for entry in entries:
            count += 1
            if count > MAX_SCAN_ENTRIES:
                raise UserError(f"{_display(folder)} holds more than {MAX_SCAN_ENTRIES} entries: not an image dataset this scan reads")
            name = entry.name
            if name.startswith("."):
                continue
            if _has_surrogates(name):
                raise UserError(
                    f"{_display(entry.path)}: the file name is not UTF-8; rename it (e.g. with convmv) or move it out of the folder"
                )
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = entry.is_file()
            except OSError as err:
                raise UserError(f"cannot read {entry.path}: {err.strerror or err}") from None
            if is_dir:
                real = os.path.realpath(entry.path)
                if entry.is_symlink():
                    if real in above or any(_within(a, real) for a in above):
                        raise UserError(
                            f"{entry.path} is a symbolic link back to {real}, a folder above it: the scan would loop (the same images "
                            "again, under another class). Remove the link"
                        )
                    if not follow_links and not _within(real, root_real):
                        raise UserError(
                            f"{entry.path} is a symbolic link to {real}, outside the dataset root {root_real}: not followed. Move the "
                            "images inside the root, or set dataset.follow_links=true to follow links out of it"
                        )
                if depth + 1 > MAX_SCAN_DEPTH:
                    raise UserError(f"{entry.path} is more than {MAX_SCAN_DEPTH} folders deep under {folder}: not an image dataset layout")
                stack.append((entry.path, prefix + name + "/", above | {real}, depth + 1))
            elif _is_image(name):
                if not is_file:
                    what = "a dangling symbolic link" if entry.is_symlink() and not os.path.exists(entry.path) else "not a regular file"
                    raise UserError(f"{entry.path} is {what}: remove it or replace it with the image")
                found.append(prefix + name)
    return sorted(found)


def _class_dirs(folder: Path) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise UserError(f"cannot list {folder}: {err.strerror or err}") from None
    bad = [n for n in names if _has_surrogates(n)]
    if bad:
        raise UserError(f"{_display(str(folder / bad[0]))}: the folder name is not UTF-8; rename it (a class name must be text)")
    return names


def _interleave(per_class: list[list[str]], prefixes: list[str]) -> tuple[list[str], list[int]]:
    """Rows in class-interleaved order: the k-th file of every class before the (k+1)-th."""
    paths: list[str] = []
    labels: list[int] = []
    longest = max((len(files) for files in per_class), default=0)
    for k in range(longest):
        for c, files in enumerate(per_class):
            if k < len(files):
                paths.append(prefixes[c] + files[k])
                labels.append(c)
    return paths, labels


def _scan_split(
    root: Path, split: str, classes: tuple[str, ...], *, require_all: bool, follow_links: bool = False
) -> tuple[list[str], list[int]]:
    folder = root / split
    found = _class_dirs(folder)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise UserError(
            f"{folder / unknown[0]} is not a class of {root / 'train'} ({len(unknown)} such folder(s)): every {split}/ class must "
            "have a train/ folder of the same name"
        )
    per_class = []
    for c in classes:
        files = _images_under(str(folder / c), str(root), follow_links=follow_links) if c in found else []
        if require_all and not files:
            raise UserError(f"{folder / c} holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))}): every class needs training images")
        per_class.append(files)
    if not any(per_class):
        raise UserError(f"{folder} holds no image in its class folders")
    return _interleave(per_class, [f"{split}/{c}/" for c in classes])


def scan_folder(root: str | Path, *, follow_links: bool = False) -> ImageFolder:
    """The folder's classes and files (see the module doc); UserError for a layout it cannot read."""
    root = Path(root).expanduser()
    layout = "expected root/train/<class>/<images> and root/test/<class>/<images> (or root/val/ as the test split)"
    if not root.is_dir():
        raise UserError(f"dataset.root={root} is not a folder; {layout}")
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; {layout}")
    val = next((v for v in VAL_FOLDERS if (root / v).is_dir()), None)
    test = TEST_FOLDER if (root / TEST_FOLDER).is_dir() else val
    if test is None:
        raise UserError(f"{root} has no test/ (or val/) folder; {layout}")
    classes = tuple(_class_dirs(root / "train"))
    if not classes:
        raise UserError(f"{root / 'train'} has no class folder; {layout}")
    train_paths, train_labels = _scan_split(root, "train", classes, require_all=True, follow_links=follow_links)
    val_paths: list[str] = []
    val_labels: list[int] = []
    if val is not None and test == TEST_FOLDER:
        val_paths, val_labels = _scan_split(root, val, classes, require_all=False, follow_links=follow_links)
    test_paths, test_labels = _scan_split(root, test, classes, require_all=False, follow_links=follow_links)
    return ImageFolder(
        root=root,
        classes=classes,
        table=PathTable.from_paths(root, train_paths + val_paths + test_paths),
        labels=np.asarray(train_labels + val_labels + test_labels, dtype=np.int64),
        n_train=len(train_paths),
        n_val=len(val_paths),
        n_test=len(test_paths),
        test_folder=test,
    )


# ----------------------------------------------------------------------------- decoding and transforms


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def decode_rgb(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 ``3 × H × W`` RGB (PIL decodes; palette, grey, alpha, CMYK
    and 16-bit images are converted); UserError naming the file when it does not decode."""
    from PIL import Image

    safe_read.check_regular(path, what="image")  # a FIFO would block the decoder forever, a device never ends
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: scale, PIL's RGB conversion would clip
                arr16 = np.asarray(im, dtype=np.float64)
                grey = np.clip(arr16 / (65535.0 if im.mode != "I" or arr16.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255)
                rgb = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
            else:
                rgb = np.array(im.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct/zlib errors, DecompressionBombError
        raise UserError(f"cannot decode image {path}: {_first_line(err)}; remove or replace the file") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UserError(f"cannot decode image {path}: it decodes to shape {rgb.shape}; remove or replace the file")
    return torch.from_numpy(rgb).permute(2, 0, 1)


def eval_resize(image_size: int) -> int:
    """Shorter side before the evaluation centre crop: image_size / 0.875 (256 for 224)."""
    return max(image_size, round(image_size / EVAL_CROP_FRACTION))


def _transforms(image_size: int, augment: AugmentSpec) -> dict[int, Any]:
    from torchvision.transforms import v2

    s = image_size
    train: list[Any] = [v2.RandomResizedCrop(s, antialias=True)] if augment.resized_crop else [v2.Resize(eval_resize(s)), v2.CenterCrop(s)]
    if augment.flip:
        train.append(v2.RandomHorizontalFlip())
    return {
        TRAIN: v2.Compose(train),
        EVAL: v2.Compose([v2.Resize(eval_resize(s), antialias=True), v2.CenterCrop(s)]),
        RESIDENT: v2.Compose([v2.Resize(s, antialias=True), v2.CenterCrop(s)]),
    }


_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def sample_seeds(epoch_seed: int, index: np.ndarray) -> np.ndarray:
    """One seed per sample from (epoch seed, sample index): splitmix64, uint64."""
    with np.errstate(over="ignore"):
        z = _U64(epoch_seed) + (index.astype(np.uint64) + _U64(1)) * _GOLDEN
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


class _Items(torch.utils.data.Dataset):
    """Loader items ``(table row, mode, seed)`` → ``(uint8 3×S×S image, decoded ok)``.

    A failed decode returns a black image and False (a worker's exception would reach the main
    process as a multi-line traceback); :class:`ImageLoader` turns it into a UserError naming the
    file. The training transform runs under ``torch.manual_seed(seed)`` in a forked RNG state, so
    it depends on the seed alone, not on which process or what ran before.
    """

    def __init__(self, table: PathTable, image_size: int, augment: AugmentSpec):
        self.table, self.image_size, self.augment = table, image_size, augment
        self._tf: dict[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, bool]:
        row, mode, seed = item
        if self._tf is None:
            self._tf = _transforms(self.image_size, self.augment)
        try:
            img = decode_rgb(self.table.path(row))
        except UserError:
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False
        if mode == TRAIN:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self._tf[TRAIN](img)
        else:
            out = self._tf[mode](img)
        return out.contiguous(), True


def _collate(batch: list[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.bool)


@dataclass
class _Plan:
    """The DataLoader's batch sampler: the batches of the pass being read, set before each pass
    (lives in the main process; persistent workers only see the items)."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mode: int = EVAL
    seeds: np.ndarray | None = None
    batch_size: int = 1

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def batch(self, b: int) -> list[tuple[int, int, int]]:
        lo, hi = b * self.batch_size, min(len(self.rows), (b + 1) * self.batch_size)
        rows = self.rows[lo:hi].tolist()
        seeds = self.seeds[lo:hi].tolist() if self.seeds is not None else [0] * len(rows)
        return [(r, self.mode, s) for r, s in zip(rows, seeds)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for b in range(len(self)):
            yield self.batch(b)


def default_workers() -> int:
    """``dataset.workers: auto``: the usable cores less one for the training process, at most 8."""
    from dsd2.threads import usable_cores

    return max(1, min(MAX_AUTO_WORKERS, usable_cores() - 1))


def resolve_workers(workers: int | str | None) -> int:
    if workers is None or workers == "auto":
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"dataset.workers must be an integer >= 0 or auto, got {workers!r}")
    return workers


class ImageLoader:
    """Decodes a folder's files in DataLoader workers (persistent across passes), batch by batch in
    the order asked. One per run: training, evaluation and entropy passes share its workers.

    ``batches(rows, mode, seeds, batch_size)`` yields uint8 ``B × 3 × S × S`` CPU tensors (pinned
    when ``pin_memory``); ``mode`` TRAIN needs one seed per row (:func:`sample_seeds`).
    """

    def __init__(self, table: PathTable, image_size: int, *, augment: AugmentSpec, workers: int = 0, pin_memory: bool = False):
        self.table, self.image_size, self.workers = table, image_size, int(workers)
        self._items = _Items(table, image_size, augment)
        self._plan = _Plan()
        self._pin = pin_memory
        self._loader: torch.utils.data.DataLoader | None = None

    def _dataloader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            w = self.workers
            self._loader = torch.utils.data.DataLoader(
                self._items,
                batch_sampler=self._plan,
                num_workers=w,
                collate_fn=_collate,
                pin_memory=self._pin,
                persistent_workers=w > 0,
                prefetch_factor=4 if w > 0 else None,
                # forked (Linux's default): a spawned worker would re-import the caller's __main__,
                # which breaks scripts without a main guard; a forked one drops the run lock it
                # inherits (dsd2.store) and exits on its own a few seconds after a kill of the run
            )
        return self._loader

    def batches(self, rows: np.ndarray, mode: int, seeds: np.ndarray | None, batch_size: int) -> Iterator[torch.Tensor]:
        if mode == TRAIN and (seeds is None or len(seeds) != len(rows)):
            raise ValueError("training batches need one seed per row")
        if len(rows) == 0:
            return
        plan = _Plan(np.asarray(rows, dtype=np.int64), mode, seeds, max(1, int(batch_size)))
        self._plan.rows, self._plan.mode, self._plan.seeds, self._plan.batch_size = plan.rows, plan.mode, plan.seeds, plan.batch_size
        for b, (images, ok) in enumerate(self._dataloader()):
            if not bool(ok.all()):
                self._raise_unreadable(plan, b, ok)
            yield images

    def _raise_unreadable(self, plan: _Plan, b: int, ok: torch.Tensor) -> None:
        row = plan.batch(b)[int((~ok).nonzero()[0])][0]
        path = self.table.path(row)
        decode_rgb(path)  # raises the UserError with the decoder's reason
        raise UserError(f"cannot decode image {path} in a loader worker (it decodes now: a flaky file system?)")

    def close(self) -> None:
        """Stop the workers (they also stop with the process)."""
        loader, self._loader = self._loader, None
        it = getattr(loader, "_iterator", None) if loader is not None else None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def decode_all(files: ImageFiles, *, workers: int, batch_size: int = 256) -> torch.Tensor:
    """Every image of ``files`` resized and centre-cropped to ``image_size``²: one uint8 N×3×S×S tensor."""
    s = files.image_size
    out = torch.empty((len(files), 3, s, s), dtype=torch.uint8)
    loader = ImageLoader(files.table, s, augment=AugmentSpec(), workers=workers if len(files) > batch_size else 0)
    try:
        at = 0
        for images in loader.batches(files.rows, RESIDENT, None, batch_size):
            out[at : at + images.shape[0]] = images
            at += images.shape[0]
    finally:
        loader.close()
    return out


# ----------------------------------------------------------------------------- the registered dataset


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
    folder = scans.scan(root, follow_links=follow_links)  # the fingerprint's listing, within a start
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
