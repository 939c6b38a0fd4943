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
- ``transition``: each sample's label is drawn from row ``clean`` of the user's K×K matrix
  ``matrix`` (T[i, j] = P(noisy = j | clean = i)); ``rate`` is not used, the realised rate
  follows from the matrix (about Σ_i π_i (1 − T[i, i]) for class frequencies π).
- ``instance``: instance-dependent noise, the generator of Xia et al. 2020 (see
  :func:`instance_noise`); ``rate`` is the mean flip rate.
- ``none`` (or ε = 0 for every kind but ``transition``): no change.

A kind is a function ``kind(request: NoiseRequest) -> noisy labels`` registered in
:data:`dsd2.registry.NOISE_MODELS` (plugins add their own; ``noise.kind`` names it).
:func:`noise_summary` gives what ``noise.json`` records: the realised rate, per-class flip
rates and the clean→noisy confusion counts.

⌊εN⌋ is computed exactly from the decimal value of ε (``0.29 * 100`` is 29, not 28).
Randomness comes from a private ``torch.Generator`` seeded with ``seed`` on the CPU (the
global RNG is never used), so a seed gives the same noise on every device; the result is
returned on the labels' device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from dsd2.errors import UserError
from dsd2.registry import NOISE_MODELS, UnknownNameError, normalise_name

# The built-in kinds (NOISE_MODELS may hold more: plugins register their own).
NOISE_KINDS = ("none", "symmetric", "uniform", "bernoulli", "asymmetric", "pairflip", "transition", "instance")
# Rows of a transition matrix must sum to 1 within this (they are renormalised before sampling).
ROW_SUM_TOL = 1e-6

