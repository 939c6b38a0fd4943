import random

import pytest

from dsd2.errors import UserError
from dsd2.phases import (
    PHASES,
    UNDETERMINED,
    EarlyStopper,
    PhaseParams,
    StopDecision,
    classify_phases,
    entropy_below_dense_signal,
    entropy_drop_signal,
    entropy_early_stop,
    label_phases,
    plain_early_stop,
)


def sparsity(n):
    return [1 - 0.8**i for i in range(n)]


# An SDD-like curve (ε = 50%): flat, dip, peak above dense, collapse.
SDD_ACC = [
    0.462,
    0.463,
    0.465,
    0.466,
    0.468,
    0.467,
    0.468,
    0.460,
    0.450,
    0.434,
    0.420,
    0.414,
    0.430,
    0.444,
    0.470,
    0.482,
    0.478,
    0.450,
    0.434,
    0.400,
]
SDD_FLIPPED = [1.0] * 9 + [0.99, 0.97, 0.90, 0.60, 0.30, 0.10, 0.05, 0.03, 0.02, 0.01, 0.01]
SDD_CLEAN = [1.0] * 16 + [0.98, 0.90, 0.80, 0.60]
SDD_NOISY = [0.5 * c + 0.5 * f for c, f in zip(SDD_CLEAN, SDD_FLIPPED)]
SDD_LABELS = ["light"] * 8 + ["critical"] * 4 + ["sweet"] * 5 + ["collapsed"] * 3
# Activation entropy: keeps rising through the dip, falls at the collapse.
SDD_ENTROPY = [0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57, 0.58, 0.60, 0.62, 0.63, 0.62, 0.60, 0.58, 0.57, 0.55, 0.45, 0.35, 0.20]

MONO_ACC = [0.90, 0.90, 0.899, 0.895, 0.88, 0.85, 0.80, 0.60]
MONO_TRAIN = [1.0, 1.0, 1.0, 0.99, 0.97, 0.93, 0.85, 0.62]
MONO_ENTROPY = [0.60, 0.60, 0.60, 0.59, 0.50, 0.40, 0.30, 0.20]


def assert_ordered(labels):
    idx = [PHASES.index(lab) for lab in labels]
    assert idx == sorted(idx)


# -- phases -------------------------------------------------------------------------------
# Synthetic curves; the measured curves of the bank are in test_bank.py.


def test_sdd_curve_phases():
    labels = label_phases(SDD_ACC, memorisation=SDD_FLIPPED, fit=SDD_CLEAN)
    assert labels == SDD_LABELS
    assert classify_phases(SDD_ACC, memorisation=SDD_FLIPPED).basis == "memorisation"


def test_sdd_curve_without_noise_info_uses_accuracy_only():
    ph = classify_phases(SDD_ACC, fit=SDD_CLEAN)
    assert ph.labels == SDD_LABELS
    assert ph.basis == "accuracy" and "not measured" in ph.note


def test_percent_units():
    pct = lambda xs: [100 * x for x in xs]  # noqa: E731
    params = PhaseParams(tol=1.0, min_memorisation=50)
    assert label_phases(pct(SDD_ACC), memorisation=pct(SDD_FLIPPED), fit=pct(SDD_CLEAN), params=params) == SDD_LABELS


def test_monotone_curve_has_no_critical():
    # round 4 is 2 points below the best with the fit 3 points down, and never comes back: Collapsed
    # (before issue 21 the fall was measured from the best round after Light, and round 4 was Light)
    assert label_phases(MONO_ACC, fit=MONO_TRAIN) == ["light"] * 4 + ["collapsed"] * 4


def test_under_fitted_dense_start_memorises_during_the_dip():
    """Short training: the dense net barely memorises; rewound rounds memorise while accuracy falls."""
    acc = [0.81, 0.82, 0.80, 0.75, 0.70, 0.66, 0.67, 0.72, 0.76, 0.75, 0.70]
    mem = [0.03, 0.05, 0.15, 0.35, 0.55, 0.62, 0.50, 0.25, 0.08, 0.05, 0.04]
    fit = [0.85, 0.88, 0.92, 0.95, 0.97, 0.97, 0.95, 0.90, 0.84, 0.82, 0.74]
    labels = label_phases(acc, memorisation=mem, fit=fit)
    assert labels == ["light"] * 2 + ["critical"] * 4 + ["sweet"] * 4 + ["collapsed"]


