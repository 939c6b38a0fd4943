"""Scanning an image folder: its classes and files, in class-interleaved order, as one
:class:`~dsd2.data.files.PathTable` (the layout and the order: :mod:`dsd2.data.image_folder`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsd2.data.files import PathTable
from dsd2.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
TEST_FOLDER = "test"
VAL_FOLDERS = ("val", "valid")


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
                    _check_folder_link(entry.path, real, above, root_real, follow_links)
                if depth + 1 > MAX_SCAN_DEPTH:
                    raise UserError(f"{entry.path} is more than {MAX_SCAN_DEPTH} folders deep under {folder}: not an image dataset layout")
                stack.append((entry.path, prefix + name + "/", above | {real}, depth + 1))
            elif _is_image(name):
                if not is_file:
                    what = "a dangling symbolic link" if entry.is_symlink() and not os.path.exists(entry.path) else "not a regular file"
                    raise UserError(f"{entry.path} is {what}: remove it or replace it with the image")
                found.append(prefix + name)
    return sorted(found)


def _check_folder_link(path: str, real: str, above: frozenset[str], root_real: str, follow_links: bool) -> None:
    """A link to a folder is followed only when it does not lead back to a folder the walk is
    inside, and stays inside the dataset root unless ``follow_links``."""
    if real in above or any(_within(a, real) for a in above):
        raise UserError(
            f"{path} is a symbolic link back to {real}, a folder above it: the scan would loop (the same images "
            "again, under another class). Remove the link"
        )
    if not follow_links and not _within(real, root_real):
        raise UserError(
            f"{path} is a symbolic link to {real}, outside the dataset root {root_real}: not followed. Move the "
            "images inside the root, or set dataset.follow_links=true to follow links out of it"
        )


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
    if not root.exists():  # moved, most often: dataset.root is a location, given anew on a run
        raise UserError(
            f"dataset.root={root} is not a folder (nothing there): give the image folder's place, e.g. "
            "`dsd2 resume RUN_DIR dataset.root=NEW` for a run whose images moved"
        )
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
