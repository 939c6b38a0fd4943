"""The ``dsd2`` command line: thin wrappers that parse, call, print and set the exit code.

User errors (``UserError``) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
import typer.core
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from dsd2.errors import UserError

if TYPE_CHECKING:
    from dsd2.rundir import RoundRow


def _no_bool_placeholder(params: list[Any]) -> list[Any]:
    # typer's help shows a flag (--quiet, --help) as taking a "<bool>" value, which it does not
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_placeholder(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_placeholder(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Study and dodge sparse double descent (DSD²).",
)
# Piped output (CI logs, `| tee`) gets a wide table instead of rich's 80-column default.
# markup=False: paths, config values and error texts are user text; "[lr=0.1]" or "[/]" in them
# must print as written, not be read as rich markup.
# Piped output gets a wide fixed width (logs keep whole tables) unless COLUMNS asks for another.
_PIPED_WIDTH = None if "COLUMNS" in os.environ else 160
console = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH, markup=False)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH, markup=False)
_STATE = {"debug": False}


class Rule(StrEnum):
    """Stop rules `dsd2 stop` can apply offline."""

    plain = "plain"
    entropy = "entropy"


class Select(StrEnum):
    """Which round a stop rule keeps."""

    best = "best"
    last_good = "last_good"


def _plugin_option(recorded: bool = False) -> Any:
    """``--plugin MODULE`` (repeatable): a module to import first, for what it registers."""
    where = (
        "recorded in the run's config.yaml, so later commands on the run load it"
        if recorded
        else "a run's recorded plugins load without it"
    )
    return typer.Option(
        None,
        "--plugin",
        metavar="<module>",
        help=f"Plugin module to import first (it registers models, datasets, ...); repeatable; {where} (docs/plugins.md).",
    )


def _load_plugins(plugins: list[str] | None) -> None:
    from dsd2.plugins import load_plugins

    load_plugins(plugins or [])


def _quiet_option() -> Any:
    return typer.Option(False, "--quiet", "-q", help="No progress output.")


def _out_option(help: str = "Folder for run directories.") -> Any:
    return typer.Option(Path("runs"), "--out", "-o", help=help)


def _version(value: bool) -> None:
    if value:
        from dsd2 import __version__

        console.print(f"dsd2 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _STATE["debug"] = debug


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _fits(table: Table, width: int) -> bool:
    """Whether ``table`` fits ``width`` columns without rich squeezing a column below what it needs
    (no cell cut with "…", no word or header split; wrapping columns wrap between words, and not
    below their ``min_width``)."""

    def need(col: Column) -> int:
        texts = [str(col.header), *map(str, col.cells)]
        if col.no_wrap:
            parts = [line for t in texts for line in t.splitlines()]
        else:
            parts = [word for t in texts for word in t.split()]
        return max([cell_len(p) for p in parts] + [col.min_width or 0])

    pad = table.padding[1] + table.padding[3]
    return sum(need(c) + pad for c in table.columns) + len(table.columns) + 1 <= width


def _narrowed(
    make: Callable[[list[str], bool], Table], columns: list[str], drop_order: list[str], width: int | None, names: dict[str, str]
) -> Table:
    """The first of ``make(columns, short=False)``, ``make(columns, short=True)`` (short headers,
    spelled out in the caption), then the latter less the columns of ``drop_order`` one by one,
    that fits ``width`` (default: the console's); the caption says which columns were left out."""
    width = width or console.width
    table = make(columns, False)
    if _fits(table, width):
        return table
    kept = list(columns)
    table = make(kept, True)
    dropped: list[str] = []
    for col in drop_order:
        if _fits(table, width):
            break
        if col in kept:
            kept.remove(col)
            dropped.append(names.get(col, col))
            table = make(kept, True)
    if dropped:
        note = f"not shown at {width} columns: {', '.join(dropped)} (a wider terminal shows them)"
        table.caption = f"{table.caption}\n{note}" if table.caption else note
    return table


# (header, short header for narrow terminals, column, format); the caption spells short headers out.
_ROUND_COLS: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("round", "round", "round", str),
    ("sparsity %", "spars%", "sparsity", lambda v: f"{100 * v:.2f}"),
    ("train(noisy)", "noisy", "train_acc_noisy", _pct),
    ("memorised", "memo", "train_acc_flipped", _pct),
    ("train(clean)", "clean", "train_acc_clean", _pct),
    ("val", "val", "val_acc", _pct),
    ("test", "test", "test_acc", _pct),
    ("entropy", "H", "entropy", lambda v: f"{v:.3f}"),
    ("phase", "phase", "phase", str),
    ("cum. PFLOPs", "PFLOPs", "train_pflops_dense", lambda v: f"{v:.4g}"),
]
_ROUND_LEGEND = {
    "noisy": "noisy: train acc on the noisy labels",
    "memo": "memo: flipped samples fitted to their noisy label (memorisation)",
    "clean": "clean: train acc on the true labels",
    "H": "H: mean activation entropy (bits)",
    "PFLOPs": "PFLOPs: cumulative training cost, measured",
}


