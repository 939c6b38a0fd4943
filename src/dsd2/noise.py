"""Label noise: seeded pure functions on label tensors.

Kinds (``rate`` is ε, ``N`` the number of labels, ``K`` the number of classes):

- ``symmetric`` (the DSD² reference rule): the *first* ⌊εN⌋ samples in index order get a label
  drawn uniformly from the K−1 other classes. Exactly ⌊εN⌋ labels are wrong.
- ``uniform`` (OpenLTH): the first ⌊εN⌋ samples get a label drawn from all K classes, so about
  1/K of them keep their label (effective rate ε(K−1)/K); ``flipped`` lists only changed ones.
- ``bernoulli`` (He et al.): each sample independently, with probability ε, gets a label from
  the K−1 other classes (the count is binomial).
- ``asymmetric``: for every source class c of ``class_map``, a random ⌊ε·n_c⌋ of the samples
  of class c get ``class_map[c]`` (selection uses the clean labels, so cat↔dog swaps work).
- ``pairflip``: a random ⌊εN⌋ samples get (c+1) mod K.
- ``none`` (or ε = 0): no change.

⌊εN⌋ is computed exactly from the decimal value of ε (``0.29 * 100`` is 29, not 28).
Randomness comes from a private ``torch.Generator`` seeded with ``seed`` on the CPU (the
global RNG is never used), so a seed gives the same noise on every device; the result is
returned on the labels' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from dsd2.errors import UserError
from dsd2.registry import normalise_name

NOISE_KINDS = ("none", "symmetric", "uniform", "bernoulli", "asymmetric", "pairflip")

# CIFAR-10 classes: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
# 8 ship, 9 truck. The usual asymmetric map (Patrini et al. 2017).
CIFAR10_CLASS_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Noisy labels and the sorted indices of the samples whose label changed."""

    noisy: torch.Tensor  # int64, same length as the clean labels
    flipped: torch.Tensor  # int64, sorted indices where noisy != clean

    @property
    def realized_rate(self) -> float:
        """Fraction of labels that differ from the clean ones."""
        n = int(self.noisy.numel())
        return float(self.flipped.numel()) / n if n else 0.0

    @property
    def num_flipped(self) -> int:
        return int(self.flipped.numel())


def default_class_map(dataset_name: str, num_classes: int) -> dict[int, int]:
    """The default asymmetric map of a dataset.

    CIFAR-10 (and its relatives named ``cifar10*``, e.g. CIFAR-10N): truck→automobile,
    bird→airplane, deer→horse, cat↔dog. Every other dataset: c → (c+1) mod K for every class
    (the pair-flip map; CIFAR-100's "next class within the superclass" map is not provided).
    """
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2 for label noise, got {num_classes}")
    name = normalise_name(dataset_name)
    if name.startswith("cifar10") and not name.startswith("cifar100") and num_classes == 10:
        return dict(CIFAR10_CLASS_MAP)
    return {c: (c + 1) % num_classes for c in range(num_classes)}


def noise_count(rate: float, n: int) -> int:
    """⌊rate·n⌋ computed from the shortest decimal repr of ``rate`` (no float rounding down)."""
    return math.floor(Fraction(repr(float(rate))) * n)


def _check(labels: torch.Tensor, kind: str, rate: float, num_classes: int) -> None:
    if kind not in NOISE_KINDS:
        raise UserError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise UserError(f"noise rate must be a number in [0, 1), got {rate!r}")
    if math.isnan(rate) or not 0.0 <= rate < 1.0:
        raise UserError(f"noise rate must be in [0, 1), got {rate}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2 for label noise, got {num_classes!r}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"labels must be a 1-D tensor of class indices, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise UserError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(f"labels must lie in [0, {num_classes}), found [{int(labels.min())}, {int(labels.max())}]; is num_classes right?")


def _check_class_map(class_map: dict[int, int], num_classes: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for src, dst in class_map.items():
        try:
            s, d = int(src), int(dst)
        except (TypeError, ValueError) as e:
            raise UserError(f"class_map entries must be integer classes, got {src!r}: {dst!r}") from e
        if not (0 <= s < num_classes and 0 <= d < num_classes):
            raise UserError(f"class_map entry {s} -> {d} is outside the classes [0, {num_classes})")
        if s == d:
            raise UserError(f"class_map maps class {s} to itself; remove that entry")
        out[s] = d
    return out


def _other_class(clean: torch.Tensor, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly from the K−1 classes other than each clean label."""
    shift = torch.randint(1, num_classes, clean.shape, generator=g, dtype=torch.int64)
    return (clean + shift) % num_classes


def apply_label_noise(
    labels: torch.Tensor,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: dict[int, int] | None = None,
    dataset: str = "",
) -> NoisyLabels:
    """Corrupt ``labels`` with the noise ``kind`` at ``rate`` (see the module docstring).

    ``class_map`` is used by ``asymmetric`` only; None means ``default_class_map(dataset, K)``
    (pass ``dataset="cifar10"`` for the truck→automobile … map; without a dataset name the
    map is c → c+1). Other kinds ignore both. The input is not modified.
    """
    _check(labels, kind, rate, num_classes)
    cmap = None
    if kind == "asymmetric":
        if class_map is None:
            class_map = default_class_map(dataset, num_classes)
        cmap = _check_class_map(class_map, num_classes)
    device = labels.device
    clean = labels.detach().to("cpu", torch.int64)
    noisy = clean.clone()
    n = int(clean.numel())
    g = torch.Generator().manual_seed(int(seed))

    if kind == "none" or rate == 0 or n == 0:
        pass
    elif kind == "symmetric":
        m = noise_count(rate, n)
        noisy[:m] = _other_class(clean[:m], num_classes, g)
    elif kind == "uniform":
        m = noise_count(rate, n)
        noisy[:m] = torch.randint(0, num_classes, (m,), generator=g, dtype=torch.int64)
    elif kind == "bernoulli":
        chosen = torch.rand(n, generator=g, dtype=torch.float64) < rate
        noisy[chosen] = _other_class(clean[chosen], num_classes, g)
    elif kind == "asymmetric":
        assert cmap is not None
        for src in sorted(cmap):
            members = (clean == src).nonzero().flatten()
            m = noise_count(rate, int(members.numel()))
            chosen = members[torch.randperm(members.numel(), generator=g)[:m]]
            noisy[chosen] = cmap[src]
    elif kind == "pairflip":
        m = noise_count(rate, n)
        chosen = torch.randperm(n, generator=g)[:m]
        noisy[chosen] = (clean[chosen] + 1) % num_classes
    flipped = (noisy != clean).nonzero().flatten()
    return NoisyLabels(noisy=noisy.to(device), flipped=flipped.to(device))
