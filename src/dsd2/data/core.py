"""Dataset containers, the dataset registry and the train/val split rule."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsd2.data.files import ImageFiles
from dsd2.errors import UserError
from dsd2.registry import Registry

# A registered dataset's validation split when its loader names none (capped at a fifth of tiny sets).
DEFAULT_VAL_SIZE = 5000


@dataclass(frozen=True)
class AugmentSpec:
    """Batched augmentation applied by the trainer through :func:`augment_batch`."""

    crop_padding: int = 0  # random crop back to the same size after zero padding of this many px (0 = none)
    flip: bool = False  # random horizontal flip
    # RandomResizedCrop per sample in the loader workers (streamed image folders only; not batched)
    resized_crop: bool = False

    @property
    def is_identity(self) -> bool:
        return self.crop_padding == 0 and not self.flip and not self.resized_crop


def _empty_idx() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test inputs of one dataset, labels clean.

    Images are uint8 ``N×C×H×W`` (normalise per batch with :func:`normalize`); MNIST-1D is
    float32 ``N×L``; a streamed image folder's splits are :class:`~dsd2.data.files.ImageFiles`
    (files decoded on demand, same ``shape``). ``train_idx`` (and ``val_idx``) are the sorted
    indices of the samples into the dataset's original training set.
    """

    name: str
    num_classes: int
    train_x: torch.Tensor | ImageFiles
    train_y: torch.Tensor
    train_idx: torch.Tensor
    val_x: torch.Tensor | ImageFiles
    val_y: torch.Tensor
    test_x: torch.Tensor | ImageFiles
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec
    val_idx: torch.Tensor = field(default_factory=_empty_idx)
    class_names: tuple[str, ...] | None = None  # class i's name, when the dataset has names
    files_digest: str | None = None  # image folders: sha256 of the file list (meta.json records it)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (``(C, H, W)`` or ``(L,)``)."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_y.shape[0])

    @property
    def streamed(self) -> bool:
        """The images stay on disk and are decoded by loader workers (an image folder's stream path)."""
        return not isinstance(self.train_x, torch.Tensor)


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a registered loader returns: the full original train and test sets.

    ``load_dataset`` carves the validation split and the optional train subset from it, unless
    ``val_rows`` names a fixed validation split (rows of the train set, e.g. an image folder's
    ``val/`` next to ``test/``).
    """

    name: str
    num_classes: int
    train_x: torch.Tensor | ImageFiles
    train_y: torch.Tensor
    test_x: torch.Tensor | ImageFiles
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec = AugmentSpec()
    default_val_size: int = DEFAULT_VAL_SIZE
    class_names: tuple[str, ...] | None = None
    val_rows: torch.Tensor | None = None
    files_digest: str | None = None


# A loader gets the resolved root (or None), whether it may download, and the seed (only
# generated datasets such as MNIST-1D use it); a loader with options (image_folder: image_size,
# loader, memory_budget_gb, workers) takes them as keyword arguments.
Loader = Callable[..., RawDataset]

# name -> loader; metadata (what is known without loading, e.g. by the sweep's cost estimate):
# num_classes, input_shape (one sample: (C, H, W) or (L,)), train_size and test_size (the
# original sets), default_val_size; or ``facts``, a function of the dataset config (a dict) that
# returns them cheaply (image_folder counts its files).
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    default_val_size: int | None = None,
    facts: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    overwrite: bool = False,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root: Path | None, *, download: bool, seed: int) -> RawDataset``.

    Names are case-insensitive and ``-`` equals ``_``. Registering a taken name raises
    ``ValueError`` unless ``overwrite=True``. The sizes are optional metadata for what runs
    without loading the data: the sweep's cost estimate needs ``num_classes``, ``input_shape`` and
    ``train_size`` (``default_val_size`` when the loader's differs from 5000); ``facts(dataset
    config as a dict)`` returns them when they depend on the config (image_folder).
    """
    sizes = {
        "num_classes": num_classes,
        "input_shape": tuple(input_shape) if input_shape is not None else None,
        "train_size": train_size,
        "test_size": test_size,
        "default_val_size": default_val_size,
        "facts": facts,
    }
    metadata = {k: v for k, v in sizes.items() if v is not None}
    return DATASETS.register(name, metadata=metadata, overwrite=overwrite)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return DATASETS.names()


def _as_index_tensor(idx: torch.Tensor) -> torch.Tensor:
    return idx.to(torch.int64).sort().values.contiguous()


def _take(x: torch.Tensor | ImageFiles, idx: torch.Tensor) -> torch.Tensor | ImageFiles:
    return x[idx].contiguous() if isinstance(x, torch.Tensor) else x.take(idx)


def _all(x: torch.Tensor | ImageFiles) -> torch.Tensor | ImageFiles:
    return x.contiguous() if isinstance(x, torch.Tensor) else x