def rounds_table(rows: list[RoundRow], title: str = "", width: int | None = None) -> Table:
    """The rounds of a run, accuracies in %. At a narrow ``width`` (default: the console's) the
    headers shorten, then train(clean), the PFLOPs and the entropy columns go, in that order."""
    present = [c for c in _ROUND_COLS if any(r.get(c[2]) is not None for r in rows)]

    def make(keep: list[str], short: bool) -> Table:
        cols = [c for c in present if c[2] in keep]
        legend = [_ROUND_LEGEND[c[1]] for c in cols if short and c[1] in _ROUND_LEGEND]
        table = Table(title=title, caption="; ".join(["accuracies in %", *legend]), caption_justify="left")
        for header, brief, key, _ in cols:
            table.add_column(brief if short else header, justify="left" if key == "phase" else "right", no_wrap=True)
        for r in rows:
            table.add_row(*["" if r.get(key) is None else fmt(r.get(key)) for _, _, key, fmt in cols])
        return table

    names = {c[2]: c[0] for c in present}
    return _narrowed(make, [c[2] for c in present], ["train_acc_clean", "train_pflops_dense", "entropy"], width, names)


class _Progress:
    """Rich progress bar over the epochs of the current round."""

    def __init__(self, enabled: bool, last_round: int | None = None):
        self.enabled = enabled
        self.last_round = last_round  # the run's final round index, for "round k/N" and the ETA
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.round: int | None = None
        self.started = time.monotonic()
        self.rounds_here = 0  # rounds trained by this process (a resumed run skips the others)

    def __enter__(self):
        if self.enabled:
            self.bar = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def epoch(self, round_idx: int, total: int, log) -> None:
        if self.bar is None:
            return
        if self.task is None or self.round != round_idx:
            if self.task is not None:
                self.bar.remove_task(self.task)
            of = f"/{self.last_round}" if self.last_round is not None else ""
            self.task = self.bar.add_task(f"round {round_idx}{of}", total=total, info="")
            self.round = round_idx
        self.bar.update(self.task, completed=log.epoch, info=f"loss {log.loss:.3f} acc {100 * log.acc:.1f}%")

    def round_done(self, row: RoundRow) -> None:
        if not self.enabled:
            return
        self.rounds_here += 1
        left = None
        if self.last_round is not None and row.round < self.last_round:
            left = (time.monotonic() - self.started) / self.rounds_here * (self.last_round - row.round)
        err_console.print(round_line(row, self.last_round, left, err_console.width))


def round_line(row: RoundRow, last_round: int | None, left_s: float | None, width: int) -> str:
    """The one-line summary of a finished round: position and time left first, then the
    accuracies; entropy and memorisation are dropped (in that order) where the line would wrap."""
    head = f"round {row.round}/{last_round}" if last_round is not None else f"round {row.round}"
    if left_s is not None:
        head += f" (~{int(left_s // 60)}m{int(left_s % 60):02d}s left)"
    parts = [head, f"{100 * row.sparsity:.2f}% sparse", f"noisy {_pct(row.train_acc_noisy)}"]
    optional = []
    if row.train_acc_flipped is not None:
        optional.append(f"memorised {_pct(row.train_acc_flipped)}")
    parts += [f"val {_pct(row.val_acc) or '-'}", f"test {_pct(row.test_acc)}"]
    if row.entropy is not None:
        optional.append(f"H {row.entropy:.3f}")
    line = "  ".join(parts + optional)
    while optional and len(line) > width:
        optional.pop()
        line = "  ".join(parts + optional)
    return line