def test_student_without_memorisation_is_light_then_collapsed():
    """A DSD² student: no memorisation, accuracy slides a little and holds, then falls."""
    acc = [0.76, 0.745, 0.74, 0.735, 0.74, 0.70, 0.60]
    mem = [0.06, 0.07, 0.07, 0.07, 0.06, 0.06, 0.05]
    fit = [0.80, 0.801, 0.799, 0.797, 0.795, 0.76, 0.65]
    ph = classify_phases(acc, memorisation=mem, fit=fit)
    assert ph.labels == ["light"] * 5 + ["collapsed"] * 2
    assert ph.basis == "accuracy" and "never memorised" in ph.note


def test_post_peak_drop_that_recovers_is_not_collapsed():
    acc = [0.70, 0.70, 0.60, 0.75, 0.72, 0.74, 0.60]
    mem = [1.0, 1.0, 0.9, 0.1, 0.05, 0.05, 0.0]
    fit = [1.0, 1.0, 0.98, 0.9, 0.88, 0.87, 0.6]
    labels = label_phases(acc, memorisation=mem, fit=fit)
    assert labels == ["light", "light", "critical", "sweet", "sweet", "sweet", "collapsed"]


def test_fallen_tail_that_keeps_its_fit_is_not_collapsed():
    acc = [0.70, 0.60, 0.75, 0.70, 0.69]
    mem = [1.0, 1.0, 0.1, 0.05, 0.05]
    assert label_phases(acc, memorisation=mem, fit=[1.0, 1.0, 0.9, 0.9, 0.9])[-1] == "sweet"
    assert label_phases(acc, memorisation=mem, fit=[1.0, 1.0, 0.9, 0.85, 0.8])[-2:] == ["collapsed"] * 2


# Issue 21: cases where the labels were wrong (percent units, tol = 1 point).
PCT = PhaseParams(tol=1.0, min_memorisation=50)


def short(labels):
    return "".join({"light": "L", "critical": "C", "sweet": "S", "collapsed": "X"}[x] for x in labels)


def test_abrupt_fall_after_light_is_collapsed_not_light():
    # before: L L L L L X X (the collapse was measured from the best round after Light: 30)
    assert short(label_phases([80, 81, 80.5, 30, 29, 28, 27], params=PCT)) == "LLLXXXX"
    assert short(label_phases([80, 81, 80.5, 30, 29, 28, 27], fit=[95, 96, 96, 40, 39, 38, 37], params=PCT)) == "LLLXXXX"
    # a VGG-like run that fell to chance; before: Light in every round
    assert short(label_phases([59.7, 11.3, 11.3, 11.3, 10.0], fit=[70, 10, 10, 10, 10], params=PCT)) == "LXXXX"


def test_student_plateau_that_falls_and_never_recovers():
    """A DSD² student (no memorisation) on a plateau at 83.2-83.8 that falls by 1.7-1.9 points
    with its clean fit: the fallen rounds are Collapsed (before: Light for three more rounds)."""
    acc = [83.5, 83.8, 83.2, 83.6, 83.4, 83.7, 82.0, 81.9, 81.9, 81.1, 79.0]
    fit = [90.0, 90.3, 90.2, 90.1, 90.0, 89.9, 88.6, 88.4, 88.2, 87.0, 84.0]
    ph = classify_phases(acc, memorisation=[5] * 11, fit=fit, params=PCT)
    assert ph.basis == "accuracy" and short(ph.labels) == "LLLLLLXXXXX"


@pytest.mark.parametrize("tick", [87.2, 87.5, 88.5])
def test_one_upward_tick_of_a_decline_is_not_a_sweet_phase(tick):
    """Noise-free data, a falling curve with one round up by 1.2-2.5 tol (before: Critical → Sweet)."""
    acc = [90, 89.5, 89.8, 88, 86, tick, 84, 82, 80, 77]
    assert short(label_phases(acc, params=PCT)) == "LLLXXXXXXX"


def test_a_fall_into_the_collapse_compares_two_accuracies():
    # a plateau that ends 1.3 points below its best (tol 1, sqrt(2) tol 1.41) is noise, 1.5 is a collapse
    fit = [90, 90, 90, 90, 90, 88, 88, 88]
    plateau = [80, 80.5, 80.2, 80.4, 80.3]
    assert short(label_phases([*plateau, 79.2, 79.2, 79.2], fit=fit, params=PCT)) == "LLLLLLLL"
    assert short(label_phases([*plateau, 79.0, 79.0, 79.0], fit=fit, params=PCT)) == "LLLLLXXX"


