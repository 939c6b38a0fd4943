"""What the command line draws: the two consoles, the rounds and strategy tables, the one-line
round summary and the progress bar. Tables narrow themselves to the terminal (``narrowed``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:
    from dsd2.rundir import RoundRow

# Piped output (CI logs, `| tee`) gets a wide table instead of rich's 80-column default.
# markup=False: paths, config values and error texts are user text; "[lr=0.1]" or "[/]" in them
# must print as written, not be read as rich markup.
# Piped output gets a wide fixed width (logs keep whole tables) unless COLUMNS asks for another.
# Commands print through ``render.console`` (looked up at call time, so a test can swap it).
_PIPED_WIDTH = None if "COLUMNS" in os.environ else 160
console = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH, markup=False)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH, markup=False)

# How to continue what the running command started, for the Ctrl-C message: set by the command
# once it knows its run (main resets it per call).
RESUME: dict[str, str | None] = {"how": None, "command": None}
_TRAINING = ("run", "resume", "pipeline", "demo", "sweep")


def interrupted_message() -> str:
    """The Ctrl-C message, naming the run (or the command) that continues what was started; before
    a command has started any run (loading its config) there is nothing to resume, and no run
    directory was printed to point at; a command that trains nothing was just interrupted."""
    if RESUME["how"] is not None:
        return f"interrupted: finished rounds are kept; resume with {RESUME['how']}"
    return "interrupted before any run started: nothing to resume" if RESUME["command"] in _TRAINING else "interrupted"


def pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def fits(table: Table, width: int) -> bool:
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


def narrowed(
    make: Callable[[list[str], bool], Table], columns: list[str], drop_order: list[str], width: int | None, names: dict[str, str]
) -> Table:
    """The first of ``make(columns, short=False)``, ``make(columns, short=True)`` (short headers,
    spelled out in the caption), then the latter less the columns of ``drop_order`` one by one,
    that fits ``width`` (default: the console's); the caption says which columns were left out."""
    width = width or console.width
    table = make(columns, False)
    if fits(table, width):
        return table
    kept = list(columns)
    table = make(kept, True)
    dropped: list[str] = []
    for col in drop_order:
        if fits(table, width):
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
    ("train(noisy)", "noisy", "train_acc_noisy", pct),
    ("memorised", "memo", "train_acc_flipped", pct),
    ("probe memorised", "probe", "train_acc_probe", pct),  # noise.probe runs only
    ("train(clean)", "clean", "train_acc_clean", pct),
    ("val", "val", "val_acc", pct),
    ("test", "test", "test_acc", pct),
    ("entropy", "H", "entropy", lambda v: f"{v:.3f}"),
    ("phase", "phase", "phase", str),
    ("cum. PFLOPs", "PFLOPs", "train_pflops_dense", lambda v: f"{v:.4g}"),
]
_ROUND_LEGEND = {
    "noisy": "noisy: train acc on the noisy labels",
    "memo": "memo: flipped samples fitted to their noisy label (memorisation)",
    "probe": "probe: memorisation probe samples fitted to their flipped label (noise.probe)",
    "clean": "clean: train acc on the true labels",
    "H": "H: mean activation entropy (bits)",
    "PFLOPs": "PFLOPs: cumulative training cost, measured",
}


def rounds_table(rows: list[RoundRow], title: str = "", width: int | None = None) -> Table:
    """The rounds of a run, accuracies in %. At a narrow ``width`` (default: the console's) the
    headers shorten, then train(clean), the PFLOPs and the entropy columns go, in that order."""
    from dsd2.compare import phase_basis_note

    present = [c for c in _ROUND_COLS if any(r.get(c[2]) is not None for r in rows)]
    basis = phase_basis_note(rows)  # a phase read off accuracy alone says so

    def make(keep: list[str], short: bool) -> Table:
        cols = [c for c in present if c[2] in keep]
        legend = [_ROUND_LEGEND[c[1]] for c in cols if short and c[1] in _ROUND_LEGEND]
        caption = "; ".join(["accuracies in %", *legend, *([basis] if basis and "phase" in keep else [])])
        table = Table(title=title, caption=caption, caption_justify="left")
        for header, brief, key, _ in cols:
            table.add_column(brief if short else header, justify="left" if key == "phase" else "right", no_wrap=True)
        for r in rows:
            table.add_row(*["" if r.get(key) is None else fmt(r.get(key)) for _, _, key, fmt in cols])
        return table

    names = {c[2]: c[0] for c in present}
    return narrowed(make, [c[2] for c in present], ["train_acc_clean", "train_pflops_dense", "entropy"], width, names)


class RoundProgress:
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
    parts = [head, f"{100 * row.sparsity:.2f}% sparse", f"noisy {pct(row.train_acc_noisy)}"]
    optional = []
    if row.train_acc_flipped is not None:
        optional.append(f"memorised {pct(row.train_acc_flipped)}")
    elif row.train_acc_probe is not None:  # the probe is the memorisation signal only without known flipped samples
        optional.append(f"probe memorised {pct(row.train_acc_probe)}")
    parts += [f"val {pct(row.val_acc) or '-'}", f"test {pct(row.test_acc)}"]
    if row.entropy is not None:
        optional.append(f"H {row.entropy:.3f}")
    line = "  ".join(parts + optional)
    while optional and len(line) > width:
        optional.pop()
        line = "  ".join(parts + optional)
    return line


def num(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


# strategy table columns: (header, short header, cell); the caption spells short headers out.
_STRATEGY_COLS: dict[str, tuple[str, str, Callable[[Any], str]]] = {
    "round": ("round (trained)", "round", lambda o: f"{o.selected_round} (0..{o.trained_until})"),
    "sparsity": ("sparsity %", "spars%", lambda o: f"{100 * o.sparsity:.2f}"),
    "phase": ("phase", "phase", lambda o: o.phase or ""),
    "selection": ("sel. acc", "sel%", lambda o: pct(o.selection_acc)),
    "test": ("test acc", "test%", lambda o: pct(o.test_acc)),
    "dense": ("PFLOPs measured", "PFLOPs", lambda o: f"{o.pflops_dense:.4g}"),
    "sparse": ("PFLOPs sparse-aware", "sparse", lambda o: f"{o.pflops_sparse:.4g}"),
    "paper": ("PFLOPs paper conv.", "paper", lambda o: num(o.pflops_paper)),
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
    return narrowed(make, list(_STRATEGY_COLS), ["paper", "sparse", "dense", "phase"], width, names)


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
                pct(rows[0][col]),
                f"{100 * dip.depth:.2f}",
                str(dip.trough) if dip.trough is not None else "-",
                pct(rows[best][col]),
                str(best),
            )
    return table
