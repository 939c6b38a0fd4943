import random

import pytest

from dsd2.errors import UserError
from dsd2.phases import (
    PHASES,
    EarlyStopper,
    StopDecision,
    entropy_below_dense_signal,
    entropy_drop_signal,
    entropy_early_stop,
    label_phases,
    plain_early_stop,
)


def sparsity(n):
    return [1 - 0.8**i for i in range(n)]


# An SDD-like curve (ε = 50%): flat, dip, peak above dense, collapse.
SDD_ACC = [0.462, 0.463, 0.465, 0.466, 0.468, 0.467, 0.468, 0.460, 0.450, 0.434,
           0.420, 0.414, 0.430, 0.444, 0.470, 0.482, 0.478, 0.450, 0.434, 0.400]
SDD_FLIPPED = [1.0] * 9 + [0.99, 0.97, 0.90, 0.60, 0.30, 0.10, 0.05, 0.03, 0.02, 0.01, 0.01]
SDD_CLEAN = [1.0] * 16 + [0.98, 0.90, 0.80, 0.60]
SDD_NOISY = [0.5 * c + 0.5 * f for c, f in zip(SDD_CLEAN, SDD_FLIPPED)]
SDD_LABELS = ["light"] * 8 + ["critical"] * 4 + ["sweet"] * 5 + ["collapsed"] * 3
# Activation entropy: keeps rising through the dip, falls at the collapse.
SDD_ENTROPY = [0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57, 0.58, 0.60,
               0.62, 0.63, 0.62, 0.60, 0.58, 0.57, 0.55, 0.45, 0.35, 0.20]

MONO_ACC = [0.90, 0.90, 0.899, 0.895, 0.88, 0.85, 0.80, 0.60]
MONO_TRAIN = [1.0, 1.0, 1.0, 0.99, 0.97, 0.93, 0.85, 0.62]
MONO_ENTROPY = [0.60, 0.60, 0.60, 0.59, 0.50, 0.40, 0.30, 0.20]


def assert_ordered(labels):
    idx = [PHASES.index(lab) for lab in labels]
    assert idx == sorted(idx)


# -- phases -------------------------------------------------------------------------------


def test_sdd_curve_phases():
    n = len(SDD_ACC)
    labels = label_phases(sparsity(n), SDD_ACC, SDD_NOISY, SDD_FLIPPED)
    assert labels == SDD_LABELS
    # Clean-part fit as the collapse signal gives the same segmentation here.
    assert label_phases(sparsity(n), SDD_ACC, SDD_NOISY, SDD_FLIPPED,
                        train_acc_clean=SDD_CLEAN) == SDD_LABELS


def test_sdd_curve_without_noise_info_uses_accuracy_only():
    n = len(SDD_ACC)
    assert label_phases(sparsity(n), SDD_ACC, SDD_NOISY, None) == SDD_LABELS


def test_percent_units():
    n = len(SDD_ACC)
    pct = lambda xs: [100 * x for x in xs]  # noqa: E731
    labels = label_phases(sparsity(n), pct(SDD_ACC), pct(SDD_NOISY), pct(SDD_FLIPPED),
                          tol=1.0, min_memorisation=50)
    assert labels == SDD_LABELS


def test_monotone_curve_has_no_critical():
    labels = label_phases(sparsity(8), MONO_ACC, MONO_TRAIN, None)
    assert labels == ["light"] * 4 + ["collapsed"] * 4


def test_monotone_noisy_student_curve():
    acc = [0.650, 0.655, 0.657, 0.658, 0.655, 0.641, 0.622, 0.606, 0.558, 0.444]
    flipped = [0.90, 0.92, 0.95, 0.95, 0.70, 0.50, 0.30, 0.20, 0.10, 0.05]
    noisy = [0.90, 0.92, 0.93, 0.93, 0.85, 0.75, 0.65, 0.58, 0.52, 0.40]
    labels = label_phases(sparsity(10), acc, noisy, flipped)
    assert labels == ["light"] * 4 + ["sweet"] + ["collapsed"] * 5
    assert "critical" not in labels


def test_noise_free_rising_curve_gets_light_sweet_collapsed():
    acc = [0.80, 0.805, 0.808, 0.83, 0.85, 0.852, 0.84, 0.70]
    train = [1.0, 1.0, 1.0, 1.0, 1.0, 0.99, 0.95, 0.80]
    labels = label_phases(sparsity(8), acc, train, None)
    assert labels == ["light"] * 3 + ["sweet"] * 3 + ["collapsed"] * 2


def test_dip_with_peak_below_dense():
    acc = [0.80, 0.80, 0.80, 0.75, 0.70, 0.76, 0.79, 0.70]
    flipped = [1.0, 1.0, 1.0, 0.95, 0.60, 0.20, 0.10, 0.05]
    clean = [1.0, 1.0, 1.0, 1.0, 1.0, 0.99, 0.98, 0.80]
    noisy = [0.9 * c + 0.1 * f for c, f in zip(clean, flipped)]
    expected = ["light"] * 3 + ["critical"] * 2 + ["sweet"] * 2 + ["collapsed"]
    assert label_phases(sparsity(8), acc, noisy, flipped) == expected
    assert label_phases(sparsity(8), acc, noisy, flipped, train_acc_clean=clean) == expected


