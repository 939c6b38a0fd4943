"""What model.json says about the exported model: its data (classes, input shape,
normalisation), plugins, sparsity, MACs and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsd2 import __version__, rundir, store
from dsd2.config import RunConfig
from dsd2.errors import UserError
from dsd2.export_format import COMPRESSED, DENSE, FORMAT, FORMAT_VERSION
from dsd2.plugins import load_plugins
from dsd2.prune import Masks, count_alive, count_total, sparsity


def data_info(run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """num_classes, in_channels, input_size, input_shape, mean, std, class_names: from meta.json's
    "data" when recorded there, else the config (dataset.mean/std) and the dataset registry's
    metadata (nothing is loaded)."""
    data: dict[str, Any] = dict(rundir.saved_data_shape(run_dir))
    from dsd2.data import DATASETS  # registry metadata only; no dataset is read

    try:
        reg = dict(DATASETS.metadata(cfg.dataset.name))
    except (KeyError, ValueError):  # a plugin's dataset that is not imported here
        reg = {}
    source = rundir.META if data.get("mean") is not None else None
    if source is None and cfg.dataset.mean is not None:
        data["mean"], data["std"], source = list(cfg.dataset.mean), list(cfg.dataset.std or []), "config"
    if source is None and reg.get("mean") is not None:
        data["mean"], data["std"], source = list(reg["mean"]), list(reg["std"]), "dataset registry"
    if source is None and cfg.dataset.name in _builtin_normalisation():
        data["mean"], data["std"] = map(list, _builtin_normalisation()[cfg.dataset.name])
        source = "dataset default"
    data["normalisation_source"] = source
    for key in ("class_names", "input_shape"):
        if data.get(key) is None and reg.get(key) is not None:
            data[key] = list(reg[key])
    if data.get("input_shape") is None:  # images: C x S x S (what the model builders assume)
        data["input_shape"] = [data["in_channels"], data["input_size"], data["input_size"]]
    for key in ("mean", "std", "class_names"):
        data.setdefault(key, None)
    data["input_shape"] = [int(s) for s in data["input_shape"]]
    return data


def _builtin_normalisation() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Mean and std the built-in datasets normalise with (runs written before meta.json recorded them)."""
    from dsd2.data import cifar, fashion

    imagenet = (cifar.IMAGENET_MEAN, cifar.IMAGENET_STD)
    # mnist1d is used as generated (its loader's mean 0, std 1)
    return {"cifar10": imagenet, "cifar100": imagenet, "fashion_mnist": (fashion.MEAN, fashion.STD), "mnist1d": ((0.0,), (1.0,))}


def _plugins(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The modules the run imported to register its models (config ``plugins``), if any."""
    plugins = getattr(cfg, "plugins", None)
    if plugins is None:  # a config written before RunConfig had the field: read the file itself
        raw = store.read_yaml_file(run_dir / rundir.CONFIG)
        plugins = raw.get("plugins") if isinstance(raw, dict) else None
    return [str(p) for p in plugins or []]


def import_plugins(plugins: list[str]) -> None:
    """Import the modules that register the exported model's architecture (as every command
    does: once per process, the current folder searched too, entry points loaded)."""
    try:
        load_plugins(plugins)
    except UserError as err:
        raise UserError(f"the exported model needs its plugins: {err}") from None


def model_info(
    run_dir: Path,
    cfg: RunConfig,
    meta: dict[str, Any],
    idx: int,
    row: rundir.RoundRow,
    selection: dict[str, Any],
    *,
    epoch: str,
    masks: Masks,
    data: dict[str, Any],
    macs: dict[str, Any],
    compressed: bool,
) -> dict[str, Any]:
    """model.json as far as the round tells it (the files and their sizes are added when written)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dsd2": __version__,
        "weights_format": COMPRESSED if compressed else DENSE,
        "model": {"name": cfg.model.name, "options": cfg.model.options},
        "plugins": _plugins(run_dir, cfg),
        **data,
        "round": idx,
        **selection,
        "epoch": "last" if epoch == "last" else {"best_val": row.best_epoch},
        "accuracy": {k: v for k, v in row.items() if k.endswith("_acc") or "_acc_" in k},
        "sparsity": sparsity(masks),
        "alive_weights": count_alive(masks),
        "prunable_weights": count_total(masks),
        "layer_sparsity": _layer_sparsity(masks),
        "inference_macs": {
            "per_layer": macs,
            "dense": sum(v["dense"] for v in macs.values()),
            "nonzero": sum(v["nonzero"] for v in macs.values()),
            "note": "multiply-accumulates of one example's forward pass; dense kernels compute the dense count whatever the "
            "zeros, so unstructured sparsity does not make them faster: only removed channels (--structured) do",
        },
        "source": {
            "run_dir": str(run_dir.resolve()),
            "run_name": cfg.name,
            "seed": cfg.seed,
            "git_commit": meta.get("git_commit"),
            "config_sha256": store.sha256_file(rundir.config_path(run_dir)),
            "round": _manifest_hashes(run_dir, idx),
        },
    }


def _manifest_hashes(run_dir: Path, round_idx: int) -> dict[str, Any]:
    rd = rundir.round_dir(run_dir, round_idx)
    manifest = store.read_json(rd / rundir.MANIFEST)
    return {"manifest_sha256": store.sha256_file(rd / rundir.MANIFEST), "files": manifest.get("files", {})}


def _layer_sparsity(masks: Masks) -> dict[str, dict[str, Any]]:
    return {
        k: {"alive": int(m.sum()), "total": m.numel(), "sparsity": 1.0 - int(m.sum()) / m.numel() if m.numel() else 0.0}
        for k, m in masks.items()
    }
