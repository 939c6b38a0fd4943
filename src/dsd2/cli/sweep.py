"""Commands for many runs and their data: fetch, sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dsd2.cli import render
from dsd2.cli.options import load_plugins, out_option, plugin_option
from dsd2.errors import UserError


def fetch(
    name: str = typer.Argument(..., help="Dataset name (see `dsd2 config`: dataset.name)."),
    root: Path = typer.Option(Path("./data"), help="Folder to look in / download to."),
    download: bool = typer.Option(False, "--download", help="Download (checksum-verified) when missing."),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Check that a dataset is available (optionally download it) and print its sizes."""
    from dsd2.data import load_dataset

    load_plugins(plugins)
    try:
        try:
            d = load_dataset(name, root, val_size=0, download=False, augment=False)
        except UserError:
            if not download:
                raise
            # not there yet: the normal path of a first `make demo`, said as such rather than as an error
            render.err_console.print(f"{name} is not in {root} yet: downloading it (checksum-verified)…", highlight=False)
            d = load_dataset(name, root, val_size=0, download=True, augment=False)
    except UserError as err:
        # the loaders speak of config keys; here the switch is the --download flag
        raise UserError(str(err).replace("dataset.download=true", "--download")) from None
    render.console.print(
        f"{name}: {d.train_x.shape[0]} train, {d.test_x.shape[0]} test, {d.num_classes} classes, input {tuple(d.train_x.shape[1:])}"
    )


def sweep(
    path: str = typer.Argument(..., help="Sweep YAML or sweep preset name (see `dsd2 presets`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Run-config overrides for every cell; `sweep.key=value` changes the sweep."),
    out: Path = out_option("Folder for the cells' run directories and <sweep name>/ (summaries, report)."),
    backend: str = typer.Option("ray", help="ray (parallel, local or --address) or sequential (debugging)."),
    address: Optional[str] = typer.Option(None, help="Address of an existing Ray cluster (default: a local one)."),
    max_parallel: Optional[int] = typer.Option(None, help="Cells at once on a local Ray (default: CPU count)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the cells and the cost estimate."),
    gpu_tflops: float = typer.Option(25.0, help="Effective GPU throughput for the cost estimate (TFLOP/s; an assumption, not measured)."),
    measure: bool = typer.Option(False, "--measure", help="Time each model on this machine (as `dsd2 estimate`) instead of --gpu-tflops."),
    plugins: Optional[list[str]] = plugin_option(recorded=True),
    fuse: bool = typer.Option(False, "--fuse", help="Train the cells that share a model and schedule as fused groups (docs/fused.md)."),
) -> None:
    """Run a grid of runs (seeds, noise, width/depth, retraining modes, KD settings) on Ray."""
    from dsd2.sweep import sweep_main
    from dsd2.sweep.measure import DEFAULT_STEPS

    render.RESUME["how"] = "the same `dsd2 sweep` command (finished cells are skipped, unfinished ones resume)"
    code = sweep_main(
        path,
        overrides or [],
        out,
        backend,
        address,
        max_parallel,
        dry_run,
        gpu_tflops=gpu_tflops,
        measure_steps=DEFAULT_STEPS if measure else None,
        console=render.console,
        plugins=plugins or [],
        fuse=fuse,
    )
    if code:
        raise typer.Exit(code)