# CIFAR-10 classes: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
# 8 ship, 9 truck. The usual asymmetric map (Patrini et al. 2017).
CIFAR10_CLASS_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Noisy labels, the sorted indices of the samples whose label changed, and soft labels if any."""

    noisy: torch.Tensor  # int64, same length as the clean labels
    flipped: torch.Tensor  # int64, sorted indices where noisy != clean
    soft: torch.Tensor | None = None  # N×K class probabilities when the labels are soft (noisy: their arg-max)
    # the memorisation probe (noise.probe): sorted indices of the samples dsd2 flipped on top of the
    # run's own noise; ``noisy`` holds their flipped labels, ``flipped`` does not list them
    probe: torch.Tensor | None = None

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
    if kind not in NOISE_MODELS:
        known = dict.fromkeys([*NOISE_KINDS, *NOISE_MODELS.names()])  # built-ins first, in their order
        raise UnknownNameError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(known)}")
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


@dataclass(frozen=True)
class FeatureSource:
    """The inputs instance-dependent noise looks at: ``rows(idx)`` gives the flattened,
    normalised inputs of the train samples ``idx`` as an ``len(idx)×dim`` float tensor (read in
    chunks, so a large train set is never held as floats at once)."""

    dim: int
    rows: Callable[[torch.Tensor], torch.Tensor]

    @staticmethod
    def of_tensor(x: torch.Tensor) -> FeatureSource:
        """Features already in memory (``N×…``, flattened here)."""
        flat = x.reshape(x.shape[0], -1)
        return FeatureSource(int(flat.shape[1]), lambda idx: flat[idx])


@dataclass(frozen=True, eq=False)
class NoiseRequest:
    """What a noise kind gets: the clean labels (int64, CPU), ε, K, the seeded generator and the
    kind-specific settings (None when the config leaves them out)."""

    clean: torch.Tensor
    rate: float
    num_classes: int
    generator: torch.Generator
    dataset: str = ""
    class_map: dict[int, int] | None = None
    matrix: Sequence[Sequence[float]] | None = None
    instance_std: float = 0.1
    features: FeatureSource | None = None
    options: dict[str, Any] = field(default_factory=dict)


def no_noise(req: NoiseRequest) -> torch.Tensor:
    return req.clean.clone()


def _rate_based(fn: Callable[[NoiseRequest, torch.Tensor], None]) -> Callable[[NoiseRequest], torch.Tensor]:
    """ε = 0 or no samples leaves the labels clean (and draws nothing); ``fn`` edits a copy."""

    def kind(req: NoiseRequest) -> torch.Tensor:
        noisy = req.clean.clone()
        if req.rate != 0 and noisy.numel():
            fn(req, noisy)
        return noisy

    return functools.wraps(fn)(kind)


@_rate_based
def symmetric_noise(req: NoiseRequest, noisy: torch.Tensor) -> None:
    """The first ⌊εN⌋ samples get one of the K−1 other classes (the DSD² reference)."""
    m = noise_count(req.rate, noisy.numel())
    noisy[:m] = _other_class(req.clean[:m], req.num_classes, req.generator)


@_rate_based
def uniform_noise(req: NoiseRequest, noisy: torch.Tensor) -> None:
    """The first ⌊εN⌋ samples get a class drawn from all K (OpenLTH)."""
    m = noise_count(req.rate, noisy.numel())
    noisy[:m] = torch.randint(0, req.num_classes, (m,), generator=req.generator, dtype=torch.int64)


@_rate_based
def bernoulli_noise(req: NoiseRequest, noisy: torch.Tensor) -> None:
    """Each sample flips with probability ε to one of the K−1 other classes."""
    chosen = torch.rand(noisy.numel(), generator=req.generator, dtype=torch.float64) < req.rate
    noisy[chosen] = _other_class(req.clean[chosen], req.num_classes, req.generator)


def asymmetric_noise(req: NoiseRequest) -> torch.Tensor:
    """⌊ε·n_c⌋ random samples of each source class c of the class map get ``class_map[c]``."""
    class_map = req.class_map if req.class_map is not None else default_class_map(req.dataset, req.num_classes)
    return _asymmetric(req, _check_class_map(class_map, req.num_classes))  # the map is checked even at ε = 0


def _asymmetric(req: NoiseRequest, cmap: dict[int, int]) -> torch.Tensor:
    noisy = req.clean.clone()
    if req.rate == 0:
        return noisy
    for src in sorted(cmap):
        members = (req.clean == src).nonzero().flatten()
        m = noise_count(req.rate, int(members.numel()))
        chosen = members[torch.randperm(members.numel(), generator=req.generator)[:m]]
        noisy[chosen] = cmap[src]
    return noisy


@_rate_based
def pairflip_noise(req: NoiseRequest, noisy: torch.Tensor) -> None:
    """A random ⌊εN⌋ samples get (c+1) mod K."""
    n = noisy.numel()
    chosen = torch.randperm(n, generator=req.generator)[: noise_count(req.rate, n)]
    noisy[chosen] = (req.clean[chosen] + 1) % req.num_classes


def transition_matrix(matrix: Sequence[Sequence[float]] | None, num_classes: int) -> torch.Tensor:
    """``matrix`` as a float64 K×K tensor, checked: square, K = ``num_classes``, finite,
    non-negative, rows summing to 1 within :data:`ROW_SUM_TOL`; UserError otherwise."""
    if matrix is None:
        raise UserError("noise.kind=transition needs noise.matrix: a K x K list, or the path of a .npy or .yaml file")
    try:
        t = torch.tensor([[float(v) for v in row] for row in matrix], dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"noise.matrix must be a K x K table of numbers (rows of equal length): {err}") from None
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise UserError(f"noise.matrix must be square (K x K), got {len(matrix)} rows of lengths {sorted({len(r) for r in matrix})}")
    if t.shape[0] != num_classes:
        raise UserError(f"noise.matrix is {t.shape[0]} x {t.shape[0]} but the dataset has {num_classes} classes")
    if not bool(torch.isfinite(t).all()):
        raise UserError("noise.matrix holds NaN or infinite entries")
    if bool((t < 0).any()):
        i, j = (t < 0).nonzero()[0].tolist()
        raise UserError(f"noise.matrix has a negative entry at row {i}, column {j}: {t[i, j].item()}")
    sums = t.sum(1)
    bad = ((sums - 1).abs() > ROW_SUM_TOL).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise UserError(f"noise.matrix row {i} sums to {sums[i].item():.9g}, not 1 (each row is P(noisy | clean = row))")
    return t


def _sample_rows(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Class j for each row of ``probs`` (n×K, non-negative) with uniform draws ``u`` (n): the
    first j whose cumulative probability exceeds u, rows renormalised so a class of
    probability 0 is never drawn."""
    cum = probs.cumsum(1)
    cum = cum / cum[:, -1:]
    return torch.searchsorted(cum, u.unsqueeze(1), right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


def transition_noise(req: NoiseRequest) -> torch.Tensor:
    """Each noisy label drawn from row ``clean`` of the transition matrix: one uniform draw per
    sample (float64, in index order), then inverse-CDF sampling of that row. ``rate`` is unused."""
    t = transition_matrix(req.matrix, req.num_classes)
    u = torch.rand(req.clean.numel(), generator=req.generator, dtype=torch.float64)
    if not req.clean.numel():
        return req.clean.clone()
    return _sample_rows(t[req.clean], u)


def truncated_normal(n: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of N(mean, std²) truncated to [0, 1] (float64, by inverse CDF: one uniform
    draw each), as scipy's ``truncnorm((0 - mean) / std, (1 - mean) / std, mean, std)``."""
    lo = torch.special.ndtr(torch.tensor((0.0 - mean) / std, dtype=torch.float64))
    hi = torch.special.ndtr(torch.tensor((1.0 - mean) / std, dtype=torch.float64))
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    q = mean + std * torch.special.ndtri(lo + u * (hi - lo))
    return q.clamp_(0.0, 1.0)  # only float rounding can step outside


INSTANCE_CHUNK = 4096  # rows of features read at a time


def instance_noise(req: NoiseRequest) -> torch.Tensor:
    """Instance-dependent label noise, the generator of Xia et al., "Part-dependent label noise:
    towards instance-dependent label noise", NeurIPS 2020 (their ``get_instance_noisy_label``):

    1. a flip rate per sample, q_i ~ N(ε, σ²) truncated to [0, 1] (σ = ``instance_std``, 0.1);
    2. for every class c a random projection W_c ∈ R^{D×K} with N(0, 1) entries (D: the input
       size), drawn in class order;
    3. for sample i of clean class y: scores s = x_i W_y of its flattened, normalised input x_i,
       s_y = −∞, p = softmax(s); P_i = q_i·p with P_i[y] = 1 − q_i;
    4. the noisy label is drawn from P_i, realised in two steps with the same law: sample i
       flips when u_i < q_i, and then takes class j with probability p_j (inverse CDF of v_i).

    So a sample flips with probability q_i (the realised rate is about E[q] ≈ ε; a little
    more for small ε, where the truncation at 0 lifts the mean) and, when it flips, goes to the
    classes its own input scores highest. Which samples flip depends on the seed, ε and σ
    only; where they go, on the inputs. Draws (float64, CPU, in this order): q, u, v (N each),
    then W_0 … W_{K−1}; each W_c is drawn even for a class with no sample. ε = 0 draws nothing.
    """
    clean, k, g = req.clean, req.num_classes, req.generator
    n = clean.numel()
    if req.rate == 0 or n == 0:
        return clean.clone()
    if req.features is None:
        raise UserError("noise.kind=instance needs the training inputs (a streamed image folder cannot provide them)")
    std = float(req.instance_std)
    if not std > 0:
        raise UserError(f"noise.instance_std must be > 0, got {std}")
    q = truncated_normal(n, float(req.rate), std, g)
    flips = torch.rand(n, generator=g, dtype=torch.float64) < q
    v = torch.rand(n, generator=g, dtype=torch.float64)
    noisy = clean.clone()
    for c in range(k):
        w = torch.randn(req.features.dim, k, generator=g, dtype=torch.float64)
        members = ((clean == c) & flips).nonzero().flatten()  # only flipping samples need their scores
        for chunk in members.split(INSTANCE_CHUNK) if members.numel() else ():
            x = req.features.rows(chunk).to("cpu", torch.float64).reshape(chunk.numel(), -1)
            if x.shape[1] != req.features.dim:
                raise ValueError(f"features have {x.shape[1]} columns, FeatureSource.dim says {req.features.dim}")
            scores = x @ w
            scores[:, c] = -math.inf
            noisy[chunk] = _sample_rows(torch.softmax(scores, dim=1), v[chunk])
    return noisy


def apply_label_noise(
    labels: torch.Tensor,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: dict[int, int] | None = None,
    dataset: str = "",
    matrix: Sequence[Sequence[float]] | None = None,
    instance_std: float = 0.1,
    features: FeatureSource | None = None,
    options: dict[str, Any] | None = None,
) -> NoisyLabels:
    """Corrupt ``labels`` with the noise ``kind`` at ``rate`` (see the module docstring).

    ``class_map`` is used by ``asymmetric`` only; None means ``default_class_map(dataset, K)``
    (pass ``dataset="cifar10"`` for the truck→automobile … map; without a dataset name the
    map is c → c+1). ``matrix`` is ``transition``'s K×K matrix; ``features`` and
    ``instance_std`` are ``instance``'s; ``options`` is passed on to a plugin's kind. Kinds
    ignore what they do not use. The input is not modified.
    """
    _check(labels, kind, rate, num_classes)
    device = labels.device
    clean = labels.detach().to("cpu", torch.int64)
    req = NoiseRequest(
        clean=clean,
        rate=rate,
        num_classes=num_classes,
        generator=torch.Generator().manual_seed(int(seed)),
        dataset=dataset,
        class_map=class_map,
        matrix=matrix,
        instance_std=instance_std,
        features=features,
        options=dict(options or {}),
    )
    noisy = NOISE_MODELS.get(kind)(req)
    if not isinstance(noisy, torch.Tensor) or noisy.shape != clean.shape:
        raise TypeError(f"noise kind {kind!r} must return a tensor of {clean.numel()} labels, got {type(noisy).__name__}")
    noisy = noisy.to("cpu", torch.int64)
    if noisy.numel() and (int(noisy.min()) < 0 or int(noisy.max()) >= num_classes):
        raise ValueError(f"noise kind {kind!r} returned labels outside [0, {num_classes})")
    flipped = (noisy != clean).nonzero().flatten()
    return NoisyLabels(noisy=noisy.to(device), flipped=flipped.to(device))


# The probe's draws come from their own generator, seeded from the run's seed and this stream, so
# the run's own noise (seeded with the seed itself) draws exactly what it drew without a probe.
PROBE_STREAM = 0x9E0BE


def probe_count(fraction: float, n: int) -> int:
    """Number of probe samples among ``n`` training samples: ⌊fraction·n⌋ (as :func:`noise_count`)."""
    return noise_count(fraction, n)


def add_probe(labels: NoisyLabels, clean: torch.Tensor, *, fraction: float, num_classes: int, seed: int) -> NoisyLabels:
    """The memorisation probe (docs/noise.md, "Memorisation probe"): ⌊fraction·N⌋ training samples
    drawn uniformly among those the run's own noise left correct get one of the K−1 other
    classes, on top of ``labels``. Seeded from ``seed`` on its own stream (:data:`PROBE_STREAM`),
    so the run's noise is unchanged; the probe is listed apart from ``flipped`` (so the usual
    memorisation columns keep their meaning). Soft labels: a probe sample's row becomes one-hot
    on its flipped class."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"noise.probe must be in (0, 1), got {fraction}")
    clean = clean.detach().to("cpu", torch.int64)
    noisy = labels.noisy.detach().to("cpu", torch.int64)
    n = int(clean.numel())
    m = probe_count(fraction, n)
    eligible = (noisy == clean).nonzero().flatten()
    if m < 1:
        least = math.ceil(1e4 / max(n, 1)) / 1e4  # the smallest 4-decimal fraction that flips one sample
        raise UserError(f"noise.probe={fraction:g} flips no sample of the {n} training samples: use at least {least:g}")
    if m > eligible.numel():
        raise UserError(
            f"noise.probe={fraction:g} asks {m} probe samples but only {eligible.numel()} training labels are left correct by the "
            "run's noise: lower noise.probe"
        )
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + PROBE_STREAM) % (2**63 - 1))
    probe = eligible[torch.randperm(eligible.numel(), generator=g)[:m]].sort().values
    out = noisy.clone()
    out[probe] = _other_class(clean[probe], num_classes, g)
    soft = labels.soft
    if soft is not None:
        soft = soft.clone()
        soft[probe.to(soft.device)] = torch.nn.functional.one_hot(out[probe], num_classes).to(soft.dtype).to(soft.device)
    device = labels.noisy.device
    return NoisyLabels(noisy=out.to(device), flipped=labels.flipped, soft=soft, probe=probe.to(device))


def noise_summary(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """What ``noise.json`` records about a set of train labels: ``n``, ``num_flipped``,
    ``realized_rate`` (fraction changed), per clean class its ``class_counts`` and
    ``class_flip_rates`` (None for a class with no sample), and ``confusion``: the K×K counts
    of clean class (row) → noisy class (column)."""
    c = clean.detach().to("cpu", torch.int64).flatten()
    y = noisy.detach().to("cpu", torch.int64).flatten()
    if c.shape != y.shape:
        raise ValueError(f"clean and noisy labels differ in length: {c.numel()} vs {y.numel()}")
    k = int(num_classes)
    confusion = torch.bincount(c * k + y, minlength=k * k).reshape(k, k)
    counts = confusion.sum(1)
    kept = confusion.diagonal()
    n, flipped = int(c.numel()), int((c != y).sum())
    return {
        "n": n,
        "num_flipped": flipped,
        "realized_rate": flipped / n if n else 0.0,
        "class_counts": counts.tolist(),
        "class_flip_rates": [(int(m) - int(d)) / int(m) if int(m) else None for m, d in zip(counts, kept, strict=True)],
        "confusion": confusion.tolist(),
    }