def split_fixed_val(
    n: int, val_rows: torch.Tensor, *, val_size: int | None, train_subset: int | None, seed: int, name: str = "dataset"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)`` when the dataset fixes its validation rows: ``val_size`` None (or
    their number) keeps them, 0 drops them (no validation split); the train part is the other rows,
    ``train_subset`` a random subset of them (``torch.Generator`` seeded with ``seed``)."""
    val_idx = _as_index_tensor(val_rows)
    if val_size not in (None, 0, int(val_idx.numel())):
        raise UserError(
            f"{name}: the dataset has a fixed validation split of {val_idx.numel()} samples (an image folder's val/ next to "
            f"test/), so dataset.val_size={val_size} cannot carve another; leave it unset (or 0: no validation split)"
        )
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    train_idx = keep.nonzero().squeeze(1)
    if val_size == 0:
        val_idx = _empty_idx()
    if train_subset is not None:
        n_train = int(train_idx.numel())
        if isinstance(train_subset, bool) or not isinstance(train_subset, int) or train_subset < 1:
            raise UserError(f"{name}: train_subset must be a positive integer, got {train_subset!r}")
        if train_subset > n_train:
            raise UserError(f"{name}: train_subset={train_subset} is larger than the {n_train} training samples; use at most {n_train}")
        g = torch.Generator().manual_seed(int(seed))
        train_idx = _as_index_tensor(train_idx[torch.randperm(n_train, generator=g)[:train_subset]])
    return train_idx, val_idx


def _check_options(loader: Loader, options: Mapping[str, Any], name: str) -> None:
    params = inspect.signature(loader).parameters
    for key in options:
        if key not in params:
            raise UserError(f"dataset.{key} does not apply to dataset {name} (it is an option of image_folder); remove it")


def _check_raw(raw: RawDataset, name: str) -> None:
    for part in ("train", "test"):
        x, y = getattr(raw, f"{part}_x"), getattr(raw, f"{part}_y")
        if x.shape[0] != y.shape[0]:
            raise UserError(f"dataset {name}: {part} has {x.shape[0]} inputs but {y.shape[0]} labels")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= raw.num_classes):
            raise UserError(f"dataset {name}: {part} labels outside [0, {raw.num_classes})")


def split_train(n: int, *, val_size: int, train_subset: int | None, seed: int, name: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(train_idx, val_idx)`` into an original train set of ``n`` samples.

    The validation part is a random subset of ``val_size`` (``torch.Generator`` seeded with
    ``seed``); the train part is the rest in original index order. ``train_subset`` keeps a
    random subset of that many of the train part (same generator, drawn after the validation
    part), again sorted by original index.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise UserError(f"{name}: val_size must be an integer >= 0, got {val_size!r}")
    if val_size >= n:
        raise UserError(f"{name}: val_size={val_size} leaves no training samples (the training set has {n}); use a val_size below {n}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    val_idx = _as_index_tensor(perm[:val_size])
    train_idx = _as_index_tensor(perm[val_size:])
    if train_subset is not None:
        n_train = int(train_idx.numel())
        if isinstance(train_subset, bool) or not isinstance(train_subset, int) or train_subset < 1:
            raise UserError(f"{name}: train_subset must be a positive integer, got {train_subset!r}")
        if train_subset > n_train:
            raise UserError(
                f"{name}: train_subset={train_subset} is larger than the {n_train} training samples left "
                f"after val_size={val_size}; use at most {n_train}"
            )
        keep = torch.randperm(n_train, generator=g)[:train_subset]
        train_idx = _as_index_tensor(train_idx[keep])
    return train_idx, val_idx


def load_dataset(
    name: str,
    root: str | Path | None,
    *,
    val_size: int | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    augment: bool = True,
    options: Mapping[str, Any] | None = None,
) -> DataSplits:
    """Load a registered dataset and split it (see :func:`split_train`).

    ``val_size=None`` uses the dataset's default (5000 for CIFAR and Fashion-MNIST, 500 for
    MNIST-1D), capped at a fifth of the training set for tiny sets; ``val_size=0`` gives an
    empty validation split (the reference protocol). A dataset with fixed validation rows (an
    image folder's val/ next to test/) uses them (:func:`split_fixed_val`).
    ``augment=False`` sets the returned :class:`AugmentSpec` to the identity. ``options``: the
    loader's own keyword arguments (image_folder: image_size, loader, memory_budget_gb, workers);
    one the loader does not take is a UserError.
    """
    key = DATASETS.canonical(name)
    root_path = Path(root).expanduser() if root is not None and str(root) != "" else None
    loader = DATASETS.get(key)
    opts = dict(options or {})
    _check_options(loader, opts, key)
    raw = loader(root_path, download=bool(download), seed=int(seed), **opts)
    _check_raw(raw, key)
    n = int(raw.train_y.shape[0])
    if raw.val_rows is not None:
        train_idx, val_idx = split_fixed_val(n, raw.val_rows, val_size=val_size, train_subset=train_subset, seed=seed, name=key)
    else:
        vs = raw.default_val_size if val_size is None else val_size
        if val_size is None:
            vs = min(vs, n // 5)  # tiny sets (fixtures, custom data): the default never takes over 20%
        train_idx, val_idx = split_train(n, val_size=vs, train_subset=train_subset, seed=seed, name=key)
    return DataSplits(
        name=key,
        num_classes=int(raw.num_classes),
        train_x=_take(raw.train_x, train_idx),
        train_y=raw.train_y[train_idx].to(torch.int64).contiguous(),
        train_idx=train_idx,
        val_x=_take(raw.train_x, val_idx),
        val_y=raw.train_y[val_idx].to(torch.int64).contiguous(),
        test_x=_all(raw.test_x),
        test_y=raw.test_y.to(torch.int64).contiguous(),
        mean=tuple(float(m) for m in raw.mean),
        std=tuple(float(s) for s in raw.std),
        augment=raw.augment if augment else AugmentSpec(),
        val_idx=val_idx,
        class_names=tuple(raw.class_names) if raw.class_names is not None else None,
        files_digest=raw.files_digest,
    )
