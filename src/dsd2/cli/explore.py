"""Commands that look before a run: config, presets, models, estimate."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from dsd2.cli import render
from dsd2.cli.options import load_plugins, plugin_option


def config_cmd(
    config: Optional[str] = typer.Argument(None, help="YAML file or preset to resolve; omit to list every key."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. prune.rounds=10 seed=1"),
    plugins: Optional[list[str]] = plugin_option(recorded=True),
) -> None:
    """List every config key with its default, or print a resolved config."""
    import yaml

    from dsd2.config import describe_schema, load_config

    load_plugins(plugins)
    if config is None:
        table = Table("key", "default", "meaning")
        for key, default, desc in describe_schema():
            table.add_row(key, default, desc)
        render.console.print(table)
        return
    cfg = load_config(config, overrides or [], plugins=plugins or [])
    render.console.print(yaml.safe_dump(cfg.resolved(), sort_keys=False), end="")
    render.console.print(f"# run id: {cfg.run_id()}")


def presets(plugins: Optional[list[str]] = plugin_option()) -> None:
    """List the bundled presets (usable by name in `dsd2 run`)."""
    load_plugins(plugins)
    from dsd2.config import PRESET_DIR, list_presets
    from dsd2.sweep import list_sweep_presets

    for name in list_presets():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
        render.console.print(f"{name:32s} {first.lstrip('# ')}")
    render.console.print("\nsweeps (dsd2 sweep NAME):")
    for name in list_sweep_presets():
        render.console.print(f"  {name}")


def models(
    name: Optional[str] = typer.Argument(
        None, help="A family (torchvision, timm): list its models; a model (e.g. torchvision/resnet50): show its options."
    ),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """List the registered models and their options; `dsd2 models torchvision` lists torchvision's
    classifiers (model.name=torchvision/<name>), `dsd2 models NAME` shows one model's options."""
    from dsd2.models import MODELS, list_models, model_options
    from dsd2.registry import normalise_name

    load_plugins(plugins)
    if name is not None:
        families = {f.prefix: f for f in MODELS.families()}
        prefix = normalise_name(name).rstrip("/*")
        if prefix in families:
            family = families[prefix]
            names = family.names()
            render.console.print(f"{prefix}: {family.description}; {len(names)} models, as model.name={prefix}/<name>:")
            for n in names:
                render.console.print(f"{prefix}/{n}")
            return
        key = MODELS.canonical(name)
        meta = MODELS.metadata(key)
        shape = meta.get("input_shape")
        built_by = f": {meta['constructor']}" if "constructor" in meta else ""
        render.console.print(f"{key}{built_by}" + (f", designed for {'×'.join(map(str, shape))} inputs" if shape else ""))
        options = model_options(key)
        if not options:
            render.console.print("no options")
            return
        table = Table("option", "default")
        for option, default in options.items():
            table.add_row(f"model.{option}", repr(default))
        render.console.print(table)
        if "family" in meta:
            render.console.print(
                "Defaults are the constructor's; an option left unset is not passed, so the library's builder keeps its own "
                "choice where it sets one. num_classes, the input size and channels come from the data (docs/models.md)."
            )
        return
    table = Table("model", "options (defaults)", "designed for input")
    for name in list_models():
        shape = MODELS.metadata(name).get("input_shape")
        table.add_row(name, ", ".join(f"{k}={v!r}" for k, v in model_options(name).items()), "×".join(map(str, shape)) if shape else "")
    render.console.print(table)
    for family in MODELS.families():
        render.console.print(f"{family.prefix}/<name>: {family.description}. {family.listing}")
    render.console.print("`dsd2 models NAME` shows a model's options, e.g. dsd2 models torchvision/resnet50.")


def estimate(
    config: str = typer.Argument(..., help="YAML config or preset name."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. train.device=cuda"),
    steps: int = typer.Option(10, "--steps", help="Training steps timed after a warm-up epoch of as many."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurement and prediction as JSON."),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Predict a run's wall time and PFLOPs from a few training steps timed on this device."""
    import json

    from dsd2.config import load_config
    from dsd2.sweep.measure import format_prediction, measure, predict

    cfg = load_config(config, overrides or [], plugins=plugins or [])
    render.err_console.print(
        f"estimate: building {cfg.model.name} ({cfg.dataset.name} inputs), timing {steps} training steps of batch "
        f"{cfg.train.batch_size} after a warm-up of as many and an evaluation pass, counting FLOPs (minutes for a large model on a CPU)…",
        highlight=False,
    )
    p = predict(cfg, measure(cfg, steps=steps))
    render.console.print(json.dumps(p, indent=2) if as_json else format_prediction(p), highlight=False, markup=False, soft_wrap=True)
