"""Dataset containers, the dataset registry and the train/val split rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsd2.errors import UserError
from dsd2.registry import Registry

# A registered dataset's validation split when its loader names none (capped at a fifth of tiny sets).
DEFAULT_VAL_SIZE = 5000


@dataclass(frozen=True)
class AugmentSpec:
    """Batched augmentation applied by the trainer through :func:`augment_batch`."""

    crop_padding: int = 0  # random crop back to the same size after zero padding of this many px (0 = none)
    flip: bool = False  # random horizontal flip

    @property
    def is_identity(self) -> bool:
        return self.crop_padding == 0 and not self.flip


def _empty_idx() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test tensors of one dataset, labels clean.

    Images are uint8 ``N×C×H×W`` (normalise per batch with :func:`normalize`); MNIST-1D is
    float32 ``N×L``. ``train_idx`` (and ``val_idx``) are the sorted indices of the samples into
    the dataset's original training set.
    """

    name: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    train_idx: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec
    val_idx: torch.Tensor = field(default_factory=_empty_idx)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (``(C, H, W)`` or ``(L,)``)."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_y.shape[0])


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a registered loader returns: the full original train and test sets.

    ``load_dataset`` carves the validation split and the optional train subset from it.
    """

    name: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec = AugmentSpec()
    default_val_size: int = DEFAULT_VAL_SIZE


# A loader gets the resolved root (or None), whether it may download, and the seed (only
# generated datasets such as MNIST-1D use it).
Loader = Callable[..., RawDataset]

# name -> loader; metadata (what is known without loading, e.g. by the sweep's cost estimate):
# num_classes, input_shape (one sample: (C, H, W) or (L,)), train_size and test_size (the
# original sets), default_val_size.
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    default_val_size: int | None = None,
    overwrite: bool = False,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root: Path | None, *, download: bool, seed: int) -> RawDataset``.

    Names are case-insensitive and ``-`` equals ``_``. Registering a taken name raises
    ``ValueError`` unless ``overwrite=True``. The sizes are optional metadata for what runs
    without loading the data: the sweep's cost estimate needs ``num_classes``, ``input_shape`` and
    ``train_size`` (``default_val_size`` when the loader's differs from 5000).
    """
    sizes = {
        "num_classes": num_classes,
        "input_shape": tuple(input_shape) if input_shape is not None else None,
        "train_size": train_size,
        "test_size": test_size,
        "default_val_size": default_val_size,
    }
    metadata = {k: v for k, v in sizes.items() if v is not None}
    return DATASETS.register(name, metadata=metadata, overwrite=overwrite)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return DATASETS.names()


def _as_index_tensor(idx: torch.Tensor) -> torch.Tensor:
    return idx.to(torch.int64).sort().values.contiguous()


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
) -> DataSplits:
    """Load a registered dataset and split it (see :func:`split_train`).

    ``val_size=None`` uses the dataset's default (5000 for CIFAR and Fashion-MNIST, 500 for
    MNIST-1D), capped at a fifth of the training set for tiny sets; ``val_size=0`` gives an
    empty validation split (the reference protocol).
    ``augment=False`` sets the returned :class:`AugmentSpec` to the identity.
    """
    key = DATASETS.canonical(name)
    root_path = Path(root).expanduser() if root is not None and str(root) != "" else None
    raw = DATASETS.get(key)(root_path, download=bool(download), seed=int(seed))
    _check_raw(raw, key)
    n = int(raw.train_y.shape[0])
    vs = raw.default_val_size if val_size is None else val_size
    if val_size is None:
        vs = min(vs, n // 5)  # tiny sets (fixtures, custom data): the default never takes over 20%
    train_idx, val_idx = split_train(n, val_size=vs, train_subset=train_subset, seed=seed, name=key)
    return DataSplits(
        name=key,
        num_classes=int(raw.num_classes),
        train_x=raw.train_x[train_idx].contiguous(),
        train_y=raw.train_y[train_idx].to(torch.int64).contiguous(),
        train_idx=train_idx,
        val_x=raw.train_x[val_idx].contiguous(),
        val_y=raw.train_y[val_idx].to(torch.int64).contiguous(),
        test_x=raw.test_x.contiguous(),
        test_y=raw.test_y.to(torch.int64).contiguous(),
        mean=tuple(float(m) for m in raw.mean),
        std=tuple(float(s) for s in raw.std),
        augment=raw.augment if augment else AugmentSpec(),
        val_idx=val_idx,
    )