def test_a_rise_compares_two_accuracies():
    # a recovery held for two rounds counts when it exceeds sqrt(2) tol, not tol
    base = [90, 89.5, 85, 80, 78]
    assert short(label_phases([*base, 79.3, 79.3, 75], params=PCT)) == "LLXXXXXX"  # 1.3 < 1.41
    assert short(label_phases([*base, 79.5, 79.5, 75], params=PCT)) == "LLCCCSSX"  # 1.5 > 1.41


@pytest.mark.parametrize("extra", [[], [56]])
def test_the_accuracy_trough_is_never_sweet(extra):
    """The trough at (or after) the round where memorisation is half gone is the last Critical
    round (before: the trough itself was labelled Sweet)."""
    acc = [70, 70.2, 66, 62, 60, 58, *extra, 62, 66, 68, 67.5]
    mem = [90, 100, 100, 100, 95, 45, *[20] * len(extra), 10, 5, 5, 5]
    fit = [99, 100, 100, 100, 99, 97, *[95] * len(extra), 93, 92, 92, 92]
    labels = label_phases(acc, memorisation=mem, fit=fit, params=PCT)
    trough = acc.index(min(acc))
    assert labels[trough] == "critical" and labels[trough + 1] == "sweet"
    assert short(labels) == "LL" + "C" * (trough - 1) + "S" * (len(acc) - trough - 1)
    # unfinished: while the accuracy has not clearly risen after the break, the trough may still be ahead
    part = label_phases(acc[: trough + 1], memorisation=mem[: trough + 1], fit=fit[: trough + 1], finished=False, params=PCT)
    assert part[:2] == ["light", "light"] and set(part[2:]) <= {"critical", UNDETERMINED} and part[-1] == UNDETERMINED


def test_all_light_and_single_round():
    assert label_phases([0.5], memorisation=[1.0]) == ["light"]
    assert label_phases([0.5, 0.5, 0.5], memorisation=[1, 1, 1]) == ["light"] * 3


def test_unfinished_curves_say_undetermined_and_never_change_a_label():
    full = classify_phases(SDD_ACC, memorisation=SDD_FLIPPED, fit=SDD_CLEAN).labels
    seen_undetermined = False
    for k in range(1, len(SDD_ACC) + 1):
        part = label_phases(SDD_ACC[:k], memorisation=SDD_FLIPPED[:k], fit=SDD_CLEAN[:k], finished=False)
        for got, final in zip(part, full):
            assert got in (final, UNDETERMINED)
        seen_undetermined |= UNDETERMINED in part
    assert seen_undetermined
    # inside the break (memorisation 60% of its peak), Critical may still go on: undetermined
    assert label_phases(SDD_ACC[:13], memorisation=SDD_FLIPPED[:13], finished=False)[-1] == UNDETERMINED
    # accuracy only: a fall after Light is a dip or a collapse, not known yet
    assert label_phases(MONO_ACC[:6], finished=False) == ["light"] * 4 + [UNDETERMINED] * 2


def test_random_curves_give_one_ordered_label_per_round():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 25)
        acc = [rng.uniform(0.3, 0.8) for _ in range(n)]
        fit = [rng.uniform(0.3, 1.0) for _ in range(n)]
        mem = [rng.uniform(0.0, 1.0) for _ in range(n)] if rng.random() < 0.7 else None
        params = PhaseParams(tol=rng.choice([0, 0.01, 0.05]))
        full = label_phases(acc, memorisation=mem, fit=fit, params=params)
        assert len(full) == n and set(full) <= set(PHASES)
        assert full[0] == "light"
        assert_ordered(full)
        k = rng.randint(1, n)
        part = label_phases(acc[:k], memorisation=mem and mem[:k], fit=fit[:k], finished=False, params=params)
        assert all(p in (f, UNDETERMINED) for p, f in zip(part, full))


def test_monotone_random_curves_never_critical_without_memorisation():
    """A falling curve is Critical only while the net memorises the noise."""
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(2, 20)
        acc = sorted((rng.uniform(0.3, 0.9) for _ in range(n)), reverse=True)
        fit = sorted((rng.uniform(0.3, 1) for _ in range(n)), reverse=True)
        not_memorised = [0.4 * x for x in sorted((rng.uniform(0, 1) for _ in range(n)), reverse=True)]
        for mem in (not_memorised, None):
            assert "critical" not in label_phases(acc, memorisation=mem, fit=fit)


