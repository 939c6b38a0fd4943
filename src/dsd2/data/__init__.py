"""Datasets as tensors: loading, train/val/test splits, batched augmentation, normalisation.

Public API::

    load_dataset(name, root, *, val_size=None, train_subset=None, seed=0, download=False, augment=True) -> DataSplits
    list_datasets() -> list[str]
    register_dataset(name, *, num_classes=, input_shape=, train_size=, test_size=)   # decorator: loader(root, *, download, seed) -> RawDataset
    DATASETS                          # the registry (dsd2.registry.Registry): names, loaders, metadata
    normalize(x, mean, std) -> Tensor
    augment_batch(x, spec, generator=None) -> Tensor

Built-in datasets: ``cifar10``, ``cifar100`` (official python pickles, read with a restricted
unpickler), ``fashion_mnist`` (idx files), ``mnist1d`` (generated locally).
"""

# importing the modules registers the built-in datasets
from dsd2.data import cifar as _cifar  # noqa: F401
from dsd2.data import fashion as _fashion  # noqa: F401
from dsd2.data import mnist1d as _mnist1d  # noqa: F401
from dsd2.data.augment import augment_batch, normalize
from dsd2.data.core import (
    DATASETS,
    AugmentSpec,
    DataSplits,
    RawDataset,
    list_datasets,
    load_dataset,
    register_dataset,
    split_train,
)

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "DataSplits",
    "RawDataset",
    "augment_batch",
    "list_datasets",
    "load_dataset",
    "normalize",
    "register_dataset",
    "split_train",
]
