"""Terminal tables stay readable at 80 columns: no cell cut with "…", no header split mid-word,
left-out columns named; a wide terminal gets every column with the long headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from dsd2 import cli, rundir, store
from dsd2.compare import Outcome
from dsd2.rundir import ROUND_COLUMNS, ROUNDS_CSV, RoundRow

PHASES = ["light"] * 8 + ["critical"] * 6 + ["sweet"] * 8 + ["collapsed"] * 6 + ["undetermined"] * 3


def round_dicts(n: int = 31) -> list[dict]:
    """A long run with wide values: 31 rounds, 99.88 % sparse, PFLOPs in the thousands."""
    return [
        dict(
            round=i,
            sparsity=1 - 0.8**i,
            alive_weights=int(1e7 * 0.8**i),
            epochs=160,
            train_loss=0.5,
            train_acc_noisy=0.6 + i / 100,
            train_acc_clean=0.7,
            train_acc_flipped=0.123456,
            flipped_acc_clean=0.1,
            unflipped_acc=0.9,
            val_acc=0.8765,
            test_acc=0.8812,
            entropy=0.654321,
            phase=PHASES[i % len(PHASES)],
            round_pflops_dense=123.4567,
            round_pflops_sparse=12.3,
            train_pflops_dense=1234.5678 * (i + 1),
            train_pflops_sparse=123.4,
            round_pflops_paper=55.5,
            train_pflops_paper=555.5,
        )
        for i in range(n)
    ]


def outcomes() -> list[Outcome]:
    def o(strategy: str, note: str = "", units: float = 31.0) -> Outcome:
        return Outcome(strategy, "run", 17, 30, 1 - 0.8**17, 0.8765, 0.8812, "collapsed", 1.2345e3, 234.5, 1.5e3, units, note)

    return [
        o("vanilla, exhaustive", "all rounds, best on val_acc"),
        o("vanilla + early stop", units=18.0),
        o("vanilla + entropy + early stop", "ignored 2 drop(s), rounds 9-12", 21.0),
        o("DSD² + early stop", "student rounds, teacher forward passes included", 12.3),
        o("DSD² + early stop, incl. teacher IMP", "+ teacher run up to its round 30", 43.3),
    ]


def render(table: Table, width: int) -> str:
    console = Console(width=width, record=True, markup=False, color_system=None)
    console.print(table)
    return console.export_text()


def header_text(text: str) -> str:
    """The header lines of a rendered table (between the top border and the header rule)."""
    lines = text.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("┏"))
    rule = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("┡"))
    return "\n".join(lines[top + 1 : rule])


def headers(table: Table) -> list[str]:
    return [str(c.header) for c in table.columns]


def assert_readable(table: Table, text: str, width: int) -> None:
    assert "…" not in text, text
    assert max(len(ln) for ln in text.splitlines()) <= width
    head = header_text(text)
    for h in headers(table):  # each header whole on one header line: not cut, not split mid-word
        assert any(h in ln for ln in head.splitlines()), (h, head)
    for col in table.columns:
        if col.no_wrap:  # numbers whole
            assert all(str(cell) in text for cell in col.cells), col.header


def test_rounds_table_fits_80_columns_and_says_what_it_left_out():
    rows = [RoundRow.from_dict(r) for r in round_dicts()]
    table = cli.rounds_table(rows, title="runs/demo_fmnist-0123456789", width=80)
    text = render(table, 80)
    assert_readable(table, text, 80)
    shown = headers(table)
    assert shown[:4] == ["round", "spars%", "noisy", "memo"] and "test" in shown and "phase" in shown
    assert "clean" not in shown
    caption = " ".join(text.split())  # the caption wraps
    assert "not shown at 80 columns: train(clean)" in caption
    assert "memo: flipped samples fitted to their noisy label" in caption  # short headers spelled out
    assert "99.88" in text and "undetermined" in text


def test_rounds_table_wide_keeps_every_column_and_the_long_headers():
    rows = [RoundRow.from_dict(r) for r in round_dicts()]
    table = cli.rounds_table(rows, width=160)
    text = render(table, 160)
    assert_readable(table, text, 160)
    assert headers(table) == [
        "round",
        "sparsity %",
        "train(noisy)",
        "memorised",
        "train(clean)",
        "val",
        "test",
        "entropy",
        "phase",
        "cum. PFLOPs",
    ]
    assert "not shown" not in text


@pytest.mark.parametrize("width", [80, 100, 160])
def test_strategy_table_is_readable(width):
    outs = outcomes()
    table = cli.strategy_rich_table(outs, width=width)
    text = render(table, width)
    assert_readable(table, text, width)
    words = " ".join(text.split())
    for o in outs:  # names and notes wrap between words, not one word per line
        for word in (o.strategy + " " + o.note).split():
            assert word in words
        assert f"{o.units:.2f}" in text
    strat_lines = [ln for ln in text.splitlines() if ln.startswith("│")]
    assert len(strat_lines) <= 4 * len(outs)  # name + note take at most 4 lines each
    if width == 80:
        assert "units" in headers(table) and "PFLOPs" not in headers(table)
        assert "not shown at 80 columns: PFLOPs paper conv., PFLOPs sparse-aware, PFLOPs measured" in words
    if width == 160:
        assert "PFLOPs sparse-aware" in headers(table) and "not shown" not in text


def test_dip_table_folds_long_run_names(tmp_path: Path):
    pairs = []
    for name in ("demo_fmnist_seed-0-0123456789", "demo_fmnist_student_seed-0_distill-temperature-4.0-abcdef0123456789"):
        d = tmp_path / name
        d.mkdir()
        store.write_csv(d / ROUNDS_CSV, round_dicts(12), ROUND_COLUMNS)
        rundir.record_tables(d)
        pairs.append(d)
    table = cli.dip_rich_table([tuple(pairs)])
    text = render(table, 80)
    assert "…" not in text
    assert all(h in header_text(text) for h in headers(table))
    first_col = "".join(ln.split("│")[1].strip() for ln in text.splitlines() if ln.startswith("│"))
    assert all(p.name in first_col for p in pairs)  # a long name folds onto the next lines, whole


def test_show_at_80_columns_through_the_cli(tmp_path: Path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    store.write_csv(run / ROUNDS_CSV, round_dicts(), ROUND_COLUMNS)
    rundir.record_tables(run)
    narrow = Console(width=80, record=True, markup=False, color_system=None)
    monkeypatch.setattr(cli.render, "console", narrow)  # commands print through render.console
    assert cli.main(["show", str(run)]) == 0
    text = narrow.export_text()
    assert "…" not in text and "not shown at 80 columns" in text


def test_round_line_keeps_position_and_time_left_and_fits_80_columns():
    fields = {f: None for f in RoundRow.__dataclass_fields__}
    values = {"round": 3, "sparsity": 0.488, "train_acc_noisy": 0.6, "train_acc_flipped": 0.25, "val_acc": 0.7, "test_acc": 0.69}
    row = RoundRow(**{**fields, **values, "entropy": 0.85, "epochs": 2, "alive_weights": 10})
    wide = cli.round_line(row, 30, 125.0, 200)
    assert wide.startswith("round 3/30 (~2m05s left)  48.80% sparse")
    assert "memorised 25.00" in wide and "H 0.850" in wide
    narrow = cli.round_line(row, 30, 125.0, 80)
    assert len(narrow) <= 80 and narrow.startswith("round 3/30 (~2m05s left)") and "test 69.00" in narrow
    assert "H 0.850" not in narrow  # entropy goes first when the line would wrap
    assert cli.round_line(row, 3, None, 200).startswith("round 3/3  48.80% sparse")


def test_sweep_cells_table_fits_80_columns_without_cutting_cell_names():
    from types import SimpleNamespace

    from dsd2.sweep.main import _cells_table

    cells = [
        SimpleNamespace(
            name=f"tiny_demo_seed-{s}_rate-0.{r}", skipped=False, status="finished", attempts=1, error=None, run_dir=f"/o/x-{s}{r}"
        )
        for s in (0, 1)
        for r in (1, 4)
    ]
    summary = [{"best_acc": 0.25, "best_sparsity": 0.75, "dip_depth": 0.0033}] * 4
    result = SimpleNamespace(spec=SimpleNamespace(name="tiny_demo", pipeline=False), cells=cells, summary=summary)
    console = Console(width=80, record=True)
    console.print(_cells_table(result, "/o", 80))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "run directories: /o/<cell>-<hash>" in text
    cells[0].error = "boom"  # a failed cell brings the error column back
    console = Console(width=80, record=True)
    console.print(_cells_table(result, "/o", 80))
    assert "boom" in console.export_text()


def test_the_exhaustive_row_of_a_curve_cut_short_says_which_rounds(tmp_path):
    """`vanilla, exhaustive` said "all rounds" on a run that stopped (or was stopped) before its
    configured rounds: a search over rounds 0..1 of 2 is not exhaustive."""
    from dsd2 import imp
    from dsd2.compare import strategy_table

    from conftest import run_interrupted, tiny_config

    run = run_interrupted(tiny_config(), tmp_path / "cut", after_round=1)
    (row, *_) = strategy_table(run)
    assert row.strategy == "vanilla, exhaustive" and row.note == "rounds 0..1 of 2 only (unfinished), best on val_acc"
    full = imp.run(tiny_config(), tmp_path / "cut")
    assert strategy_table(full)[0].note == "all rounds, best on val_acc"
