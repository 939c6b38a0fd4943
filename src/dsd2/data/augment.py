"""Batched, device-resident augmentation and normalisation (no per-sample Python loop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dsd2.data.core import AugmentSpec


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise a batch per channel and return a new float tensor on ``x``'s device.

    uint8 images are converted to float32 in [0, 1] first; floating inputs are used as they
    are (same dtype). With one mean/std value it applies to every element (e.g. MNIST-1D's
    ``N×L`` with ``(0.,)/(1.,)``); with C values the channel axis is ``x.shape[-3]``
    (``N×C×H×W`` or a single ``C×H×W`` image). The memory format (channels_last) is kept.
    """
    mean_t = tuple(float(m) for m in mean)
    std_t = tuple(float(s) for s in std)
    if len(mean_t) != len(std_t) or not mean_t:
        raise ValueError(f"mean and std must have the same non-zero length, got {len(mean_t)} and {len(std_t)}")
    if any(s == 0 for s in std_t):
        raise ValueError("std must not contain zeros")
    if x.dtype == torch.uint8:
        xf = x.to(torch.float32).div_(255.0)
    elif x.is_floating_point():
        xf = x
    else:
        raise TypeError(f"normalize expects uint8 images or floating data, got {x.dtype}")
    if len(mean_t) == 1:
        out = (xf - mean_t[0]) / std_t[0]
        return out
    c = len(mean_t)
    if x.ndim < 3 or x.shape[-3] != c:
        raise ValueError(f"{c} channel means given but the input has shape {tuple(x.shape)} (channel axis -3)")
    m = torch.tensor(mean_t, dtype=xf.dtype, device=x.device).view(c, 1, 1)
    s = torch.tensor(std_t, dtype=xf.dtype, device=x.device).view(c, 1, 1)
    return (xf - m) / s


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (after zero padding) and horizontal flip of a ``N×C×H×W`` batch.

    Every sample gets its own crop offset and flip decision, drawn on ``x``'s device from
    ``generator`` (the global RNG when None) in this order: row offsets, column offsets
    (``randint(0, 2p+1)`` each, only when ``crop_padding`` p > 0), then flips (``rand < 0.5``).
    The crop and flip are one ``gather`` from the zero-padded batch. Returns a new tensor of
    the same dtype, shape and memory format. Padding is zeros in the input's units: augment
    uint8 images before :func:`normalize` for black borders, as torchvision's RandomCrop does.
    Returns ``x`` itself when the spec is the identity or ``x`` is 2-D (non-image data such as
    MNIST-1D).
    """
    if spec.resized_crop:
        raise ValueError("resized_crop is applied per sample by the image loader's workers (stream path), not by augment_batch")
    if spec.is_identity or x.ndim == 2:
        return x
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects an N×C×H×W image batch (or 2-D data), got shape {tuple(x.shape)}")
    if spec.crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {spec.crop_padding}")
    dev = x.device
    if generator is not None and generator.device.type != dev.type:
        raise ValueError(f"the generator lives on {generator.device} but the batch on {dev}; create it there")
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    p = int(spec.crop_padding)
    if p == 0:
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
        out = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out
    hp, wp = h + 2 * p, w + 2 * p
    xp = x.new_zeros((n, c, hp, wp))
    xp[:, :, p : p + h, p : p + w] = x
    oy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
    rows = oy[:, None] + torch.arange(h, device=dev)  # N×H
    cols = ox[:, None] + torch.arange(w, device=dev)  # N×W
    if spec.flip:
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    # one gather of the flattened padded planes (much faster than 4-tensor advanced indexing)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    out = xp.view(n, c, hp * wp).gather(2, flat).view(n, c, h, w)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
