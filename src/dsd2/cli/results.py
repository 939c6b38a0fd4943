"""Commands on finished runs: stop, stop-rules, compare, report, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dsd2.cli import render
from dsd2.cli.options import Rule, Select, load_plugins, patience_option, plugin_option, select_option, tolerance_option
from dsd2.cli.render import pct, strategy_rich_table
from dsd2.errors import UserError


def _print_decision(run_dir: Path, rule: str, tolerance: float, patience: int, select: str) -> None:
    from dsd2 import compare

    rows = compare.load_rows(run_dir)
    d = compare.decide(rows, rule, tolerance=tolerance, patience=patience, select=select)
    if d is None:
        raise UserError("--rule none makes no decision: use plain or entropy")
    o = compare.outcome(f"{rule} early stop", run_dir, rows, d, rows[0].round_pflops_dense)
    render.console.print(
        f"rule: {rule} (tolerance {tolerance:g}, patience {patience}, select {select}); selection on {compare.selection_column(rows)}"
    )
    render.console.print(d.reason)
    if d.ignored_drops:
        render.console.print(f"drops ignored (entropy says not collapsed): rounds {d.ignored_drops}")
    render.console.print(
        f"selected round {o.selected_round} (sparsity {100 * o.sparsity:.2f}%, phase {o.phase}): "
        f"{compare.selection_column(rows)} {pct(o.selection_acc)}%, test {pct(o.test_acc)}%; "
        f"trained rounds 0..{o.trained_until}: {o.pflops_dense:.4g} PFLOPs dense, {o.pflops_sparse:.4g} sparse-aware, "
        f"{o.units:.2f} dense-run units"
    )


def stop(
    run_dir: Path = typer.Argument(..., help="A finished (or partial) run directory."),
    rule: Rule = typer.Option(Rule.plain, "--rule", help="The stop rule (docs/stop_rules.md)."),
    tolerance: float = tolerance_option(),
    patience: int = patience_option(),
    select: Select = select_option(),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Which round an early-stopping rule would select on a run, and what it would cost."""
    load_plugins(plugins)
    _print_decision(run_dir, rule.value, tolerance, patience, select.value)


def stop_rules_cmd(
    bank_dir: Path = typer.Argument(..., help="A folder of finished runs (or of <curve>/rounds.csv folders): your curve bank."),
    write: Optional[Path] = typer.Option(
        None, "--write", help="Markdown file whose bank sections to regenerate (docs/stop_rules.md, docs/results.md)."
    ),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Judge plain and entropy-aided early stopping on a bank of curves; fit the entropy threshold
    leave-one-setting-out (docs/stop_rules.md)."""
    from dsd2 import bank

    load_plugins(plugins)
    curves = bank.load_bank(bank_dir)
    if write is None:
        render.console.print(bank.stop_rule_report(curves), markup=False, highlight=False, soft_wrap=True)
        return
    names = bank.write_sections(write, curves)
    render.console.print(f"wrote the {', '.join(names)} section(s) of {write}")


def compare_cmd(
    vanilla: Path = typer.Argument(..., help="Vanilla IMP run directory."),
    student: Optional[Path] = typer.Argument(None, help="DSD² student run directory."),
    tolerance: float = tolerance_option(),
    patience: int = patience_option(),
    select: Select = select_option(),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Exhaustive vanilla vs. early stops vs. DSD²: selected round, accuracy, cost."""
    from dsd2 import compare

    load_plugins(plugins)
    outcomes = compare.strategy_table(vanilla, student, tolerance=tolerance, patience=patience, select=select.value)
    render.console.print(strategy_rich_table(outcomes, f"tolerance {tolerance:g}, patience {patience}, select {select.value}"))


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (vanilla, students, seeds) to put in one report."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for index.html and the figures."),
    title: Optional[str] = typer.Option(None, help="Page title."),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Write one self-contained HTML report (figures embedded) for the given runs, or for a
    whole sweep (give its out/<sweep name> folder: analysis tables and figures, then every run)."""
    from dsd2.report import write_report
    from dsd2.report.html import report_status
    from dsd2.report.sweep import write_sweep_report

    load_plugins(plugins)
    render.err_console.print(f"report: reading {len(run_dirs)} run folder(s), then one line per figure written…", highlight=False)
    with report_status(lambda line: render.err_console.print(f"  {line}", highlight=False)):
        if len(run_dirs) == 1 and (run_dirs[0] / "sweep.json").is_file():
            path = write_sweep_report(run_dirs[0], out, title=title)
        else:
            path = write_report(list(run_dirs), out, title=title)
    render.console.print(f"report: {path}")


def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory with finished rounds."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write model.safetensors, model.json (and model.onnx) into."),
    round: str = typer.Option(
        "best", "--round", help="best (highest validation accuracy), last_good (the early-stop rule's sparsest good round) or an index."
    ),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx, checked against PyTorch with onnxruntime."),
    compressed: bool = typer.Option(False, "--compressed", help="Store each pruned tensor as kept values + a bitmask."),
    structured: bool = typer.Option(
        False, "--structured", help="Remove pruned channels: a physically smaller model (channel-pruned runs; docs/export.md)."
    ),
    epoch: str = typer.Option(
        "last", "--epoch", help="last (the round's model, as every analysis uses) or best_val (runs with train.select_epoch=best_val)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export in --out."),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Export a round of a run as a deployable model (docs/export.md)."""
    from dsd2.api import export

    load_plugins(plugins)
    if onnx:
        render.err_console.print(
            "export: writing the weights, then model.onnx (converting with torch.onnx, checking it against PyTorch with "
            "onnxruntime: a minute or more)…",
            highlight=False,
        )
    res = export(run_dir, out, round=round, onnx=onnx, compressed=compressed, structured=structured, epoch=epoch, force=force)
    how = res.info.get("selected_on")
    chosen = "given with --round" if res.selected_by == "round" else res.selected_by  # "round 2 (round)" said nothing
    render.console.print(
        f"round {res.round} ({chosen}{f' on {how}' if how else ''}), sparsity {100 * res.sparsity:.2f}%, "
        f"test {pct(res.info['accuracy'].get('test_acc'))}%"
    )
    if compressed:
        ratio = res.dense_bytes / res.weights_bytes if res.weights_bytes else float("nan")
        render.console.print(
            f"model.safetensors: {res.weights_bytes:,} bytes compressed vs {res.dense_bytes:,} dense ({ratio:.1f}x smaller)"
        )
    elif structured:
        s = res.info["structured"]
        render.console.print(
            f"model.safetensors: {res.weights_bytes:,} bytes, {s['params_after']:,} parameters "
            f"(unpruned shapes: {res.dense_bytes:,} bytes, {s['params_before']:,}); channels removed in {len(s['layers'])} layer(s)"
            + (f", {len(s['kept_whole'])} kept whole" if s["kept_whole"] else "")
        )
    else:
        render.console.print(f"model.safetensors: {res.weights_bytes:,} bytes (dense, masks folded in)")
    if res.onnx_max_abs_diff is not None:
        render.console.print(f"model.onnx: max abs difference from PyTorch on random inputs {res.onnx_max_abs_diff:.3g}")
    render.console.print(f"export: {res.dir}")
