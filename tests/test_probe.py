"""The memorisation probe (noise.probe, docs/noise.md): labels dsd2 flips itself on top of any
noise, recorded and seeded, in the run id, measured in their own rounds.csv columns and read by
the phase labeller when no flipped sample is otherwise known."""

from __future__ import annotations

import pytest
import torch

from dsd2 import imp, store
from dsd2.compare import memorisation, phase_labels
from dsd2.config import differing_settings, load_config
from dsd2.errors import UserError
from dsd2.noise import NoisyLabels, add_probe, apply_label_noise

from conftest import tiny_config

N, K = 1000, 10
CLEAN = torch.arange(N) % K


def _noisy(kind="symmetric", rate=0.4, seed=0):
    return apply_label_noise(CLEAN, kind=kind, rate=rate, num_classes=K, seed=seed)


# ----------------------------------------------------------------------------- the probe's labels


@pytest.mark.parametrize("kind, rate", [("none", 0.0), ("symmetric", 0.4), ("pairflip", 0.2), ("bernoulli", 0.3)])
def test_the_probe_flips_its_own_samples_on_top_of_the_noise(kind, rate):
    own = _noisy(kind, rate)
    out = add_probe(own, CLEAN, fraction=0.05, num_classes=K, seed=0)
    probe = out.probe
    assert probe is not None and probe.numel() == 50  # floor(0.05 * 1000)
    assert torch.equal(probe, probe.sort().values)
    assert not set(probe.tolist()) & set(own.flipped.tolist())  # apart from the run's own flips
    assert bool((out.noisy[probe] != CLEAN[probe]).all())  # every probe label is wrong
    rest = torch.ones(N, dtype=torch.bool)
    rest[probe] = False
    assert torch.equal(out.noisy[rest], own.noisy[rest])  # the run's noise is untouched
    assert torch.equal(out.flipped, own.flipped)  # the usual memorisation columns keep their samples


def test_the_probe_is_seeded_from_the_run_seed():
    own = _noisy()
    a = add_probe(own, CLEAN, fraction=0.05, num_classes=K, seed=0)
    b = add_probe(own, CLEAN, fraction=0.05, num_classes=K, seed=0)
    c = add_probe(_noisy(seed=1), CLEAN, fraction=0.05, num_classes=K, seed=1)
    assert torch.equal(a.probe, b.probe) and torch.equal(a.noisy, b.noisy)
    assert not torch.equal(a.probe, c.probe)


def test_a_probe_on_soft_labels_makes_its_rows_one_hot():
    soft = torch.full((N, K), 1.0 / K)
    soft[torch.arange(N), CLEAN] = 0.5 + 0.5 / K
    soft = soft / soft.sum(1, keepdim=True)
    out = add_probe(
        NoisyLabels(noisy=CLEAN.clone(), flipped=torch.empty(0, dtype=torch.long), soft=soft), CLEAN, fraction=0.01, num_classes=K, seed=0
    )
    assert out.soft is not None and torch.equal(out.soft[out.probe].argmax(1), out.noisy[out.probe])
    assert torch.allclose(out.soft[out.probe].sum(1), torch.ones(10)) and float(out.soft[out.probe].max(1).values.min()) == 1.0


def test_a_probe_too_small_or_too_large_is_refused():
    with pytest.raises(UserError, match=r"noise.probe=0.0005 flips no sample of the 1000 training samples: use at least 0.001"):
        add_probe(_noisy(), CLEAN, fraction=0.0005, num_classes=K, seed=0)
    with pytest.raises(UserError, match=r"of the 3700 training samples: use at least 0.0003$"):
        add_probe(
            NoisyLabels(noisy=torch.zeros(3700, dtype=torch.long), flipped=torch.empty(0, dtype=torch.long)),
            torch.zeros(3700, dtype=torch.long),
            fraction=0.0002,
            num_classes=K,
            seed=0,
        )
    assert (
        add_probe(
            NoisyLabels(noisy=torch.zeros(3700, dtype=torch.long), flipped=torch.empty(0, dtype=torch.long)),
            torch.zeros(3700, dtype=torch.long),
            fraction=0.0003,
            num_classes=K,
            seed=0,
        ).probe.numel()
        == 1
    )
    with pytest.raises(UserError, match=r"asks 700 probe samples but only 600 training labels are left correct.*lower noise.probe"):
        add_probe(_noisy(), CLEAN, fraction=0.7, num_classes=K, seed=0)


# ----------------------------------------------------------------------------- config and run id


@pytest.mark.parametrize("value, fix", [("5", "write 0.05 for 5 %"), ("1", "less than 1"), ("-0.1", "greater than or equal to 0")])
def test_bad_probe_values_are_refused_with_the_fix(value, fix):
    with pytest.raises(UserError) as err:
        load_config("tiny_mnist1d", [f"noise.probe={value}"])
    assert fix in str(err.value) and "noise.probe" in str(err.value)


