"""MNIST-1D, generated locally (never downloaded) with the ``mnist1d`` package.

``mnist1d.data.make_dataset(get_dataset_args())`` with ``args.seed`` set to our seed:
4000 train / 1000 test sequences of length 40, 10 classes, already standardised. The
package reseeds Python's and numpy's global RNGs; their states are restored afterwards so
loading the data does not change anyone else's random stream.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch

from dsd2.data.core import AugmentSpec, RawDataset, register_dataset
from dsd2.errors import UserError


@functools.lru_cache(maxsize=4)
def _generate_cached(seed: int) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise UserError("MNIST-1D needs the `mnist1d` package: pip install mnist1d") from e
    args = get_dataset_args()
    args.seed = int(seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def generate_mnist1d(seed: int) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays for ``seed`` (``x``, ``y``, ``x_test``, ``y_test``), fresh copies.

    Generation takes about a second; the last few seeds are cached in memory.
    """
    d = _generate_cached(int(seed))
    return {k: np.array(d[k], copy=True) for k in ("x", "y", "x_test", "y_test")}


@register_dataset("mnist1d", num_classes=10, input_shape=(40,), train_size=4000, test_size=1000, default_val_size=500)
def _mnist1d(root: Path | None, *, download: bool = False, seed: int = 0) -> RawDataset:
    d = generate_mnist1d(seed)
    return RawDataset(
        name="mnist1d",
        num_classes=10,
        train_x=torch.from_numpy(np.ascontiguousarray(d["x"], dtype=np.float32)),
        train_y=torch.from_numpy(np.asarray(d["y"], dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(d["x_test"], dtype=np.float32)),
        test_y=torch.from_numpy(np.asarray(d["y_test"], dtype=np.int64)),
        mean=(0.0,),
        std=(1.0,),
        augment=AugmentSpec(),
        default_val_size=500,
        class_names=tuple(str(d) for d in range(10)),  # the digit each sequence was made from
    )
