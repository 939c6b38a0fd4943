"""80 columns and readable names: the sweep's cost table, the report's run names and the
per-layer entropy legend."""

from __future__ import annotations

import pytest

from dsd2.sweep import estimate_cost, format_cost, load_sweep
from dsd2.sweep.cost import hours_text


@pytest.mark.parametrize("name", ["tiny_demo", "noise_sweep", "width_depth", "distill_variants_fmnist"])
def test_the_dry_run_cost_table_fits_80_columns(name):
    text = format_cost(estimate_cost(load_sweep(name)))
    assert max(len(line) for line in text.splitlines()) <= 80, text
    rows = [line.split() for line in text.splitlines() if {"teacher", "teacher*", "student", "run"} & set(line.split())]
    assert rows and all("e-" not in r[-1] for r in rows)  # GPU-hours: no 6.24e-10


def test_tiny_hours_read_as_less_than_a_hundredth():
    assert [hours_text(x) for x in (0, 6.24e-10, 0.004, 0.01, 1.5, 23.64, 1234)] == ["0", "<0.01", "<0.01", "0.01", "1.5", "23.6", "1,234"]
    text = format_cost(estimate_cost(load_sweep("tiny_demo")))
    assert "<0.01" in text


def test_long_model_descriptions_become_keys_spelled_out_below():
    text = format_cost(estimate_cost(load_sweep("noise_sweep")))
    lines = text.splitlines()
    assert any(line.startswith("m1 = vgg_like(") for line in lines)
    assert "cells are named noise_sweep_<cell>" in text and any(line.startswith("rate-0.1_seed-0") for line in lines)
    wide = format_cost(estimate_cost(load_sweep("noise_sweep")), width=200)
    assert "m1 =" not in wide and "vgg_like(depth=5" in wide


def test_the_entropy_legend_names_the_layer_each_activation_follows(tmp_path):
    from dsd2 import imp
    from dsd2.report import entropy_figure, load_run

    from conftest import tiny_config

    run = load_run(imp.run(tiny_config(), tmp_path))
    fig = entropy_figure([run])
    labels = [a.get_label() for ax in fig.axes for a in ax.lines if (a.get_gid() or "").startswith("layer:0:")]
    assert labels == ["layers.2: after Linear layers.1, 16 units", "layers.4: after Linear layers.3, 16 units"]


def test_report_run_names_break_between_their_parts():
    from dsd2.report.markup import _breakable

    assert _breakable("demo_fmnist_seed-0-0123456789") == "demo_<wbr>fmnist_<wbr>seed-<wbr>0-<wbr>0123456789"
    assert _breakable("a<b>") == "a&lt;b&gt;"