def test_post_peak_drop_without_fit_loss_stays_sweet():
    acc = [0.70, 0.70, 0.60, 0.75, 0.72, 0.74, 0.60]
    flipped = [1.0, 1.0, 0.9, 0.1, 0.05, 0.05, 0.0]
    noisy = [1.0, 1.0, 0.95, 0.6, 0.6, 0.6, 0.4]
    labels = label_phases(sparsity(7), acc, noisy, flipped)
    assert labels == ["light", "light", "critical", "sweet", "sweet", "sweet", "collapsed"]


def test_all_light_and_single_round():
    assert label_phases([0.0], [0.5], [1.0], [1.0]) == ["light"]
    assert label_phases(sparsity(3), [0.5, 0.5, 0.5], [1, 1, 1], [1, 1, 1]) == ["light"] * 3


def test_random_curves_give_one_ordered_label_per_round():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 25)
        acc = [rng.uniform(0.3, 0.8) for _ in range(n)]
        noisy = [rng.uniform(0.3, 1.0) for _ in range(n)]
        flipped = [rng.uniform(0.0, 1.0) for _ in range(n)] if rng.random() < 0.7 else None
        labels = label_phases(sparsity(n), acc, noisy, flipped, tol=rng.choice([0, 0.01, 0.05]))
        assert len(labels) == n and set(labels) <= set(PHASES)
        assert labels[0] == "light"
        assert_ordered(labels)


def test_monotone_random_curves_never_critical_without_memorisation():
    """A falling curve is Critical only while the net memorises the noise (SPEC §1)."""
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(2, 20)
        acc = sorted((rng.uniform(0.3, 0.9) for _ in range(n)), reverse=True)
        noisy = sorted((rng.uniform(0.3, 1) for _ in range(n)), reverse=True)
        not_memorised = [0.4 * x for x in sorted((rng.uniform(0, 1) for _ in range(n)), reverse=True)]
        for fl in (not_memorised, None):
            assert "critical" not in label_phases(sparsity(n), acc, noisy, fl)


def test_partial_run_still_memorising_is_critical_not_collapsed():
    """An IMP run in progress: accuracy fell but the net fits everything, noise included."""
    acc = [0.66, 0.60, 0.585, 0.58, 0.575]
    labels = label_phases(sparsity(5), acc, [0.99, 1.0, 1.0, 1.0, 1.0], [0.97, 1.0, 1.0, 1.0, 1.0], train_acc_clean=[1.0] * 5)
    assert labels == ["light", "critical", "critical", "critical", "critical"]
    # once the fit of the clean samples is lost too, it is a collapse
    labels = label_phases(sparsity(5), acc, [0.99, 1.0, 1.0, 0.6, 0.4], [0.97, 1.0, 1.0, 0.2, 0.1], train_acc_clean=[1.0, 1.0, 1.0, 0.7, 0.5])
    assert labels == ["light", "critical", "critical", "collapsed", "collapsed"]


def test_gently_falling_curve_without_memorisation_stays_light_until_the_fit_goes():
    """A DSD² student: no memorisation, accuracy slides a little, the clean fit holds → Light."""
    acc = [0.76, 0.745, 0.74, 0.735, 0.70, 0.60]
    flipped = [0.06, 0.07, 0.07, 0.07, 0.06, 0.05]
    fit = [0.80, 0.801, 0.799, 0.797, 0.76, 0.65]
    labels = label_phases(sparsity(6), acc, fit, flipped, train_acc_clean=fit)
    assert labels == ["light", "light", "light", "light", "collapsed", "collapsed"]


def test_phase_validation():
    with pytest.raises(UserError):
        label_phases([0.0, 0.5], [0.5], [1.0, 1.0], None)
    with pytest.raises(UserError):
        label_phases([0.5, 0.2], [0.5, 0.5], [1.0, 1.0], None)
    with pytest.raises(UserError):
        label_phases([], [], [], None)
    with pytest.raises(UserError):
        label_phases([0.0], [0.5], [1.0], None, tol=-1)


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
    d = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01,
                           signal=entropy_below_dense_signal, fraction=0.95)
    assert (d.stop_round, d.selected_round) == (17, 15)
    d = entropy_early_stop(SDD_ACC, SDD_ENTROPY, tolerance=0.01,
                           signal=entropy_below_dense_signal, fraction=0.8)
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


def test_monotone_curve_both_rules_stop_at_first_real_drop():
    p = plain_early_stop(MONO_ACC, tolerance=0.01)
    e = entropy_early_stop(MONO_ACC, MONO_ENTROPY, tolerance=0.01)
    assert p.stop_round == e.stop_round == 4
    assert p.selected_round == e.selected_round == 1


def test_patience_and_tolerance():
    acc = [0.80, 0.81, 0.78, 0.82, 0.79, 0.77, 0.70]
    assert (plain_early_stop(acc, tolerance=0.005).stop_round,
            plain_early_stop(acc, tolerance=0.005).selected_round) == (2, 1)
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
        curves.append(([rng.uniform(0.4, 0.6) for _ in range(n)],
                       [rng.uniform(0.2, 0.8) for _ in range(n)]))
    param_sets = [{}, {"tolerance": 0.01}, {"tolerance": 0.02, "patience": 2},
                  {"patience": 3, "select": "last_good"}]
    if rule == "entropy":
        param_sets += [{"tolerance": 0.01, "rel_drop": 0.2},
                       {"signal": entropy_below_dense_signal, "fraction": 0.8}]
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