def test_run_still_memorising_is_critical_not_collapsed():
    """An IMP run cut before the break: accuracy fell but the net fits everything, noise included."""
    acc = [0.66, 0.60, 0.585, 0.58, 0.575]
    for finished in (True, False):
        labels = label_phases(acc, memorisation=[0.97, 1.0, 1.0, 1.0, 1.0], fit=[1.0] * 5, finished=finished)
        assert labels == ["light", "critical", "critical", "critical", "critical"]


def test_phase_validation():
    with pytest.raises(UserError):
        label_phases([0.5], memorisation=[1.0, 1.0])
    with pytest.raises(UserError):
        label_phases([])
    with pytest.raises(UserError):
        label_phases([0.5, float("nan")])
    with pytest.raises(UserError):
        PhaseParams(tol=-1)
    with pytest.raises(UserError):
        PhaseParams(break_start=0.4, break_end=0.5)


# -- early stopping -----------------------------------------------------------------------


def test_plain_stop_fires_in_the_dip():
    d = plain_early_stop(SDD_ACC, tolerance=0.01)
    assert d.stop_round == 8 and SDD_LABELS[8] == "critical"
    assert d.selected_round == 6  # 0.468 at rounds 4 and 6: ties → sparsest
    assert SDD_LABELS[d.selected_round] == "light"
    assert d.stopped and "round 8" in d.reason and d.rounds_seen == 9


def test_entropy_stop_dodges_the_dip_and_selects_the_peak():
    d = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01)
    assert d.stop_round == 17
    assert d.selected_round == 15 and SDD_LABELS[15] == "sweet"
    assert d.ignored_drops == [8, 9, 10, 11, 12, 13]


def test_entropy_stop_with_other_signals():
    d = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01, signal=entropy_below_dense_signal, fraction=0.95)
    assert (d.stop_round, d.selected_round) == (17, 15)
    d = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01, signal=entropy_below_dense_signal, fraction=0.8)
    assert (d.stop_round, d.selected_round) == (18, 15)
    d = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01, abs_drop=0.1)
    assert (d.stop_round, d.selected_round) == (17, 15)
    never = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01, signal=lambda h, a: False)
    assert never.stop_round is None and never.selected_round == 15
    always = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01, signal=lambda h, a: True)
    plain = plain_early_stop(SDD_ACC, tolerance=0.01)
    assert (always.stop_round, always.selected_round) == (plain.stop_round, plain.selected_round)


def test_signal_functions():
    assert not entropy_drop_signal([0.5, 0.6, 0.55])
    assert entropy_drop_signal([0.5, 0.6, 0.53])
    assert entropy_drop_signal([0.5, 0.6, 0.53], abs_drop=0.05)
    assert not entropy_drop_signal([0.5, 0.6, 0.56], abs_drop=0.05)
    assert entropy_drop_signal([0.5, 0.6, 0.56], dense_fraction=1.2)
    assert entropy_below_dense_signal([0.5, 0.44])
    assert not entropy_below_dense_signal([0.5, 0.46])
    # the falling condition, with the noise of two measurements (issue 21)
    h, acc = [0.5, 0.6, 0.3], [0.80, 0.70, 0.69]
    assert entropy_drop_signal(h, acc) and not entropy_drop_signal(h, acc, fall_tol=0.015)
    assert entropy_drop_signal(h, [0.80, 0.70, 0.68], fall_tol=0.015)
    assert not entropy_drop_signal(h, [0.80, 0.70, 0.75]) and entropy_drop_signal(h, [0.80, 0.70, 0.75], falling=False)


def test_monotone_curve_both_rules_stop_at_first_real_drop():
    p = plain_early_stop(MONO_ACC, tolerance=0.01)
    e = entropy_early_stop(MONO_ACC, MONO_ENTROPY, tolerance=0.01)
    assert p.stop_round == e.stop_round == 4
    assert p.selected_round == e.selected_round == 1


def test_patience_and_tolerance():
    acc = [0.80, 0.81, 0.78, 0.82, 0.79, 0.77, 0.70]
    assert (plain_early_stop(acc, tolerance=0.005).stop_round, plain_early_stop(acc, tolerance=0.005).selected_round) == (2, 1)
    d = plain_early_stop(acc, tolerance=0.005, patience=2)
    assert (d.stop_round, d.selected_round) == (5, 3)
    d = plain_early_stop(acc, tolerance=0.05)
    assert (d.stop_round, d.selected_round) == (6, 3)
    d = plain_early_stop(acc, tolerance=0.05, select="last_good")
    assert (d.stop_round, d.selected_round) == (6, 5)
    d = plain_early_stop(acc, tolerance=0.005, patience=2, select="last_good")
    assert d.selected_round == 3
    # Equal to the best is not a drop with tolerance 0.
    assert plain_early_stop([0.5, 0.5, 0.5]).stop_round is None


