"""An export's tensors: masks folded into the weights, and the compressed form (kept values plus
a bitmask or indices) written by ``--compressed`` and unpacked when loading."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from safetensors.torch import save as st_save

from dsd2.errors import UserError
from dsd2.export_format import BITMASK, INDICES, VALUES
from dsd2.prune import Masks


def fold_masks(state: Mapping[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
    """The state dict with every masked tensor multiplied by its mask (pruned entries exactly 0)."""
    missing = sorted(set(masks) - set(state))
    if missing:
        raise UserError(f"masks cover tensors the model does not have: {missing[:5]}")
    return {k: (v * masks[k].to(v.device) if k in masks else v).detach().cpu().contiguous() for k, v in state.items()}


def compress(state: Mapping[str, torch.Tensor], masks: Masks) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """(tensors, shapes): each masked tensor as ``name#values`` (its kept entries, 1-D, in
    row-major order) plus where they go, whichever is smaller: ``name#bitmask`` (the mask, 8
    entries per uint8, little bit order; 1 bit per weight) or ``name#indices`` (int32 positions;
    32 bits per kept weight, smaller below 1/32 density). Other tensors stay as they are;
    ``shapes`` holds the masked tensors' shapes."""
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for k, v in state.items():
        if k not in masks:
            out[k] = v
            continue
        m = masks[k].detach().cpu().flatten().bool()
        out[k + VALUES] = v.detach().cpu().flatten()[m].contiguous()
        kept, n = int(m.sum()), m.numel()
        if 4 * kept < (n + 7) // 8 and n < 2**31:
            out[k + INDICES] = m.nonzero().flatten().to(torch.int32)
        else:
            out[k + BITMASK] = torch.from_numpy(np.packbits(m.numpy(), bitorder="little"))
        shapes[k] = list(v.shape)
    return out, shapes


def decompress(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compress`: the dense state dict, zeros where no value was kept."""
    out = {k: v for k, v in tensors.items() if not k.endswith((VALUES, BITMASK, INDICES))}
    for k, shape in shapes.items():
        values = tensors[k + VALUES]
        n = int(np.prod(shape)) if shape else 1
        if k + INDICES in tensors:
            where = tensors[k + INDICES].long()
            if where.numel() != values.numel() or (where.numel() and (int(where.min()) < 0 or int(where.max()) >= n)):
                raise UserError(
                    f"compressed tensor {k}: its indices do not fit its {values.numel()} values and shape {shape} (corrupt file)"
                )
        else:
            where = torch.from_numpy(np.unpackbits(tensors[k + BITMASK].numpy(), count=n, bitorder="little").astype(bool))
            if int(where.sum()) != values.numel():
                raise UserError(f"compressed tensor {k}: {values.numel()} values but {int(where.sum())} bits set (corrupt file)")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[where] = values
        out[k] = dense.view(shape)
    return out


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Size of the file :func:`dsd2.store.save_tensors` would write (its checksum entry included)."""
    return len(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={**metadata, "dsd2_sha256": "0" * 64}))
