"""Phase labels, best-fit choice and stop rules judged on the curve bank: real dsd2 curves
(tests/data/curves, measured by benchmarks/curve_bank.py) with boundaries read off by a person
(expected.yaml). See docs/curve_bank.md and docs/stop_rules.md."""

from pathlib import Path

import pytest
import yaml

from dsd2 import bank
from dsd2.compare import best_round
from dsd2.phases import PHASES, UNDETERMINED, PhaseParams, classify_phases

BANK = Path(__file__).parent / "data" / "curves"
EXPECTED = yaml.safe_load((BANK / "expected.yaml").read_text())
CURVES = {c.name: c for c in bank.load_bank(BANK)}


def signals(curve, upto=None):
    rows = curve.rows[:upto]
    mem = [r["train_acc_flipped"] for r in rows]
    return (
        [r["val_acc"] for r in rows],
        None if any(m is None for m in mem) else mem,
        [r["unflipped_acc"] for r in rows],
    )


def phases(name, upto=None, finished=True):
    acc, mem, fit = signals(CURVES[name], upto)
    return classify_phases(acc, memorisation=mem, fit=fit, finished=finished, n_eval=EXPECTED[name]["n_eval"])


def first(labels, phase):
    return next((i for i, lab in enumerate(labels) if lab == phase), None)


def test_the_bank_is_complete():
    assert set(CURVES) == set(EXPECTED)
    assert len(CURVES) >= 14
    settings = {c.setting for c in CURVES.values()}
    assert len(settings) >= 10
    assert any(n.startswith("fm_lenet5") for n in CURVES) and any(n.startswith("fm_vgg") for n in CURVES)
    assert sum(n.endswith("_dsd2") for n in CURVES) >= 2


# Curves where the labeller and the person who read the bank disagree, and why (issue 21). With
# accuracy alone, a fall is measured from the curve's best round, so a student whose accuracy stays
# more than sqrt(2) tol below its best, with a falling clean fit, is Collapsed from there; the
# reader put the collapse later, where the decline steepens. Strict: a fix that agrees again fails.
# The nine curves added last (SGD, pair-flip, look-alike, rate 0.4, neurons, channels, two
# students) were read before the labeller was run on them: 4 agreed at once; the SGD student after
# a fall into the collapse got the sqrt(2) tol of a rise (docs/phases.md), the VGG student (read
# and measured after that change) with it, the channel curve once a round that removes no channel
# ended the curve (it had retrained the same masks); the look-alike and neuron curves below do not.
STUDENT_FALL = "accuracy-only collapse is measured from the curve's best round (issue 21); the reader put it where the decline steepens"
DISAGREE = {
    "fm_lenet300_e6_n40_s0_dsd2": STUDENT_FALL + ": round 22 is 2.0 points below the best (82.4), fit 3.6 points down",
    "fm_lenet300_e60_n40_s0_dsd2": STUDENT_FALL + ": round 22 is 2.4 points below the dense 75.7, fit 1.5 points down",
    "fm_lenet300_e20_n40_s0_lookalike": "the Sweet plateau (68.1-69.7) ends one round earlier than the reader put it: round 28 (68.0) is 1.8 "
    "points below the peak 69.7 (69.74 - 67.98), past sqrt(2) tol (1.72); the reader read it as the plateau's noise",
    "fm_lenet300_e20_n40_s0_neurons": "memorisation broke without any recovery (no Sweet phase), so the labeller calls every round "
    "after the trough Collapsed (from round 9, 61.0%); the reader kept the trough-level rounds 9-11 (60-61%) apart and put the "
    "collapse where accuracy falls on with the clean fit (round 12). docs/phases.md does not say which a trough-level round is",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=DISAGREE[n])) if n in DISAGREE else n for n in sorted(EXPECTED)]
)
def test_boundaries_where_a_reader_puts_them(name):
    exp = EXPECTED[name]
    labels = phases(name).labels
    n = len(labels)
    assert UNDETERMINED not in labels
    assert [PHASES.index(x) for x in labels] == sorted(PHASES.index(x) for x in labels)
    light_end = next((i for i, lab in enumerate(labels) if lab != "light"), n)
    assert exp["light_end"][0] <= light_end <= exp["light_end"][1], labels
    for phase, key in (("sweet", "sweet_start"), ("collapsed", "collapse_start")):
        got = first(labels, phase)
        if exp[key] is None:
            assert got is None, (phase, labels)
        else:
            assert got is not None and exp[key][0] <= got <= exp[key][1], (phase, labels)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_labels_never_contradict_memorisation(name):
    acc, mem, _ = signals(CURVES[name])
    ph = phases(name)
    if mem is None or ph.basis != "memorisation":
        assert "critical" not in ph.labels or ph.basis == "accuracy"
        return
    p = PhaseParams()
    tol = PhaseParams.for_eval_set(EXPECTED[name]["n_eval"], acc[0]).tol
    for r, lab in enumerate(ph.labels):
        peak = max(mem[: r + 1])
        if lab == "light" or (lab == "critical" and acc[r] > min(acc[:r]) + tol):
            assert mem[r] >= p.break_end * peak, (r, lab)  # still memorising
        # a Critical round after the break ended is the accuracy still at its lows: the trough
        # is Critical even where memorisation is already half gone (docs/phases.md)
        if lab == "sweet":
            assert mem[r] < p.break_start * peak, (r, lab)  # memorisation broken
    if "sweet" in ph.labels:
        s = ph.labels.index("sweet")
        assert max(acc[s:]) > min(acc[: s + 1]) + PhaseParams.for_eval_set(EXPECTED[name]["n_eval"], acc[0]).tol


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prefixes_of_a_curve_never_change_a_label(name):
    full = phases(name).labels
    for k in range(1, len(full) + 1):
        part = phases(name, k, finished=False).labels
        assert all(p in (f, UNDETERMINED) for p, f in zip(part, full)), (k, part)
    # a curve cut early but finished (fewer configured rounds) still never calls a recovering round Collapsed
    for k in range(2, len(full) + 1):
        cut = phases(name, k).labels
        acc = signals(CURVES[name], k)[0]
        for r, lab in enumerate(cut):
            if lab == "collapsed":
                assert max(acc[r:]) < max(acc[:r])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_best_fit_round_and_its_phase(name):
    rows = CURVES[name].rows
    b = best_round(rows)
    top = max(r["val_acc"] for r in rows)
    assert rows[b]["val_acc"] == top and all(r["val_acc"] < top for r in rows[b + 1 :])
    assert phases(name).labels[b] == EXPECTED[name]["best_phase"]


