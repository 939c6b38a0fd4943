"""Reading an export back: model.json, every file and the weights' header checked before the
model is built (on the meta device first) and loaded."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsd2 import rundir, shrink, store
from dsd2.errors import UserError
from dsd2.export_format import COMPRESSED, DENSE, MODEL_JSON, VALUES, WEIGHTS, check_files, dense_shapes, parse_info, tensor_header
from dsd2.plugins import load_plugins

from .info import import_plugins
from .tensors import decompress


def read_info(export_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of an export, validated (:class:`dsd2.export_format.ExportInfo`), and
    refused when a file it lists is missing, a link, or changed since."""
    export_dir = Path(export_dir)
    info = parse_info(export_dir)
    check_files(export_dir, info, store.sha256_file)
    return info


def load_state(export_dir: str | Path, info: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of an export (a compressed file is unpacked). ``info``: its
    :func:`read_info`, when the caller has it already."""
    export_dir = Path(export_dir)
    info = read_info(export_dir) if info is None else info
    path = export_dir / WEIGHTS
    header, meta = tensor_header(path)
    shapes = dense_shapes(path, header, meta, info.get("weights_format", DENSE))
    return _unpack(path, info, header, shapes)


def _unpack(path: Path, info: dict[str, Any], header: Mapping[str, Any], shapes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Read the (checked) file and unpack its compressed tensors."""
    tensors = store.load_tensors(path)
    if info.get("weights_format") != COMPRESSED:
        return tensors
    return decompress(tensors, {k: v for k, v in shapes.items() if k + VALUES in header})


# A model that a tiny file describes stays tiny: what load_exported builds may be at most this many
# times the weights file's size (a compressed file of a 99.9% sparse model is ~500x smaller than the
# dense model), or this floor, unless the caller raises the bound (max_bytes).
_SIZE_RATIO, _SIZE_FLOOR = 1024, 256 << 20


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _build(info: dict[str, Any], path: Path, device: str | None = None) -> nn.Module:
    """The architecture model.json names (on ``device``: "meta" allocates nothing), resized to a
    structured export's shapes."""
    from dsd2.models import build_model

    spec = info["model"]
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device) if device else contextlib.nullcontext():
            model = build_model(
                spec["name"],
                num_classes=info["num_classes"],
                in_channels=info["in_channels"],
                input_size=info["input_size"],
                **spec["options"],
            )
            if info.get("structured"):  # removed channels: the layers take the export's smaller shapes first
                _check_shrink(model, info["structured"]["shapes"], path)
                shrink.rebuild(model, info["structured"]["shapes"])
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, OverflowError, NotImplementedError) as err:
        raise UserError(
            f"{path}: model {spec['name']!r} cannot be built from its options ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    return model


def _check_shrink(model: nn.Module, shapes: Mapping[str, list[int]], path: Path) -> None:
    """A structured export only removes channels: each listed layer exists and its shape is the
    built one's with no dimension larger."""
    weights = {name: m.weight for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    for name, shape in shapes.items():
        w = weights.get(name)
        if w is None or len(shape) != w.dim() or any(s > d for s, d in zip(shape, w.shape, strict=True)):
            raise UserError(f"structured.shapes[{name[:80]!r}] = {shape} does not shrink a layer of the model (corrupt or edited)")


def _check_plugins(info: dict[str, Any], path: Path, allow_plugins: bool) -> None:
    """Import model.json's plugins only when the caller allows it (importing runs their code);
    without, a model already registered (by an installed plugin, or one imported before) loads."""
    plugins = list(info.get("plugins") or [])
    if allow_plugins:
        import_plugins(plugins)
        return
    from dsd2.models import MODELS

    load_plugins([])  # installed entry points only: the user's own packages
    if plugins and info["model"]["name"] not in MODELS:
        raise UserError(
            f"{path} builds {info['model']['name']!r} from the plugin module(s) {', '.join(p[:80] for p in plugins)}: importing them runs "
            "their code, so load_exported does not unless you trust this export; pass allow_plugins=True, or import them first"
        )


def load_exported(
    export_dir: str | Path, device: torch.device | str = "cpu", *, allow_plugins: bool = False, max_bytes: int | None = None
) -> nn.Module:
    """The exported model, weights loaded (``strict=True``), in eval mode, on ``device``.

    Everything is checked before it is used: ``model.json`` against its schema, every listed file
    (regular, in the folder, size and sha256), the weights' header against the file size, and the
    model model.json describes, built first on the meta device (nothing allocated), against the
    weights' shapes and against ``max_bytes`` (default: 1024 x the weights file, at least 256 MiB).
    ``allow_plugins``: import the plugin modules model.json names (runs their code; only for an
    export you trust). Every refusal is a :class:`dsd2.errors.UserError`."""
    export_dir = Path(export_dir)
    info = read_info(export_dir)
    path = export_dir / WEIGHTS
    header, meta = tensor_header(path)
    shapes = dense_shapes(path, header, meta, info.get("weights_format", DENSE))
    _check_plugins(info, export_dir / MODEL_JSON, allow_plugins)
    bound = max_bytes if max_bytes is not None else max(_SIZE_FLOOR, _SIZE_RATIO * path.stat().st_size)
    try:
        skeleton, real = _build(info, export_dir / MODEL_JSON, "meta"), False
    except UserError:
        # a builder that needs real tensors (a plugin's .item() at init): built for real, then
        # checked the same way before any weight is read
        skeleton, real = _build(info, export_dir / MODEL_JSON), True
    size = _model_bytes(skeleton)
    if size > bound:
        raise UserError(
            f"{export_dir / MODEL_JSON} describes a model of {size:,} bytes, more than {bound:,} for a {path.stat().st_size:,}-byte "
            "weights file: not loaded (pass max_bytes= to load_exported if you trust this export)"
        )
    want = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    if want != shapes:
        diff = sorted(set(want) ^ set(shapes)) or sorted(k for k in want if want[k] != shapes[k])
        k = diff[0]
        raise UserError(
            f"{path} does not fit the model model.json describes: tensor {k[:80]!r} is {shapes.get(k, 'missing')} in the file, "
            f"{want.get(k, 'absent')} in the model (corrupt or edited): export the run again"
        )
    model = skeleton if real else _build(info, export_dir / MODEL_JSON)
    del skeleton
    rundir.load_state(model, _unpack(path, info, header, shapes), path)
    return model.to(device).eval()