def test_the_probe_is_in_the_run_id_and_no_probe_keeps_the_old_id():
    base = tiny_config()
    assert tiny_config("noise.probe=0").run_id() == base.run_id()
    for extra in ([], ["noise.kind=none"]):
        a, b = tiny_config(*extra), tiny_config(*extra, "noise.probe=0.01")
        assert a.run_id() != b.run_id()
        assert differing_settings(a, b) == ["noise.probe"]


# ----------------------------------------------------------------------------- a run with a probe


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    cfg = tiny_config("noise.kind=none", "noise.probe=0.1")
    return cfg, imp.run(cfg, out)


def test_a_run_records_its_probe(probe_run):
    cfg, run = probe_run
    labels = store.load_tensors(run / "labels.safetensors")
    probe = labels["probe"]
    assert probe.numel() == int(0.1 * labels["clean"].numel()) and labels["flipped"].numel() == 0
    assert bool((labels["noisy"][probe] != labels["clean"][probe]).all())
    noise = store.read_json(run / "noise.json")
    assert noise["probe"]["num_probe"] == probe.numel() and noise["probe"]["fraction"] == 0.1
    assert noise["num_flipped"] == 0  # the summary is of the run's own noise: none
    assert imp.run(cfg, run.parent) == run  # a resumed run checks the same probe


def test_probe_columns_only_with_a_probe(probe_run, tmp_path):
    _, run = probe_run
    header = (run / "rounds.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["train_acc_probe", "probe_acc_clean"]
    rows = store.read_csv(run / "rounds.csv")
    assert all(0 <= r["train_acc_probe"] <= 1 for r in rows) and all(r["train_acc_flipped"] is None for r in rows)
    plain = imp.run(tiny_config("noise.kind=none", "prune.rounds=1"), tmp_path)
    plain_header = (plain / "rounds.csv").read_text().splitlines()[0]
    assert "probe" not in plain_header and "probe" not in store.load_tensors(plain / "labels.safetensors")
    assert "probe" not in store.read_json(plain / "noise.json")


def test_show_prints_the_probe(probe_run, capsys):
    from dsd2.cli import main

    _, run = probe_run
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "round" in line and ("sparsity" in line or "spars%" in line))
    assert "probe" in header  # the column ("probe memorised", or "probe" on a narrow terminal)
    assert "memorisation probe: 370 more train labels flipped by dsd2 (noise.probe=0.1)" in out


# ----------------------------------------------------------------------------- the labeller reads it


def _rows(acc, mem, column):
    # accuracies k/5001: the labeller reads 5001 validation samples off them (a 1.1-point tolerance)
    return [
        {"round": i, "val_acc": a / 5001, "unflipped_acc": 0.95, "train_acc_flipped": None, column: m}
        for i, (a, m) in enumerate(zip(acc, mem, strict=True))
    ]


# a dip that recovers while the net still memorises: Critical to the end by memorisation, read as
# Critical -> Sweet by accuracy alone
ACC = [4001, 4003, 3701, 3501, 3401, 3751, 4001, 4051, 4001, 3951]
MEM = [0.95, 0.97, 0.98, 0.97, 0.96, 0.97, 0.98, 0.99, 0.99, 0.99]


def test_the_labeller_reads_the_probe_without_known_flipped_samples():
    with_flipped = _rows(ACC, MEM, "train_acc_flipped")
    with_probe = _rows(ACC, MEM, "train_acc_probe")
    blind = _rows(ACC, [None] * len(ACC), "train_acc_probe")
    assert memorisation(with_probe) == MEM and memorisation(blind) is None
    labels = phase_labels(with_probe)
    assert labels == phase_labels(with_flipped)
    assert labels == ["light"] * 2 + ["critical"] * 8  # memorisation never breaks: no Sweet phase
    assert phase_labels(blind)[5:] == ["sweet"] * 5  # what accuracy alone reads


def test_known_flipped_samples_win_over_the_probe():
    rows = [{**r, "train_acc_probe": 0.0} for r in _rows(ACC, MEM, "train_acc_flipped")]
    assert memorisation(rows) == MEM


def test_the_run_labeller_reads_the_probe_too():
    from dsd2.imp.loop import label_rows
    from dsd2.rundir import RoundRow

    base = dict.fromkeys(("sparsity", "train_loss", "train_acc_noisy", "train_acc_clean", "round_pflops_dense", "round_pflops_sparse"), 0.5)
    base |= {"alive_weights": 1, "epochs": 1, "train_pflops_dense": 1.0, "train_pflops_sparse": 1.0, "probe_acc_clean": 0.0}
    rows = [
        RoundRow.from_dict({**base, **r, "test_acc": r["val_acc"], "round": i}) for i, r in enumerate(_rows(ACC, MEM, "train_acc_probe"))
    ]
    assert "train_acc_probe" in rows[0].as_dict()
    assert label_rows(rows, finished=True, n_eval=5001) == ["light"] * 2 + ["critical"] * 8
