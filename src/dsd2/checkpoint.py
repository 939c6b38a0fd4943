"""Mid-round (epoch) checkpoints: model, optimiser and RNG state in one safetensors file.

A round in progress keeps ``round_XXX.partial.safetensors`` next to the finished rounds. It holds
the model's state dict, the optimiser's tensors, the round generator's state (which drives data
order and augmentation) and, in its metadata, the next epoch, the epoch log and the optimiser's
non-tensor state. Resuming from it continues the round exactly where the kill interrupted it:
the finished round is bit-identical to an uninterrupted one on CPU. One file, written atomically,
so a kill while writing leaves the previous checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import safe_read, store
from dsd2.errors import UserError


@dataclass
class EpochState:
    next_epoch: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    generator_state: torch.Tensor
    logs: list[dict[str, Any]]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. feature distillation's adapter


def partial_path(run_dir: Path, round_idx: int) -> Path:
    return Path(run_dir) / f"round_{round_idx:03d}.partial.safetensors"


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_epoch_state(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    next_epoch: int,
    logs: list[dict[str, Any]],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra/{k}": v for k, v in (extra or {}).items()})
    tensors.update(opt_tensors)
    tensors["rng"] = generator.get_state()
    meta = {"next_epoch": str(next_epoch), "logs": json.dumps(logs), "optimizer": json.dumps(opt_meta)}
    store.save_tensors(path, tensors, metadata=meta)


def load_epoch_state(path: Path) -> EpochState | None:
    """The checkpoint at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    tensors = store.load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return EpochState(
            next_epoch=int(meta["next_epoch"]),
            model_state={k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")},
            optimizer_state=_unflatten_optimizer(tensors, safe_read.parse_json(meta["optimizer"], source=str(path))),
            generator_state=tensors["rng"],
            logs=safe_read.parse_json(meta["logs"], source=str(path)),
            extra={k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")},
        )
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, UserError) as err:
        raise UserError(
            f"{path} is an incomplete or corrupt epoch checkpoint ({err}); delete it to redo that round from its start"
        ) from None
