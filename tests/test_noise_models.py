"""The user's transition matrix, instance-dependent noise (Xia et al. 2020) and noise.json."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsd2 import imp, rundir, store
from dsd2.cli import main
from dsd2.config import validate_config
from dsd2.errors import UserError
from dsd2.noise import FeatureSource, apply_label_noise, noise_summary, transition_matrix, truncated_normal
from dsd2.registry import NOISE_MODELS
from dsd2.report import write_report

from conftest import tiny_config

T3 = [[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]]


def _labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _transition(y: torch.Tensor, matrix, seed: int = 0):
    return apply_label_noise(y, kind="transition", rate=0.0, num_classes=len(matrix), seed=seed, matrix=matrix)


# ------------------------------------------------------------------ the transition matrix


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "square"),
        ([[0.5, 0.5], [0.5, 0.5]], "dataset has 3 classes"),
        ([[1.2, -0.2, 0.0], [0, 1, 0], [0, 0, 1]], "negative entry at row 0"),
        ([[0.5, 0.4, 0.0], [0, 1, 0], [0, 0, 1]], "row 0 sums to 0.9"),
        ([[math.nan, 0.5, 0.5], [0, 1, 0], [0, 0, 1]], "NaN"),
    ],
)
def test_matrix_checks_when_sampling(matrix, message):
    with pytest.raises(UserError, match=message):
        transition_matrix(matrix, 3)


def test_matrix_row_tolerance():
    ok = [[0.5, 0.5 + 5e-7], [0.0, 1.0]]
    assert transition_matrix(ok, 2).shape == (2, 2)
    with pytest.raises(UserError, match="sums to"):
        transition_matrix([[0.5, 0.5 + 5e-6], [0.0, 1.0]], 2)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]", "square"),
        ("[[1.2, -0.2], [0, 1]]", "negative"),
        ("[[0.5, 0.4], [0, 1]]", "sums to 0.9"),
        ("[[.nan, 0.5], [0, 1]]", "finite"),
    ],
)
def test_matrix_checks_in_the_config(value, message):
    with pytest.raises(UserError, match=message):
        tiny_config("noise.kind=transition", f"noise.matrix={value}")


def test_matrix_needs_transition_and_transition_needs_a_matrix():
    with pytest.raises(UserError, match="needs noise.matrix"):
        tiny_config("noise.kind=transition")
    with pytest.raises(UserError, match="used only by noise.kind=transition"):
        tiny_config("noise.matrix=[[1, 0], [0, 1]]")


def test_matrix_files(tmp_path):
    npy, yml = tmp_path / "t.npy", tmp_path / "t.yaml"
    np.save(npy, np.array(T3))
    yml.write_text("matrix:\n" + "".join(f"  - {row}\n" for row in T3))
    inline = tiny_config("noise.kind=transition", f"noise.matrix={T3}")
    from_npy = tiny_config("noise.kind=transition", f"noise.matrix={npy}")
    from_yaml = tiny_config("noise.kind=transition", f"noise.matrix={yml}")
    assert from_npy.noise.matrix == from_yaml.noise.matrix == T3
    assert from_npy.noise.matrix_file == str(npy) and len(from_npy.noise.matrix_sha256 or "") == 64
    # the values are the setting: same matrix, same run id, wherever it came from
    assert inline.run_id() == from_npy.run_id() == from_yaml.run_id()
    np.save(npy, np.array([[0.6, 0.3, 0.1], T3[1], T3[2]]))
    assert tiny_config("noise.kind=transition", f"noise.matrix={npy}").run_id() != inline.run_id()
    # the resolved config (config.yaml) validates again without the file
    npy.unlink()
    again = validate_config(from_npy.resolved())
    assert again.noise.matrix == T3 and again.noise.matrix_file == str(npy) and again.run_id() == inline.run_id()


def test_matrix_file_refusals(tmp_path):
    pickled = tmp_path / "p.npy"
    np.save(pickled, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="pickled arrays are refused"):
        tiny_config("noise.kind=transition", f"noise.matrix={pickled}")
    with pytest.raises(UserError, match="cannot read the matrix file"):
        tiny_config("noise.kind=transition", f"noise.matrix={tmp_path / 'missing.npy'}")
    txt = tmp_path / "t.txt"
    txt.write_text("1 0\n0 1\n")
    with pytest.raises(UserError, match=r"\.npy or \.yaml"):
        tiny_config("noise.kind=transition", f"noise.matrix={txt}")
    vec = tmp_path / "v.npy"
    np.save(vec, np.array([0.5, 0.5]))
    with pytest.raises(UserError, match="2-D numeric"):
        tiny_config("noise.kind=transition", f"noise.matrix={vec}")


def test_transition_sampling_follows_the_matrix():
    n, k = 60_000, 3
    y = _labels(n, k)
    out = _transition(y, T3, seed=4)
    conf = torch.tensor(noise_summary(y, out.noisy, k)["confusion"], dtype=torch.float64)
    expected = conf.sum(1, keepdim=True) * torch.tensor(T3, dtype=torch.float64)
    # Pearson chi-square over the cells with non-zero probability (zero cells must stay empty)
    assert conf[expected == 0].sum() == 0
    cells = expected > 0
    chi2 = (((conf - expected) ** 2)[cells] / expected[cells]).sum().item()
    dof = int(cells.sum()) - k
    assert chi2 < dof + 6 * math.sqrt(2 * dof)  # ~6 sigma of chi2(dof)
    again = _transition(y, T3, seed=4)
    assert torch.equal(out.noisy, again.noisy)
    assert not torch.equal(out.noisy, _transition(y, T3, seed=5).noisy)


def test_identity_matrix_changes_nothing():
    y = _labels(500, 4)
    assert _transition(y, np.eye(4).tolist()).num_flipped == 0


# ------------------------------------------------------------------ instance-dependent noise


def _features(n: int, d: int, seed: int = 1) -> FeatureSource:
    return FeatureSource.of_tensor(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def test_truncated_normal_stays_in_the_unit_interval_and_has_the_right_mean():
    q = truncated_normal(200_000, 0.3, 0.1, torch.Generator().manual_seed(0))
    assert float(q.min()) >= 0 and float(q.max()) <= 1
    assert abs(float(q.mean()) - 0.3) < 0.002  # truncation at 0 and 1 is 3 and 7 sigma away
    low = truncated_normal(200_000, 0.05, 0.1, torch.Generator().manual_seed(0))
    # scipy.stats.truncnorm(-0.5, 9.5, 0.05, 0.1).mean() = 0.1009...
    assert abs(float(low.mean()) - 0.1009) < 0.002


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_instance_noise_rate_and_determinism(rate):
    n, k, d = 4000, 10, 64
    y, feats = _labels(n, k), _features(n, d)
    out = apply_label_noise(y, kind="instance", rate=rate, num_classes=k, seed=3, features=feats)
    assert abs(out.realized_rate - rate) < 0.03
    again = apply_label_noise(y, kind="instance", rate=rate, num_classes=k, seed=3, features=feats)
    assert torch.equal(out.noisy, again.noisy)
    other = apply_label_noise(y, kind="instance", rate=rate, num_classes=k, seed=4, features=feats)
    assert not torch.equal(out.noisy, other.noisy)


def test_instance_noise_depends_on_the_input():
    n, k, d = 3000, 5, 32
    y = _labels(n, k)
    a = apply_label_noise(y, kind="instance", rate=0.4, num_classes=k, seed=0, features=_features(n, d, seed=1))
    b = apply_label_noise(y, kind="instance", rate=0.4, num_classes=k, seed=0, features=_features(n, d, seed=2))
    # same flip rates and uniforms (same seed), so the same samples flip; the inputs pick the class
    assert torch.equal(a.flipped, b.flipped)
    assert not torch.equal(a.noisy, b.noisy)
    # identical inputs of one class flip (almost) all to one class: the projection decides
    same = FeatureSource.of_tensor(torch.ones(n, 256))
    c = apply_label_noise(torch.zeros(n, dtype=torch.long), kind="instance", rate=0.4, num_classes=k, seed=0, features=same)
    assert torch.bincount(c.noisy[c.flipped]).max() > 0.95 * c.num_flipped


def test_instance_noise_needs_features_and_rate_zero_is_clean():
    y = _labels(100, 10)
    with pytest.raises(UserError, match="needs the training inputs"):
        apply_label_noise(y, kind="instance", rate=0.2, num_classes=10, seed=0)
    assert apply_label_noise(y, kind="instance", rate=0.0, num_classes=10, seed=0).num_flipped == 0


# ------------------------------------------------------------------ the registry and noise.json


def test_kinds_are_a_registry():
    assert {"symmetric", "transition", "instance"} <= set(NOISE_MODELS.names())
    assert tiny_config("noise.kind= PairFlip").noise.kind == "pairflip"
    with NOISE_MODELS.snapshot():
        NOISE_MODELS.register("all_to_zero", lambda req: torch.zeros_like(req.clean))
        cfg = tiny_config("noise.kind=all_to_zero")
        assert cfg.noise.kind == "all_to_zero"
        out = apply_label_noise(torch.tensor([0, 1, 2]), kind="all_to_zero", rate=0.1, num_classes=3, seed=0)
        assert out.noisy.tolist() == [0, 0, 0] and out.flipped.tolist() == [1, 2]
    with pytest.raises(UserError, match="noise.kind"):
        tiny_config("noise.kind=all_to_zero")


def test_default_run_ids_unchanged():
    # kind became a registry name and the new fields default to None: ids of old configs stay
    assert tiny_config().run_id() == tiny_config("noise.instance_std=0.1", "noise.matrix=null").run_id()


def test_noise_summary():
    s = noise_summary(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 0, 2]), 4)
    assert s["n"] == 5 and s["num_flipped"] == 2 and s["realized_rate"] == 0.4
    assert s["confusion"] == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert s["class_counts"] == [2, 2, 1, 0] and s["class_flip_rates"] == [0.5, 0.5, 0.0, None]


def test_noise_json_symmetric(tmp_path, capsys):
    cfg = tiny_config("prune.rounds=0", "noise.rate=0.29")
    run_dir = imp.run(cfg, tmp_path)
    info = rundir.read_noise(run_dir)
    assert info is not None and info["kind"] == "symmetric" and info["rate"] == 0.29
    n = info["n"]
    assert info["num_flipped"] == 29 * n // 100  # ⌊εN⌋ exactly and info["realized_rate"] == info["num_flipped"] / n
    conf = torch.tensor(info["confusion"])
    assert int(conf.sum()) == n and int(conf.sum() - conf.trace()) == info["num_flipped"]
    labels = store.load_tensors(run_dir / "labels.safetensors")
    assert info["num_flipped"] == labels["flipped"].numel()
    # dsd2 show prints the realised rate; the report shows the confusion table (MNIST-1D: 10 classes)
    assert main(["show", str(run_dir)]) == 0
    assert f"realised rate {100 * info['realized_rate']:.2f}%" in capsys.readouterr().out.replace("\n", " ")
    page = write_report([run_dir], tmp_path / "report").read_text()
    assert "realised rate" in page and 'class="confusion"' in page


@pytest.mark.parametrize("kind", ["transition", "instance"])
def test_tiny_imp_run_with_each_new_kind(kind, tmp_path):
    extra = ["noise.kind=instance", "noise.rate=0.3"]
    if kind == "transition":
        k = 10  # MNIST-1D's classes
        m = (0.7 * np.eye(k) + 0.3 * np.roll(np.eye(k), 1, axis=1)).tolist()
        extra = ["noise.kind=transition", f"noise.matrix={m}"]
    run_dir = imp.run(tiny_config(*extra), tmp_path)
    rows = rundir.read_rounds(run_dir)
    assert len(rows) == 3
    info = rundir.read_noise(run_dir)
    assert info is not None and info["kind"] == kind
    assert 0.2 < info["realized_rate"] < 0.4
    if kind == "transition":
        conf = np.array(info["confusion"])
        off = conf - np.diag(np.diag(conf))
        assert off.sum() == off[np.arange(10), (np.arange(10) + 1) % 10].sum()  # only c -> c+1
        assert info["matrix"] == m
    assert rundir.read_config(run_dir).noise.kind == kind


# ------------------------------------------------------------------ soft labels


def _soft_file(tmp_path, cfg, *, flip_every: int = 10) -> tuple:
    """An N×K .npy of class probabilities for MNIST-1D's full training set: 0.8 on the clean class,
    except every ``flip_every``-th sample, whose mass 0.6 sits on the next class."""
    data = imp.build_data(cfg)
    n = data.train_idx.numel() + data.val_idx.numel()
    clean = torch.empty(n, dtype=torch.long)
    clean[data.train_idx], clean[data.val_idx] = data.train_y, data.val_y
    k = data.num_classes
    probs = torch.full((n, k), 0.2 / (k - 1), dtype=torch.float64)
    probs[torch.arange(n), clean] = 0.8
    moved = torch.arange(0, n, flip_every)
    probs[moved] = 0.4 / (k - 1)
    probs[moved, clean[moved]] = 0.0
    probs[moved, (clean[moved] + 1) % k] = 0.6
    probs = probs / probs.sum(1, keepdim=True)
    path = tmp_path / "soft.npy"
    np.save(path, probs.numpy().astype(np.float32))
    return path, probs, data


def test_soft_targets_objective():
    from dsd2.train import SoftTargets, cross_entropy

    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = torch.nn.functional.one_hot(y, 4).float()
    idx = torch.arange(6)
    assert torch.allclose(SoftTargets(one_hot)(logits, y, logits, idx), cross_entropy(logits, y, logits))
    t = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), 1)
    expected = -(t * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(SoftTargets(t)(logits, y, logits, idx), expected)


def test_soft_label_checks(tmp_path):
    from dsd2.data.human_labels import soft_labels

    good = np.full((5, 3), 1 / 3, dtype=np.float32)
    cases = {
        "shape": (np.full((5, 2), 0.5), "must be 5 x 3"),
        "sum": (np.full((5, 3), 0.3), "sums to 0.9"),
        "neg": (np.array([[1.5, -0.5, 0.0]] * 5), "negative, NaN"),
        "nan": (np.array([[np.nan, 0.5, 0.5]] * 5), "negative, NaN"),
    }
    for name, (arr, message) in cases.items():
        np.save(tmp_path / f"{name}.npy", arr)
        with pytest.raises(UserError, match=message):
            soft_labels(tmp_path / f"{name}.npy", None, expected_len=5, num_classes=3)
    np.save(tmp_path / "good.npy", good)
    out = soft_labels(tmp_path / "good.npy", None, expected_len=5, num_classes=3)
    assert out.dtype == torch.float32 and torch.allclose(out.sum(1), torch.ones(5))
    with pytest.raises(UserError, match="needs dataset.label_file"):
        tiny_config("dataset.soft_labels=true", "noise.kind=none")


def test_tiny_imp_run_with_soft_labels(tmp_path):
    base = tiny_config("noise.kind=none")
    path, probs, data = _soft_file(tmp_path, base)
    cfg = tiny_config("noise.kind=none", f"dataset.label_file={path}", "dataset.soft_labels=true")
    assert cfg.run_id() != tiny_config("noise.kind=none", f"dataset.label_file={path}").run_id()
    run_dir = imp.run(cfg, tmp_path / "runs")
    rows = rundir.read_rounds(run_dir)
    assert len(rows) == 3
    # trained on the soft targets: cross-entropy never falls below the targets' own entropy
    t = probs[data.train_idx]
    entropy = float(-(t * t.clamp_min(1e-12).log()).sum(1).mean())
    assert all(r["train_loss"] >= entropy - 1e-3 for r in rows)
    labels = store.load_tensors(run_dir / "labels.safetensors")
    assert torch.allclose(labels["soft"], probs[data.train_idx].float())
    moved = (data.train_idx % 10 == 0).nonzero().flatten()
    assert torch.equal(labels["flipped"], moved)  # the arg-max moved exactly where the mass moved
    info = rundir.read_noise(run_dir)
    assert info is not None and info["kind"] == "soft" and info["num_flipped"] == moved.numel()
    assert info["mean_clean_probability"] == pytest.approx(float(probs[data.train_idx, data.train_y].mean()), abs=1e-5)
    with pytest.raises(UserError, match="not combined with distillation"):
        tiny_config("noise.kind=none", f"dataset.label_file={path}", "dataset.soft_labels=true", f"distill.teacher={run_dir}")