def _run_config(cfg, out: Path, run_dir: Path | None, quiet: bool) -> Path:
    from dsd2 import api, rundir

    with _Progress(enabled=not quiet, last_round=cfg.prune.rounds) as prog:
        target = run_dir or rundir.run_dir_for(cfg, out)
        if not quiet:
            err_console.print(f"run directory: {target}")
        path = api.run(cfg, out=out, run_dir=run_dir, on_round=prog.round_done, progress=prog.epoch).run_dir
    rows = rundir.read_rounds(path)
    console.print(
        rounds_table(
            rows,
            title=f"{cfg.name}: {cfg.model.name} on {cfg.dataset.name}, {cfg.noise.kind} noise"
            + ("" if cfg.noise.kind == "transition" else f" {cfg.noise.rate:g}"),  # the matrix, not rate, sets its rate
        )
    )
    console.print(f"run directory: {path}")
    return path


@app.command()
def run(
    config: str = typer.Argument(..., help="YAML config, preset name, or an existing run directory (resumes it)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. prune.rounds=10 seed=1"),
    out: Path = _out_option(),
    quiet: bool = _quiet_option(),
    plugins: Optional[list[str]] = _plugin_option(recorded=True),
) -> None:
    """Run (or resume) an IMP study: dense training, then prune/retrain rounds."""
    from dsd2.config import PRESET_DIR, load_config

    p = Path(config)
    if p.is_dir() and not (p / "config.yaml").is_file() and (PRESET_DIR / f"{config}.yaml").is_file():
        err_console.print(f"{p}/ is a folder, not a run directory: using the preset {config!r}")
    elif p.is_dir():
        if overrides:
            raise UserError("overrides cannot change an existing run; start a new run from its config.yaml instead")
        return resume(p, quiet=quiet, lr_scale=None, restart_round=False, plugins=plugins)
    cfg = load_config(config, overrides or [], plugins=plugins or [])
    _run_config(cfg, out, None, quiet)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="Run directory printed by `dsd2 run`."),
    quiet: bool = _quiet_option(),
    lr_scale: Optional[float] = typer.Option(
        None,
        "--lr-scale",
        help="Retry after a divergence with this factor on the lr, from the next unfinished round on (recorded in lr_scale.json).",
    ),
    restart_round: bool = typer.Option(
        False, "--restart-round", help="Drop the unfinished round's epoch checkpoint: it retrains from the last finished round."
    ),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Resume an interrupted run from its last finished round (or epoch checkpoint)."""
    from dsd2 import imp, rundir, store

    _load_plugins(plugins)
    cfg = rundir.read_config(run_dir)
    if lr_scale is not None:
        with store.run_lock(run_dir):
            first = imp.set_lr_scale(run_dir, lr_scale)
        err_console.print(f"rounds {first}+ train with lr × {lr_scale:g}")
    if restart_round:
        with store.run_lock(run_dir):
            first = imp.restart_round(run_dir)
        err_console.print(f"round {first} restarts from round {first - 1}'s weights" if first else "round 0 restarts from scratch")
    _run_config(cfg, run_dir.parent, run_dir, quiet)


@app.command()
def show(run_dir: Path = typer.Argument(..., help="Run directory."), plugins: Optional[list[str]] = _plugin_option()) -> None:
    """Print the rounds table of a run."""
    from dsd2 import rundir

    _load_plugins(plugins)
    console.print(rounds_table(rundir.read_rounds(run_dir), title=str(run_dir)))
    noise = rundir.read_noise(run_dir)
    if noise is not None and isinstance(noise.get("realized_rate"), (int, float)):
        console.print(
            f"label noise: {noise.get('kind')}, realised rate {100 * noise['realized_rate']:.2f}% "
            f"({noise.get('num_flipped')} of {noise.get('n')} train labels changed; noise.json)"
        )


@app.command("config")
def config_cmd(
    config: Optional[str] = typer.Argument(None, help="YAML file or preset to resolve; omit to list every key."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. prune.rounds=10 seed=1"),
    plugins: Optional[list[str]] = _plugin_option(recorded=True),
) -> None:
    """List every config key with its default, or print a resolved config."""
    import yaml

    from dsd2.config import describe_schema, load_config

    _load_plugins(plugins)
    if config is None:
        table = Table("key", "default", "meaning")
        for key, default, desc in describe_schema():
            table.add_row(key, default, desc)
        console.print(table)
        return
    cfg = load_config(config, overrides or [], plugins=plugins or [])
    console.print(yaml.safe_dump(cfg.resolved(), sort_keys=False), end="")
    console.print(f"# run id: {cfg.run_id()}")


@app.command()
def presets(plugins: Optional[list[str]] = _plugin_option()) -> None:
    """List the bundled presets (usable by name in `dsd2 run`)."""
    _load_plugins(plugins)
    from dsd2.config import PRESET_DIR, list_presets
    from dsd2.sweep import list_sweep_presets

    for name in list_presets():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
        console.print(f"{name:32s} {first.lstrip('# ')}")
    console.print("\nsweeps (dsd2 sweep NAME):")
    for name in list_sweep_presets():
        console.print(f"  {name}")


@app.command()
def models(
    name: Optional[str] = typer.Argument(
        None, help="A family (torchvision, timm): list its models; a model (e.g. torchvision/resnet50): show its options."
    ),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """List the registered models and their options; `dsd2 models torchvision` lists torchvision's
    classifiers (model.name=torchvision/<name>), `dsd2 models NAME` shows one model's options."""
    from dsd2.models import MODELS, list_models, model_options
    from dsd2.registry import normalise_name

    _load_plugins(plugins)
    if name is not None:
        families = {f.prefix: f for f in MODELS.families()}
        prefix = normalise_name(name).rstrip("/*")
        if prefix in families:
            family = families[prefix]
            names = family.names()
            console.print(f"{prefix}: {family.description}; {len(names)} models, as model.name={prefix}/<name>:")
            for n in names:
                console.print(f"{prefix}/{n}")
            return
        key = MODELS.canonical(name)
        meta = MODELS.metadata(key)
        shape = meta.get("input_shape")
        built_by = f": {meta['constructor']}" if "constructor" in meta else ""
        console.print(f"{key}{built_by}" + (f", designed for {'×'.join(map(str, shape))} inputs" if shape else ""))
        options = model_options(key)
        if not options:
            console.print("no options")
            return
        table = Table("option", "default")
        for option, default in options.items():
            table.add_row(f"model.{option}", repr(default))
        console.print(table)
        if "family" in meta:
            console.print(
                "Defaults are the constructor's; an option left unset is not passed, so the library's builder keeps its own "
                "choice where it sets one. num_classes, the input size and channels come from the data (docs/models.md)."
            )
        return
    table = Table("model", "options (defaults)", "designed for input")
    for name in list_models():
        shape = MODELS.metadata(name).get("input_shape")
        table.add_row(name, ", ".join(f"{k}={v!r}" for k, v in model_options(name).items()), "×".join(map(str, shape)) if shape else "")
    console.print(table)
    for family in MODELS.families():
        console.print(f"{family.prefix}/<name>: {family.description}. {family.listing}")
    console.print("`dsd2 models NAME` shows a model's options, e.g. dsd2 models torchvision/resnet50.")


