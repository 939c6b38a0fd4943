"""Datasets as tensors: loading, train/val/test splits, batched augmentation, normalisation.

Public API::

    load_dataset(name, root, *, val_size=None, train_subset=None, seed=0, download=False, augment=True, options=None) -> DataSplits
    list_datasets() -> list[str]
    register_dataset(name, *, num_classes=, input_shape=, train_size=, test_size=)   # decorator: loader(root, *, download, seed) -> RawDataset
    DATASETS                          # the registry (dsd2.registry.Registry): names, loaders, metadata
    normalize(x, mean, std) -> Tensor
    augment_batch(x, spec, generator=None) -> Tensor
    ImageFiles, ImageLoader           # a streamed image folder's splits and its DataLoader workers

Built-in datasets: ``cifar10``, ``cifar100`` (official python pickles, read with a restricted
unpickler), ``fashion_mnist`` (idx files), ``mnist1d`` (generated locally), ``image_folder``
(``train/<class>/*`` + ``test/<class>/*``, in memory or streamed by loader workers; docs/data.md).
"""

# importing the modules registers the built-in datasets
from dsd2.data import cifar as _cifar  # noqa: F401
from dsd2.data import fashion as _fashion  # noqa: F401
from dsd2.data import image_folder as _image_folder  # noqa: F401
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
from dsd2.data.image_folder import ImageFiles, ImageLoader

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "DataSplits",
    "ImageFiles",
    "ImageLoader",
    "RawDataset",
    "augment_batch",
    "list_datasets",
    "load_dataset",
    "normalize",
    "register_dataset",
    "split_train",
]