def test_never_fires():
    d = plain_early_stop([0.5, 0.6, 0.7, 0.7])
    assert d.stop_round is None and d.selected_round == 3 and not d.stopped
    assert plain_early_stop([]).selected_round is None


def test_stop_validation():
    with pytest.raises(UserError):
        plain_early_stop([0.5], patience=0)
    with pytest.raises(UserError):
        plain_early_stop([0.5], tolerance=-0.1)
    with pytest.raises(UserError):
        plain_early_stop([0.5], select="worst")
    with pytest.raises(UserError):
        entropy_early_stop([0.5, 0.4], [0.5])
    with pytest.raises(UserError):
        EarlyStopper(rule="magic")
    es = EarlyStopper(rule="entropy")
    with pytest.raises(UserError):
        es.update(0, 0.5)  # entropy missing
    es = EarlyStopper()
    with pytest.raises(UserError):
        es.update(1, 0.5)  # rounds must start at 0 and be consecutive


def _offline(rule, acc, ent, params):
    if rule == "plain":
        return plain_early_stop(acc, **params)
    return entropy_early_stop(acc, ent, **params)


@pytest.mark.parametrize("rule", ["plain", "entropy"])
def test_online_equals_offline(rule):
    rng = random.Random(2)
    curves = [(SDD_ACC, SDD_ENTROPY), (MONO_ACC, MONO_ENTROPY)]
    for _ in range(150):
        n = rng.randint(1, 20)
        curves.append(([rng.uniform(0.4, 0.6) for _ in range(n)], [rng.uniform(0.2, 0.8) for _ in range(n)]))
    param_sets = [{}, {"tolerance": 0.01}, {"tolerance": 0.02, "patience": 2}, {"patience": 3, "select": "last_good"}]
    if rule == "entropy":
        param_sets += [{"tolerance": 0.01, "rel_drop": 0.2}, {"signal": entropy_below_dense_signal, "fraction": 0.8}]
    for acc, ent in curves:
        for params in param_sets:
            es = EarlyStopper(rule=rule, **params)
            for r in range(len(acc)):
                stop = es.update(r, acc[r], ent[r] if rule == "entropy" else None)
                off = _offline(rule, acc[: r + 1], ent[: r + 1], params)
                assert isinstance(off, StopDecision)
                assert es.decision == off
                assert stop == (off.stop_round is not None) == es.stopped


def test_online_usage_sdd():
    es = EarlyStopper(rule="entropy", tolerance=0.01)
    stopped_at = None
    for r, (a, h) in enumerate(zip(SDD_ACC, SDD_ENTROPY)):
        if es.update(r, a, entropy=h):
            stopped_at = r
            break
    assert stopped_at == 17 and es.decision.selected_round == 15


def test_stop_tolerance_must_be_finite():
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(UserError, match="finite number"):
            plain_early_stop([0.5, 0.4], tolerance=bad)


def test_a_run_whose_phases_come_from_accuracy_alone_says_so(tmp_path, capsys):
    """A noise-free run has no memorisation signal: its table and report said `light` with no word
    that the label is read off accuracy alone (Phases.note was computed and never shown), and its
    title said `none noise 0.2`, a rate it never used."""
    from pathlib import Path

    from dsd2 import rundir
    from dsd2.cli import main
    from dsd2.compare import phase_basis_note

    from conftest import TINY

    assert main(["run", "tiny_mnist1d", *TINY, "noise.kind=none", "--out", str(tmp_path), "-q"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no label noise" in out and "none noise" not in out
    assert "phases from held-out accuracy alone: memorisation is not measured" in out
    (run,) = [p for p in Path(tmp_path).iterdir() if p.is_dir()]
    assert main(["report", str(run), "-o", str(tmp_path / "rep")]) == 0
    assert (
        "Phase labels: phases from held-out accuracy alone: memorisation is not measured" in (tmp_path / "rep" / "index.html").read_text()
    )
    # memorisation decides: nothing to add
    rows = [{**r.as_dict(), "train_acc_flipped": m} for r, m in zip(rundir.read_rounds(run), (1.0, 1.0, 0.2))]
    assert phase_basis_note(rows) is None
    assert "never memorised" in phase_basis_note([{**r, "train_acc_flipped": 0.1} for r in rows])