def test_the_stop_rules_doc_and_the_results_doc_show_this_bank():
    root = Path(__file__).parents[1]
    curves = list(CURVES.values())
    assert bank.section_text((root / "docs" / "stop_rules.md").read_text(), "bank") == bank.stop_rule_report(curves).strip()
    assert bank.section_text((root / "docs" / "results.md").read_text(), "bank-summary") == bank.stop_rule_summary(curves).strip()


def test_the_entropy_default_is_the_whole_bank_fit():
    from dsd2.compare import ENTROPY_RULE_DEFAULTS

    assert ENTROPY_RULE_DEFAULTS == bank.fit_default_rule(list(CURVES.values()))


def test_plain_stop_keeps_the_dense_model_where_the_sweet_peak_beats_it():
    # the Sweet peak is the best model by far (more than the success margin above the dense start)
    sweet_best = [n for n in CURVES if EXPECTED[n]["best_phase"] == "sweet" and bank.evaluate(CURVES[n], "plain").gap > bank.OK_GAP]
    assert len(sweet_best) >= 2
    for name in sweet_best:
        plain = bank.evaluate(CURVES[name], "plain")
        entropy = bank.evaluate(CURVES[name], "entropy", rel_drop=0.1)
        assert plain.selected_round <= 1 and plain.gap > 5
        assert entropy.ok and entropy.sparsity > 0.99


SMALL_GRID = ((0.05, False), (0.1, True))


