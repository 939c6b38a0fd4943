"""The demo's verdict: its numbers come from the run tables (hand-made here), and it says so
when a rule picks a round labelled Collapsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsd2 import compare
from dsd2.compare import Outcome
from dsd2.verdict import StudyTables, valley, verdict

SPARSITY = [1 - 0.8**i for i in range(7)]


def rows(acc: list[float]) -> list[dict]:
    return [{"round": i, "sparsity": SPARSITY[i], "val_acc": a, "test_acc": a - 0.01} for i, a in enumerate(acc)]


# vanilla: falls from 82 % (round 1) to 75 % (round 3), recovers to 83 % (round 5); the student is flat, then falls
VANILLA = rows([0.80, 0.82, 0.78, 0.75, 0.77, 0.83, 0.70])
STUDENT = rows([0.83, 0.83, 0.82, 0.81, 0.80, 0.795, 0.79])


def o(strategy: str, rnd: int, *, test: float = 0.8, units: float = 2.0, phase: str | None = "light") -> Outcome:
    return Outcome(strategy, "run", rnd, rnd, SPARSITY[rnd], test, test, phase, units, units, None, units)


PAPER = [
    o("vanilla, exhaustive", 5, test=0.82, units=7.0, phase="sweet"),
    o("vanilla + early stop", 1, test=0.81, units=3.0),
    o("DSD² + early stop", 0, test=0.82, units=2.5),
]
COMPRESS = [
    o("vanilla, exhaustive", 5, test=0.82, units=7.0, phase="sweet"),
    o("vanilla + early stop", 2, test=0.77, units=4.0, phase="critical"),
    o("DSD² + early stop", 6, test=0.78, units=7.5, phase="collapsed"),
]


def test_valley_is_the_recovered_dip_and_the_rounds_below_its_rims():
    v = valley(VANILLA)
    assert v is not None
    assert (v.before, v.trough, v.after) == (1, 3, 5)
    assert (v.first, v.last) == (2, 4)  # 78 % and 77 % lie below the lower rim (82 %); round 6 is past the recovery
    assert round(v.depth, 6) == 0.07


def test_verdict_reports_the_dip_the_student_and_every_pick():
    text = verdict([StudyTables(0, VANILLA, STUDENT, PAPER, COMPRESS)], Path("/tmp/out/demo_report/index.html"))
    flat = " ".join(text.split())  # the lines wrap at 80 columns
    assert "seen in 1 of 1 seed(s)" in flat
    assert "falls 7.00 points, from 82.00 % (round 1, 20.0 % sparse) to 75.00 % (round 3, 48.8 % sparse)" in flat
    assert "recovers 8.00 points to 83.00 % (round 5, 67.2 % sparse)." in flat
    assert "Valley: rounds 2-4 (36.0-59.0 % sparse)" in flat
    assert "The DSD² student: a valley of 1 point(s) or more in 0 of 1 seed(s)" in flat and "deepest recovered dip 0.00 points" in flat
    # each rule's pick and cost, at both settings
    assert "round 1 (20.0 % sparse), test 81.00 %, cost 3.00" in flat
    assert "round 2 (36.0 % sparse), test 77.00 %, cost 4.00" in flat
    assert "tolerance 0, keeping the best round" in flat and "tolerance 3 points, keeping the sparsest good round" in flat
    # the dense student at tolerance 0 is explained; the Collapsed pick is never shown as a plain pick
    assert "it keeps the dense student" in flat
    assert "round 6 (73.8 % sparse), test 78.00 %, cost 7.50; this round is labelled Collapsed, not a recommended pick" in flat
    assert flat.endswith("Report (figures, every table): /tmp/out/demo_report/index.html")
    assert all(len(line) <= 80 for line in text.splitlines())


def test_no_sdd_and_a_student_valley_are_said_too():
    shallow = rows([0.80, 0.81, 0.805, 0.81, 0.79, 0.78, 0.77])  # a 0.5-point dip: noise
    dipping = rows([0.80, 0.79, 0.70, 0.81, 0.80, 0.79, 0.78])
    text = " ".join(verdict([StudyTables(1, shallow, dipping, PAPER[:2], COMPRESS[:2])]).split())
    assert "seen in 0 of 1 seed(s)" in text and "deepest recovered dip is 0.50 points (under 1)" in text
    assert (
        "a valley of 1 point(s) or more in 1 of 1 seed(s)" in text and "a valley of 10.00 points at rounds 1-2 (20.0-36.0 % sparse)" in text
    )
    assert "Collapsed" not in text and "dense student" not in text and "Report" not in text


def test_several_seeds_are_named():
    t = [StudyTables(s, VANILLA, STUDENT, PAPER, COMPRESS) for s in (0, 1)]
    text = verdict(t)
    assert "seen in 2 of 2 seed(s)" in text
    assert text.count("seed 0: ") == text.count("seed 1: ") >= 5


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from dsd2.study import run_pipeline

    from conftest import tiny_config

    return run_pipeline(tiny_config("prune.rounds=3"), out=tmp_path_factory.mktemp("study"))


def test_the_demo_prints_the_verdict_last(study, tmp_path, monkeypatch, capsys):
    """`dsd2 demo`'s last lines are the verdict read from its runs (pipelines: a tiny study)."""
    import dsd2.report
    import dsd2.study
    from dsd2.cli import main

    monkeypatch.setattr(dsd2.study, "run_pipelines_parallel", lambda configs, **_: [(study.teacher, study.student)] * len(configs))
    page = tmp_path / "demo_report" / "index.html"
    monkeypatch.setattr(dsd2.report, "write_report", lambda *a, **k: page)
    assert main(["demo", "--seeds", "0", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "expected: about" in captured.err and "min per run" in captured.err  # dsd2 estimate's prediction, first
    tail = out[out.index("What the demo found") :]
    assert "Sparse double descent in vanilla IMP" in tail and "DSD² + early stop" in tail
    assert tail.rstrip().endswith(str(page.resolve()))
    expected = compare.strategy_table(study.teacher, study.student)[1]
    assert f"round {expected.selected_round} (" in tail


def test_the_compute_figure_shows_both_stop_settings(study):
    from dsd2.report import compute_figure

    paper = compare.strategy_table(study.teacher, study.student)
    compress = compare.strategy_table(study.teacher, study.student, **compare.COMPRESS_RULE)
    compress[-1] = Outcome(**{**compress[-1].as_dict(), "phase": "collapsed"})
    fig = compute_figure(study.teacher, study.student, paper, compress)
    labels = [a.get_label() for a in fig.axes[0].lines if (a.get_gid() or "").startswith("strategy:")]
    assert len(labels) == len(paper) + len(compress) - 1  # the exhaustive point is drawn once
    assert "[" not in labels[0] and all("[tolerance 0, best]" in lb for lb in labels[1 : len(paper)])
    assert all("[tolerance 3 pts, last_good]" in lb for lb in labels[len(paper) :])
    assert "labelled Collapsed, not a recommended pick" in labels[-1]
    assert sum("Collapsed" in lb for lb in labels) == 1 + sum(o.phase == "collapsed" for o in [*paper, *compress[:-1]])
    face = [a.get_markerfacecolor() for a in fig.axes[0].lines if (a.get_gid() or "").startswith("strategy:")]
    assert all(f[3] < 1 for f in face)  # translucent: the curve under a stop point shows


def test_a_partial_recovery_says_how_far_short_it_stays():
    # a 25-point fall with a 1.7-point bump: both sides said, not "falls 1.72 points from 82.5 to 57.8"
    vals = [0.825, 0.82, 0.80, 0.70, 0.5778, 0.585, 0.595]
    rows = [{"round": i, "sparsity": 1 - 0.8**i, "val_acc": v, "test_acc": v} for i, v in enumerate(vals)]
    from dsd2.verdict import StudyTables, _sdd_text

    text = _sdd_text(StudyTables(seed=0, vanilla=rows, student=None, paper=[], compress=[]), False, 0.01)
    assert "falls 24.72 points, from 82.50 %" in text and "recovers 1.72 points to 59.50 %" in text
    assert "23.00 points short of where it fell from" in text


def test_a_valley_within_the_noise_of_the_evaluation_set_says_so():
    """A 2-point dip on 300 validation samples counted as sparse double descent with no word that
    the phase labeller reads such a rise as noise (it needs about 5 points there); on 5,000
    samples a 10-point valley gets no caveat."""
    small = rows([k / 300 for k in (240, 246, 240, 246, 243, 240, 236)])  # 300 samples: ±4.6 points
    text = " ".join(verdict([StudyTables(0, small, None, PAPER[:2], COMPRESS[:2])]).split())
    assert "seen in 1 of 1 seed(s)" in text and "falls 2.00 points" in text
    assert "within the noise of 300 held-out samples (a rise must exceed" in text
    big = rows([k / 5000 for k in (4000, 4100, 3600, 3500, 3900, 4150, 3800)])
    text = " ".join(verdict([StudyTables(0, big, big, PAPER[:2], COMPRESS[:2])]).split())
    assert "falls 12.00 points" in text and "within the noise" not in text