def _print_decision(run_dir: Path, rule: str, tolerance: float, patience: int, select: str) -> None:
    from dsd2 import compare

    rows = compare.load_rows(run_dir)
    d = compare.decide(rows, rule, tolerance=tolerance, patience=patience, select=select)
    if d is None:
        raise UserError("--rule none makes no decision: use plain or entropy")
    o = compare.outcome(f"{rule} early stop", run_dir, rows, d, rows[0].round_pflops_dense)
    console.print(
        f"rule: {rule} (tolerance {tolerance:g}, patience {patience}, select {select}); selection on {compare.selection_column(rows)}"
    )
    console.print(d.reason)
    if d.ignored_drops:
        console.print(f"drops ignored (entropy says not collapsed): rounds {d.ignored_drops}")
    console.print(
        f"selected round {o.selected_round} (sparsity {100 * o.sparsity:.2f}%, phase {o.phase}): "
        f"{compare.selection_column(rows)} {_pct(o.selection_acc)}%, test {_pct(o.test_acc)}%; "
        f"trained rounds 0..{o.trained_until}: {o.pflops_dense:.4g} PFLOPs dense, {o.pflops_sparse:.4g} sparse-aware, "
        f"{o.units:.2f} dense-run units"
    )


@app.command()
def stop(
    run_dir: Path = typer.Argument(..., help="A finished (or partial) run directory."),
    rule: Rule = typer.Option(Rule.plain, "--rule", help="The stop rule (docs/stop_rules.md)."),
    tolerance: float = typer.Option(0.0, help="Accuracy drop (fraction) tolerated."),
    patience: int = typer.Option(1, help="Consecutive drops needed to stop."),
    select: Select = typer.Option(Select.best, help="best: most accurate round trained; last_good: sparsest round before the stop."),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Which round an early-stopping rule would select on a run, and what it would cost."""
    _load_plugins(plugins)
    _print_decision(run_dir, rule.value, tolerance, patience, select.value)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


# strategy table columns: (header, short header, cell); the caption spells short headers out.
_STRATEGY_COLS: dict[str, tuple[str, str, Callable[[Any], str]]] = {
    "round": ("round (trained)", "round", lambda o: f"{o.selected_round} (0..{o.trained_until})"),
    "sparsity": ("sparsity %", "spars%", lambda o: f"{100 * o.sparsity:.2f}"),
    "phase": ("phase", "phase", lambda o: o.phase or ""),
    "selection": ("sel. acc", "sel%", lambda o: _pct(o.selection_acc)),
    "test": ("test acc", "test%", lambda o: _pct(o.test_acc)),
    "dense": ("PFLOPs measured", "PFLOPs", lambda o: f"{o.pflops_dense:.4g}"),
    "sparse": ("PFLOPs sparse-aware", "sparse", lambda o: f"{o.pflops_sparse:.4g}"),
    "paper": ("PFLOPs paper conv.", "paper", lambda o: _num(o.pflops_paper)),
    "units": ("units", "units", lambda o: f"{o.units:.2f}"),
}
_STRATEGY_LEGEND = {
    "round": "round: selected (rounds trained)",
    "selection": "sel%: selection acc",
    "dense": "PFLOPs: measured",
    "sparse": "sparse: PFLOPs sparse-aware",
    "paper": "paper: PFLOPs in the paper's convention",
}
_STRATEGY_CAPTION = (
    "PFLOPs measured: FlopCounterMode, 2 FLOPs per multiply-add, exact backward; paper conv.: 3 × forward MACs × images × epochs; "
    "units: dense training runs of the vanilla model (its round 0) (docs/protocol.md, Compute)"
)


def strategy_rich_table(outcomes, rule: str = "tolerance 0, patience 1, select best", width: int | None = None) -> Table:
    """Selected round, accuracy and cost per strategy, each strategy's note under its name. At a
    narrow ``width`` (default: the console's) the headers shorten, then the paper-convention,
    sparse-aware and measured PFLOPs go (units stay), then the phase."""

    def make(keep: list[str], short: bool) -> Table:
        legend = [_STRATEGY_LEGEND[c] for c in keep if short and c in _STRATEGY_LEGEND]
        table = Table(
            title=f"Selected model and training cost per strategy (paper Figure 1, right); early stop: {rule}",
            caption="; ".join(["accuracies in %", *legend, _STRATEGY_CAPTION]),
            caption_justify="left",
            show_lines=any(o.note for o in outcomes),  # a rule between strategies: a note is not read as a name
        )
        table.add_column("strategy", min_width=20, overflow="fold")
        for c in keep:
            header, brief, _ = _STRATEGY_COLS[c]
            table.add_column(brief if short else header, justify="left" if c == "phase" else "right", no_wrap=True)
        for o in outcomes:
            name = Text(o.strategy)
            if o.note:
                name.append("\n" + o.note, style="dim")
            table.add_row(name, *[_STRATEGY_COLS[c][2](o) for c in keep])
        return table

    names = {c: v[0] for c, v in _STRATEGY_COLS.items()}
    return _narrowed(make, list(_STRATEGY_COLS), ["paper", "sparse", "dense", "phase"], width, names)


@app.command("stop-rules")
def stop_rules_cmd(
    bank_dir: Path = typer.Argument(..., help="A folder of finished runs (or of <curve>/rounds.csv folders): your curve bank."),
    write: Optional[Path] = typer.Option(
        None, "--write", help="Markdown file whose bank sections to regenerate (docs/stop_rules.md, README.md)."
    ),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Judge plain and entropy-aided early stopping on a bank of curves; fit the entropy threshold
    leave-one-setting-out (docs/stop_rules.md)."""
    from dsd2 import bank

    _load_plugins(plugins)
    curves = bank.load_bank(bank_dir)
    if write is None:
        console.print(bank.stop_rule_report(curves), markup=False, highlight=False, soft_wrap=True)
        return
    names = bank.write_sections(write, curves)
    console.print(f"wrote the {', '.join(names)} section(s) of {write}")


@app.command("compare")
def compare_cmd(
    vanilla: Path = typer.Argument(..., help="Vanilla IMP run directory."),
    student: Optional[Path] = typer.Argument(None, help="DSD² student run directory."),
    tolerance: float = typer.Option(0.0, help="Accuracy drop (fraction) tolerated before a round counts as a drop."),
    patience: int = typer.Option(1, help="Consecutive dropped rounds needed to stop."),
    select: Select = typer.Option(Select.best, help="best: most accurate round trained; last_good: sparsest round before the stop."),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Exhaustive vanilla vs. early stops vs. DSD²: selected round, accuracy, cost."""
    from dsd2 import compare

    _load_plugins(plugins)
    outcomes = compare.strategy_table(vanilla, student, tolerance=tolerance, patience=patience, select=select.value)
    console.print(strategy_rich_table(outcomes, f"tolerance {tolerance:g}, patience {patience}, select {select.value}"))


def _pipeline(cfg, student_cfg, out: Path, quiet: bool):
    from dsd2 import api

    def run_stage(c, o):
        return _run_config(c, o, None, quiet)

    return api.pipeline(cfg, student=student_cfg, out=out, run_stage=run_stage)


@app.command("pipeline")
def pipeline_cmd(
    config: str = typer.Argument(..., help="Teacher/vanilla config (YAML or preset); its distill section sets round, alpha, T."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides for both runs."),
    student: Optional[str] = typer.Option(None, "--student", help="Student config (default: the same config, KD from the teacher)."),
    out: Path = _out_option(),
    quiet: bool = _quiet_option(),
    plugins: Optional[list[str]] = _plugin_option(recorded=True),
) -> None:
    """Teacher IMP -> teacher at best fit (or dense / a round) -> student IMP with KD at every round."""
    from dsd2 import compare, store
    from dsd2.config import load_config

    cfg = load_config(config, overrides or [], plugins=plugins or [])
    scfg = load_config(student, overrides or [], plugins=plugins or []) if student else None
    study = _pipeline(cfg, scfg, out, quiet)
    from dsd2.file_schemas import TeacherInfo

    t = store.read_json_dict(study.student.run_dir / "teacher.json", TeacherInfo)
    console.print(
        f"teacher: {t['run_dir']} round {t['round']} ({t['choice']}, sparsity {100 * t['sparsity']:.2f}%, selected on {t['selected_on']})"
    )
    vanilla, student_dir = study.vanilla.run_dir, study.student.run_dir
    if vanilla != study.teacher.run_dir:
        console.print(f"the student's architecture differs from the teacher's: vanilla baseline {vanilla}")
    console.print(strategy_rich_table(compare.strategy_table(vanilla, student_dir)))
    rule = compare.COMPRESS_RULE
    console.print(strategy_rich_table(compare.strategy_table(vanilla, student_dir, **rule), compare.rule_text(rule)))


@app.command()
def fetch(
    name: str = typer.Argument(..., help="Dataset name (see `dsd2 config`: dataset.name)."),
    root: Path = typer.Option(Path("./data"), help="Folder to look in / download to."),
    download: bool = typer.Option(False, "--download", help="Download (checksum-verified) when missing."),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Check that a dataset is available (optionally download it) and print its sizes."""
    from dsd2.data import load_dataset

    _load_plugins(plugins)
    try:
        d = load_dataset(name, root, val_size=0, download=download, augment=False)
    except UserError as err:
        # the loaders speak of config keys; here the switch is the --download flag
        raise UserError(str(err).replace("dataset.download=true", "--download")) from None
    console.print(
        f"{name}: {d.train_x.shape[0]} train, {d.test_x.shape[0]} test, {d.num_classes} classes, input {tuple(d.train_x.shape[1:])}"
    )


@app.command()
def demo(
    out: Path = _out_option("Folder for the run directories and demo_report/."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds; one vanilla + DSD² pipeline per seed."),
    jobs: int = typer.Option(2, help="Pipelines run side by side (processes)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Overrides for the demo preset, e.g. prune.rounds=10."),
    plugins: Optional[list[str]] = _plugin_option(recorded=True),
) -> None:
    """The CPU demo: vanilla IMP with SDD, DSD² students from the best-fit teacher, compute table."""
    from dsd2 import compare, rundir
    from dsd2.config import load_config
    from dsd2.study import run_pipelines_parallel

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UserError(f"--seeds names no seed ({seeds!r}): give comma-separated integers, e.g. --seeds 0,1")
    configs = [load_config("demo_fmnist", [*(overrides or []), f"seed={s}"], plugins=plugins or []) for s in seed_list]
    err_console.print(f"demo: {len(configs)} pipeline(s) (vanilla IMP, then DSD² student), {jobs} at a time; this takes minutes")
    pairs = run_pipelines_parallel(configs, out=out, jobs=jobs)
    for cfg, (teacher_dir, student_dir) in zip(configs, pairs):
        console.rule(f"seed {cfg.seed}")
        console.print(rounds_table(rundir.read_rounds(teacher_dir), title=f"vanilla IMP (seed {cfg.seed}): {teacher_dir}"))
        console.print(rounds_table(rundir.read_rounds(student_dir), title=f"DSD² student (seed {cfg.seed}): {student_dir}"))
        console.print(strategy_rich_table(compare.strategy_table(teacher_dir, student_dir)))
        rule = compare.COMPRESS_RULE
        console.print(strategy_rich_table(compare.strategy_table(teacher_dir, student_dir, **rule), compare.rule_text(rule)))
    console.print(dip_rich_table(pairs))
    for teacher_dir, student_dir in pairs:
        console.print(f"vanilla run: {teacher_dir}   DSD² student run: {student_dir}")
    from dsd2.report import write_report

    page = write_report(
        [d for pair in pairs for d in pair], out / "demo_report", title="dsd2 demo: SDD and DSD² on Fashion-MNIST (40% noise)"
    )
    console.print(f"report: {page.resolve()}")


def dip_rich_table(pairs) -> Table:
    from dsd2 import compare

    table = Table(
        title="Critical dip per curve (largest recovered drop of the selection accuracy)",
        caption="selection accuracy in %; dense: round 0; dip: depth in points, at the trough round; best: the most accurate round",
        caption_justify="left",
    )
    table.add_column("run", overflow="fold")  # run folder names have no spaces: fold them rather than cut
    for col in ("dense", "dip", "trough", "best", "at round"):
        table.add_column(col, justify="right", no_wrap=True)
    for teacher_dir, student_dir in pairs:
        for d in (teacher_dir, student_dir):
            rows = compare.load_rows(d)
            dip = compare.recovered_dip(rows)
            col = compare.selection_column(rows)
            best = compare.best_round(rows, col)
            table.add_row(
                d.name,
                _pct(rows[0][col]),
                f"{100 * dip.depth:.2f}",
                str(dip.trough) if dip.trough is not None else "-",
                _pct(rows[best][col]),
                str(best),
            )
    return table


@app.command()
def estimate(
    config: str = typer.Argument(..., help="YAML config or preset name."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. train.device=cuda"),
    steps: int = typer.Option(10, "--steps", help="Training steps timed after a warm-up epoch of as many."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurement and prediction as JSON."),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Predict a run's wall time and PFLOPs from a few training steps timed on this device."""
    import json

    from dsd2.config import load_config
    from dsd2.sweep.measure import format_prediction, measure, predict

    cfg = load_config(config, overrides or [], plugins=plugins or [])
    p = predict(cfg, measure(cfg, steps=steps))
    console.print(json.dumps(p, indent=2) if as_json else format_prediction(p), highlight=False, markup=False, soft_wrap=True)


@app.command()
def sweep(
    path: str = typer.Argument(..., help="Sweep YAML or sweep preset name (see `dsd2 presets`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Run-config overrides for every cell; `sweep.key=value` changes the sweep."),
    out: Path = _out_option("Folder for the cells' run directories and <sweep name>/ (summaries, report)."),
    backend: str = typer.Option("ray", help="ray (parallel, local or --address) or sequential (debugging)."),
    address: Optional[str] = typer.Option(None, help="Address of an existing Ray cluster (default: a local one)."),
    max_parallel: Optional[int] = typer.Option(None, help="Cells at once on a local Ray (default: CPU count)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the cells and the cost estimate."),
    gpu_tflops: float = typer.Option(25.0, help="Effective GPU throughput for the cost estimate (TFLOP/s; an assumption, not measured)."),
    measure: bool = typer.Option(False, "--measure", help="Time each model on this machine (as `dsd2 estimate`) instead of --gpu-tflops."),
    plugins: Optional[list[str]] = _plugin_option(recorded=True),
) -> None:
    """Run a grid of runs (seeds, noise, width/depth, retraining modes, KD settings) on Ray."""
    from dsd2.sweep import sweep_main
    from dsd2.sweep.measure import DEFAULT_STEPS

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
        console=console,
        plugins=plugins or [],
    )
    if code:
        raise typer.Exit(code)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (vanilla, students, seeds) to put in one report."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for index.html and the figures."),
    title: Optional[str] = typer.Option(None, help="Page title."),
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Write one self-contained HTML report (figures embedded) for the given runs, or for a
    whole sweep (give its out/<sweep name> folder: analysis tables and figures, then every run)."""
    from dsd2.report import write_report
    from dsd2.report.sweep import write_sweep_report

    _load_plugins(plugins)
    if len(run_dirs) == 1 and (run_dirs[0] / "sweep.json").is_file():
        path = write_sweep_report(run_dirs[0], out, title=title)
    else:
        path = write_report(list(run_dirs), out, title=title)
    console.print(f"report: {path}")


@app.command("export")
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
    plugins: Optional[list[str]] = _plugin_option(),
) -> None:
    """Export a round of a run as a deployable model (docs/export.md)."""
    from dsd2.api import export

    _load_plugins(plugins)
    res = export(run_dir, out, round=round, onnx=onnx, compressed=compressed, structured=structured, epoch=epoch, force=force)
    how = res.info.get("selected_on")
    console.print(
        f"round {res.round} ({res.selected_by}{f' on {how}' if how else ''}), sparsity {100 * res.sparsity:.2f}%, "
        f"test {_pct(res.info['accuracy'].get('test_acc'))}%"
    )
    if compressed:
        ratio = res.dense_bytes / res.weights_bytes if res.weights_bytes else float("nan")
        console.print(f"model.safetensors: {res.weights_bytes:,} bytes compressed vs {res.dense_bytes:,} dense ({ratio:.1f}x smaller)")
    elif structured:
        s = res.info["structured"]
        console.print(
            f"model.safetensors: {res.weights_bytes:,} bytes, {s['params_after']:,} parameters "
            f"(unpruned shapes: {res.dense_bytes:,} bytes, {s['params_before']:,}); channels removed in {len(s['layers'])} layer(s)"
            + (f", {len(s['kept_whole'])} kept whole" if s["kept_whole"] else "")
        )
    else:
        console.print(f"model.safetensors: {res.weights_bytes:,} bytes (dense, masks folded in)")
    if res.onnx_max_abs_diff is not None:
        console.print(f"model.onnx: max abs difference from PyTorch on random inputs {res.onnx_max_abs_diff:.3g}")
    console.print(f"export: {res.dir}")


for _info in app.registered_commands:  # every command's --help without "<bool>" (see _Command)
    if _info.cls in (None, typer.core.TyperCommand):
        _info.cls = _Command

_INTERRUPTED = "interrupted: finished rounds are kept; resume with `dsd2 resume RUN_DIR`"


def main(argv: list[str] | None = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer's answer to Ctrl-C when it does not exit itself
            err_console.print(_INTERRUPTED)
        if isinstance(code, int) and code:
            return code
    except UserError as err:
        if _STATE["debug"]:
            raise
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(err)), highlight=False)
        return 2
    except (KeyboardInterrupt, typer.Abort):  # click may turn Ctrl-C into Abort
        err_console.print(_INTERRUPTED)
        return 130
    except typer.TyperException as err:  # usage errors: unknown option, missing argument
        show = getattr(err, "show", None)
        if show is not None:
            show()
        return int(getattr(err, "exit_code", 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