def check_folds_never_see_their_setting(curves, monkeypatch):
    """Every fold fits the entropy rule's choices on all other settings and on nothing of its own."""
    seen = []
    fit = bank.fit_rule

    def spy(train, *args, **kwargs):
        seen.append({c.name for c in train})
        return fit(train, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(bank, "fit_rule", spy)
        folds = bank.leave_one_setting_out(curves, grid=SMALL_GRID, **bank.SETTINGS["compress"])
    names = {c.name for c in curves}
    assert {f.setting for f in folds} == {c.setting for c in curves} and len(seen) == len(folds)
    for f, fitted_on in zip(folds, seen):
        held = {c.name for c in curves if c.setting == f.setting}
        assert not held & fitted_on, f"fold {f.setting} was fitted on its own curves {held & fitted_on}"
        assert fitted_on == names - held
        assert {o.curve for o in f.outcomes} == held
        assert f.choice == fit([c for c in curves if c.name in fitted_on], SMALL_GRID, **bank.SETTINGS["compress"])


FOLD_CURVES = [
    "fm_lenet300_e6_n40_s0",
    "fm_lenet300_e6_n40_s1",
    "fm_lenet300_e60_n40_s0",
    "fm_lenet300_e60_n40_s1",
    "fm_vit_e20_n40_s0",
    "fm_vgg23_e15_n40_s0",
]


def test_leave_one_setting_out_never_fits_on_the_held_out_setting(monkeypatch):
    check_folds_never_see_their_setting([CURVES[n] for n in FOLD_CURVES], monkeypatch)
    with pytest.raises(bank.UserError, match="two settings"):
        bank.leave_one_setting_out([CURVES["fm_lenet300_e6_n40_s0"], CURVES["fm_lenet300_e6_n40_s1"]])


@pytest.mark.parametrize("leak", ["all curves", "held-out seed"])
def test_the_held_out_check_catches_a_leak(monkeypatch, leak):
    """Mutation test: inject the leak into the fold split and the check above must fail."""
    split = bank.split

    def leaky(curves, setting):
        train, held = split(curves, setting)
        return (list(curves) if leak == "all curves" else train + held[:1]), held

    monkeypatch.setattr(bank, "split", leaky)
    with pytest.raises(AssertionError, match="fitted on its own curves"):
        check_folds_never_see_their_setting([CURVES[n] for n in FOLD_CURVES], monkeypatch)


def test_run_directories_group_by_setting(tmp_path):
    assert bank.Curve("demo_s1-0123456789", []).setting == "demo"
    assert bank.Curve("fm_x_s0_dsd2", []).setting == "fm_x_dsd2"


def test_stop_rules_command(tmp_path, capsys):
    from dsd2.cli import main

    assert main(["stop-rules", str(BANK)]) == 0
    assert "Setting `compress`" in capsys.readouterr().out
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n")
    assert main(["stop-rules", str(BANK), "--write", str(doc)]) == 2
    doc.write_text(f"intro\n{bank.BEGIN}\nOLD-TABLE\n{bank.END}\noutro\n")
    assert main(["stop-rules", str(BANK), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "OLD-TABLE" not in text


def test_accuracy_only_labels_agree_with_memorisation_labels():
    """What a run without known flipped samples gets (real noise, no clean labels): the fallback,
    judged against the memorisation-based labels of the same curves (docs/phases.md)."""
    agree = total = 0
    for name, curve in CURVES.items():
        acc, mem, fit = signals(curve)
        full = phases(name)
        if mem is None or full.basis != "memorisation":
            continue
        blind = classify_phases(acc, fit=fit, n_eval=EXPECTED[name]["n_eval"])
        assert blind.basis == "accuracy" and "not measured" in blind.note
        agree += sum(a == b for a, b in zip(full.labels, blind.labels))
        total += len(acc)
    assert agree / total >= 0.9, (agree, total)


def test_a_recovering_round_is_not_a_collapse():
    """The falling condition (a drop counts only while the accuracy still falls by more than the
    noise of two measurements): without it, the GELU ViT curves (entropy falling through the whole
    recovery) stop inside the dip when the goal is compression; with it they reach the sparse end."""
    vit = [c for n, c in CURVES.items() if n.startswith("fm_vit")]
    assert len(vit) >= 3
    choice = bank.fit_default_rule(list(CURVES.values()))
    assert choice["falling"]
    rule = bank.SETTINGS["compress"]
    before = [bank.evaluate(c, "entropy", **{**choice, "falling": False}, **rule) for c in vit]
    now = [bank.evaluate(c, "entropy", **choice, **rule) for c in vit]
    assert not all(o.ok for o in before) and all(o.ok for o in now)
    assert all(o.selected_round > b.selected_round for o, b in zip(now, before) if not b.ok)


def test_the_falling_test_has_the_noise_of_the_evaluation_set():
    from dsd2.compare import eval_size, fall_tolerance

    assert {eval_size(c.rows) for c in CURVES.values()} == {5000, 500}
    vit = CURVES["fm_vit_e20_n40_s1"].rows
    assert 0.015 < fall_tolerance(vit) < 0.02  # sqrt 2 x twice the standard error at 73% on 5,000
    assert fall_tolerance(CURVES["mnist1d_mlp_e60_n40_s0"].rows) > 0.05  # 500 samples: 6 points


def test_never_stop_and_the_oracle_bound_every_rule():
    for rule in bank.SETTINGS.values():
        for c in CURVES.values():
            never, oracle = bank.evaluate(c, "never", **rule), bank.evaluate(c, "oracle", **rule)
            assert never.cost == 1.0 and oracle.ok and oracle.cost <= min(bank.evaluate(c, r, **rule).cost for r in ("none",))


def rows_of(acc, fit, n=10000):
    return [
        {"val_acc": round(a * n) / n, "test_acc": a, "unflipped_acc": f, "train_acc_flipped": None, "entropy": None}
        for a, f in zip(acc, fit)
    ]


def test_eval_size_and_fall_tolerance_from_the_rows():
    from dsd2.compare import eval_size, fall_tolerance

    rows = rows_of([0.801, 0.797, 0.52], [0.9, 0.9, 0.6], n=1000)
    assert eval_size(rows) == 1000
    assert fall_tolerance(rows) == pytest.approx(2**0.5 * 2 * (0.801 * 0.199 / 1000) ** 0.5)
    # not k/n fractions of one evaluation set (an average over batches): no tolerance can be read off
    odd = [{"val_acc": a} for a in (0.8012345678901, 0.1 / 3**0.5)]
    assert eval_size(odd) is None and fall_tolerance(odd) == 0.0


def test_compression_steps_back_from_a_collapsed_round():
    """A slow slide within the 3-point tolerance, with the clean fit falling: the sparsest round
    within the tolerance is Collapsed by the labeller; the compression pick is the round before."""
    from dsd2.compare import decide, phase_labels

    acc = [0.8001, 0.8023, 0.8011, 0.7993, 0.7851, 0.7803, 0.7767, 0.6001]  # 10,000 samples: tol 1 point
    fit = [0.95, 0.95, 0.95, 0.95, 0.90, 0.88, 0.86, 0.65]
    rows = rows_of(acc, fit)
    labels = phase_labels(rows)
    assert labels == ["light"] * 4 + ["collapsed"] * 4  # 1.7-2.6 points below the best, the fit 5 points down
    d = decide(rows, "plain", tolerance=0.03, select="last_good")
    assert d is not None and d.stop_round == 7 and d.selected_round == 3 and "Collapsed" in d.reason
    # the paper's selection keeps the best round, never a Collapsed one anyway
    assert decide(rows, "plain", select="best").selected_round == 1


def test_compression_never_keeps_a_collapsed_round():
    from dsd2.compare import phase_labels

    for c in CURVES.values():
        labels = phase_labels(c.rows)
        for rule in ("plain", "entropy", "never"):
            o = bank.evaluate(c, rule, **bank.SETTINGS["compress"])
            assert labels[o.selected_round] != "collapsed", (c.name, rule, o.selected_round)


def test_stop_rules_write_edits_only_a_users_page_it_may(tmp_path, capsys):
    """--write rewrites the sections of the user's page in place: markers out of order were a
    traceback, a link was replaced by a file (the page it named untouched), a read-only page was
    overwritten and every page came back with dsd2's permissions."""
    import os

    from dsd2.cli import main

    page = f"intro\n{bank.BEGIN}\nOLD-TABLE\n{bank.END}\noutro\n"
    swapped = tmp_path / "swapped.md"
    swapped.write_text(f"intro\n{bank.END}\nmine\n{bank.BEGIN}\noutro\n")
    real, link = tmp_path / "real.md", tmp_path / "link.md"
    real.write_text(page)
    link.symlink_to(real.name)
    locked = tmp_path / "locked.md"
    locked.write_text(page)
    locked.chmod(0o444)
    for doc, says in ((swapped, "before"), (link, "symbolic link"), (locked, "read-only")):
        before = doc.read_bytes()
        assert main(["stop-rules", str(BANK), "--write", str(doc)]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and str(doc) in err and len(err.splitlines()) == 1, err
        assert doc.read_bytes() == before
    assert link.is_symlink() and real.read_text() == page
    private = tmp_path / "private.md"
    private.write_text(page)
    private.chmod(0o600)
    assert main(["stop-rules", str(BANK), "--write", str(private)]) == 0
    assert "OLD-TABLE" not in private.read_text() and os.stat(private).st_mode & 0o777 == 0o600
