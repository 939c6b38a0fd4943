"""Fraction-valued options refuse a percentage (a value above 1) and say the fraction meant."""

import pytest

from dsd2 import compare
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.units import fraction_error


@pytest.mark.parametrize(
    "override, fix",
    [
        ("early_stop.tolerance=3", "write 0.03 for 3 points"),
        ("noise.rate=40", "write 0.4 for 40 %"),
        ("noise.probe=5", "noise.probe=5 is above 1, but noise.probe is a fraction: write 0.05 for 5 %"),
        ("prune.rate=20", "write 0.2 for 20 %"),
        ("distill.alpha=80", "write 0.8 for 80 %"),
        ("prune.targets=[50, 75]", "write 0.5 for 50 %"),
        ("train.milestones=[50, 75]", "write 0.5 for 50 %"),
        ("early_stop.tolerance=300", "a fraction between 0 and 1 (0.03 for 3 points)"),
    ],
)
def test_a_percentage_in_a_config_is_refused_with_the_fraction_meant(override, fix):
    with pytest.raises(UserError) as err:
        load_config("tiny_mnist1d", [override, "prune.schedule=one_shot"] if "targets" in override else [override])
    assert fix in str(err.value) and override.split("=")[0] in str(err.value)


@pytest.mark.parametrize("override", ["early_stop.tolerance=0.03", "early_stop.tolerance=1", "noise.rate=0.4", "distill.alpha=1"])
def test_fractions_still_load(override):
    load_config("tiny_mnist1d", [override])


def test_fraction_error_leaves_fractions_and_non_numbers_alone():
    assert fraction_error("x", 0.5) is None and fraction_error("x", 1) is None
    assert fraction_error("x", "abc") is None and fraction_error("x", True) is None and fraction_error("x", float("nan")) is None


def _rows():
    acc = [0.80, 0.82, 0.81, 0.70]
    return [{"round": i, "val_acc": a, "test_acc": a, "entropy": None} for i, a in enumerate(acc)]


def test_stop_rules_refuse_a_tolerance_in_points():
    with pytest.raises(UserError, match="write 0.03 for 3 points"):
        compare.decide(_rows(), "plain", tolerance=3)
    assert compare.decide(_rows(), "plain", tolerance=0.03) is not None


def test_dsd2_stop_refuses_tolerance_3(tmp_path, capsys):
    from dsd2.cli import main

    from conftest import TINY

    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(tmp_path), "-q"]) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["stop", str(run_dir), "--rule", "entropy", "--tolerance", "3"]) == 2
    err = capsys.readouterr().err
    assert "write 0.03 for 3 points" in err and "Traceback" not in err
    assert main(["compare", str(run_dir), "--tolerance", "3"]) == 2
    assert "write 0.03 for 3 points" in capsys.readouterr().err
