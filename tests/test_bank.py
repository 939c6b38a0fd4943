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


@pytest.mark.parametrize("name", sorted(EXPECTED))
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
    for r, lab in enumerate(ph.labels):
        peak = max(mem[: r + 1])
        if lab in ("light", "critical"):
            assert mem[r] >= p.break_end * peak, (r, lab)  # still memorising
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

    assert ENTROPY_RULE_DEFAULTS["rel_drop"] == bank.fit_default_rel_drop(list(CURVES.values()))


def test_plain_stop_keeps_the_dense_model_where_the_sweet_peak_beats_it():
    # the Sweet peak is the best model by far (more than the success margin above the dense start)
    sweet_best = [n for n in CURVES if EXPECTED[n]["best_phase"] == "sweet" and bank.evaluate(CURVES[n], "plain").gap > bank.OK_GAP]
    assert len(sweet_best) >= 2
    for name in sweet_best:
        plain = bank.evaluate(CURVES[name], "plain")
        entropy = bank.evaluate(CURVES[name], "entropy", rel_drop=0.1)
        assert plain.selected_round <= 1 and plain.gap > 5
        assert entropy.ok and entropy.sparsity > 0.99


def test_leave_one_setting_out_never_fits_on_the_held_out_setting():
    curves = list(CURVES.values())
    folds = bank.leave_one_setting_out(curves, grid=(0.05, 0.1))
    assert {f.setting for f in folds} == {c.setting for c in curves}
    for f in folds:
        assert all(CURVES[o.curve].setting == f.setting for o in f.outcomes)
    with pytest.raises(bank.UserError, match="two settings"):
        bank.leave_one_setting_out([CURVES["fm_lenet300_e6_n40_s0"], CURVES["fm_lenet300_e6_n40_s1"]])


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
    """The entropy rule confirms a drop only while the accuracy still falls. Without that, the
    GELU ViT curves (entropy falling through the whole recovery) stop inside the dip when the
    goal is compression, with the whole-bank threshold; with it every curve of the bank succeeds."""
    vit = [c for n, c in CURVES.items() if n.startswith("fm_vit")]
    assert len(vit) >= 3
    r = bank.fit_default_rel_drop(list(CURVES.values()))
    rule = bank.SETTINGS["compress"]
    before = [bank.evaluate(c, "entropy", rel_drop=r, falling=False, **rule) for c in vit]
    now = [bank.evaluate(c, "entropy", rel_drop=r, **rule) for c in vit]
    assert not all(o.ok for o in before) and all(o.ok for o in now)
    assert all(o.selected_round > b.selected_round for o, b in zip(now, before) if not b.ok)
    for goal in bank.SETTINGS.values():
        assert all(bank.evaluate(c, "entropy", rel_drop=r, **goal).ok for c in CURVES.values())
