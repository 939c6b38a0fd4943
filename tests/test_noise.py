import math

import pytest
import torch

from dsd2.errors import UserError
from dsd2.noise import (
    CIFAR10_CLASS_MAP,
    NOISE_KINDS,
    NoisyLabels,
    apply_label_noise,
    default_class_map,
    noise_count,
)


def _labels(n: int = 1000, k: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (n,), generator=g)


def test_symmetric_exact_count_first_samples_and_all_differ():
    y = _labels(1000)
    for rate in (0.1, 0.2, 0.5, 0.37):
        out = apply_label_noise(y, kind="symmetric", rate=rate, num_classes=10, seed=3)
        m = math.floor(rate * 1000 + 1e-9)
        assert out.flipped.tolist() == list(range(m))  # exactly the first floor(rate*N), in index order
        assert (out.noisy[:m] != y[:m]).all()
        assert torch.equal(out.noisy[m:], y[m:])
        assert out.realized_rate == pytest.approx(m / 1000)
        assert out.noisy.dtype == torch.int64 and out.flipped.dtype == torch.int64
        assert int(out.noisy.min()) >= 0 and int(out.noisy.max()) < 10


def test_symmetric_draws_every_other_class_uniformly():
    y = torch.zeros(20000, dtype=torch.int64)
    out = apply_label_noise(y, kind="symmetric", rate=0.5, num_classes=5, seed=0)
    counts = torch.bincount(out.noisy[:10000], minlength=5)
    assert counts[0] == 0
    assert ((counts[1:].float() - 2500).abs() < 200).all()


def test_floor_count_is_exact_for_decimal_rates():
    assert 0.29 * 100 < 29  # the float product rounds down ...
    assert noise_count(0.29, 100) == 29  # ... but the count does not
    assert noise_count(0.5, 7) == 3
    y = _labels(100)
    assert apply_label_noise(y, kind="symmetric", rate=0.29, num_classes=10, seed=0).flipped.numel() == 29


def test_uniform_draws_from_all_classes_and_lists_only_changed():
    y = _labels(10000)
    out = apply_label_noise(y, kind="uniform", rate=0.5, num_classes=10, seed=1)
    m = 5000
    assert torch.equal(out.noisy[m:], y[m:])  # only the first floor(rate*N) are touched
    kept = int((out.noisy[:m] == y[:m]).sum())
    assert 350 < kept < 650  # about 1/K keep their label
    assert out.flipped.numel() == m - kept
    assert torch.equal(out.flipped, (out.noisy != y).nonzero().flatten())
    assert out.realized_rate == pytest.approx(0.5 * 9 / 10, abs=0.02)


def test_bernoulli_rate_and_changed_labels():
    y = _labels(20000)
    out = apply_label_noise(y, kind="bernoulli", rate=0.3, num_classes=10, seed=2)
    assert out.realized_rate == pytest.approx(0.3, abs=0.015)
    assert (out.noisy[out.flipped] != y[out.flipped]).all()
    assert out.flipped.max() > 15000  # spread over the whole set, not the first ones
    unchanged = torch.ones(20000, dtype=torch.bool)
    unchanged[out.flipped] = False
    assert torch.equal(out.noisy[unchanged], y[unchanged])


def test_asymmetric_touches_only_mapped_classes_with_right_targets_and_counts():
    y = _labels(5000)
    cmap = default_class_map("cifar10", 10)
    assert cmap == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3} == CIFAR10_CLASS_MAP
    rate = 0.4
    out = apply_label_noise(y, kind="asymmetric", rate=rate, num_classes=10, seed=0, class_map=cmap)
    src = y[out.flipped]
    assert set(src.tolist()) <= set(cmap)
    for c, target in cmap.items():
        n_c = int((y == c).sum())
        sel = out.flipped[src == c]
        assert sel.numel() == math.floor(rate * n_c)
        assert (out.noisy[sel] == target).all()
    # unmapped classes are untouched
    for c in set(range(10)) - set(cmap):
        assert torch.equal(out.noisy[y == c], y[y == c])
    # cat <-> dog swap is driven by the clean labels: some cats became dogs and some dogs cats
    assert int(((y == 3) & (out.noisy == 5)).sum()) > 0 and int(((y == 5) & (out.noisy == 3)).sum()) > 0
    # class_map=None with the dataset name gives the same map
    by_name = apply_label_noise(y, kind="asymmetric", rate=rate, num_classes=10, seed=0, dataset="cifar10")
    assert torch.equal(by_name.noisy, out.noisy)


def test_asymmetric_default_map_without_dataset_is_next_class():
    assert default_class_map("fashion_mnist", 4) == {0: 1, 1: 2, 2: 3, 3: 0}
    assert default_class_map("cifar100", 100)[99] == 0
    y = _labels(400, k=4)
    out = apply_label_noise(y, kind="asymmetric", rate=0.5, num_classes=4, seed=0)
    assert (out.noisy[out.flipped] == (y[out.flipped] + 1) % 4).all()


def test_pairflip_next_class_random_subset():
    y = _labels(1000)
    out = apply_label_noise(y, kind="pairflip", rate=0.2, num_classes=10, seed=4)
    assert out.flipped.numel() == 200
    assert (out.noisy[out.flipped] == (y[out.flipped] + 1) % 10).all()
    assert out.flipped.max() > 500  # random samples, not the first ones
    assert torch.equal(out.flipped, out.flipped.sort().values)


@pytest.mark.parametrize("kind", ["none", "symmetric", "uniform", "bernoulli", "asymmetric", "pairflip"])
def test_rate_zero_and_none_change_nothing(kind):
    y = _labels(100)
    out = apply_label_noise(y, kind=kind, rate=0.0, num_classes=10, seed=0)
    assert torch.equal(out.noisy, y) and out.flipped.numel() == 0 and out.realized_rate == 0.0
    if kind == "none":
        out = apply_label_noise(y, kind="none", rate=0.5, num_classes=10, seed=0)
        assert torch.equal(out.noisy, y) and out.flipped.numel() == 0


@pytest.mark.parametrize("kind", ["symmetric", "uniform", "bernoulli", "asymmetric", "pairflip"])
def test_deterministic_per_seed_and_seeds_differ(kind):
    y = _labels(2000)
    kw = dict(kind=kind, rate=0.3, num_classes=10)
    a = apply_label_noise(y, seed=7, **kw)
    b = apply_label_noise(y, seed=7, **kw)
    c = apply_label_noise(y, seed=8, **kw)
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.flipped, b.flipped)
    assert not torch.equal(a.noisy, c.noisy)


def test_global_rng_untouched_and_input_not_modified():
    y = _labels(500)
    y0 = y.clone()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    apply_label_noise(y, kind="bernoulli", rate=0.5, num_classes=10, seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)
    assert torch.equal(y, y0)


def test_accepts_int32_and_empty_labels():
    y = _labels(100).to(torch.int32)
    out = apply_label_noise(y, kind="symmetric", rate=0.1, num_classes=10, seed=0)
    assert out.noisy.dtype == torch.int64 and out.flipped.numel() == 10
    empty = apply_label_noise(torch.zeros(0, dtype=torch.int64), kind="symmetric", rate=0.5, num_classes=10, seed=0)
    assert empty.noisy.numel() == 0 and empty.realized_rate == 0.0


def test_noisy_labels_dataclass():
    nl = NoisyLabels(noisy=torch.tensor([1, 2, 3, 4]), flipped=torch.tensor([2]))
    assert nl.realized_rate == 0.25 and nl.num_flipped == 1


def test_validation_errors():
    y = _labels(100)
    ok = dict(kind="symmetric", rate=0.1, num_classes=10, seed=0)
    with pytest.raises(UserError, match="unknown noise kind 'gaussian'.*symmetric, uniform, bernoulli"):
        apply_label_noise(y, **{**ok, "kind": "gaussian"})
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match=r"rate must be in \[0, 1\)"):
            apply_label_noise(y, **{**ok, "rate": bad})
    with pytest.raises(UserError, match="must be a number"):
        apply_label_noise(y, **{**ok, "rate": "0.1"})
    with pytest.raises(UserError, match="num_classes must be an integer >= 2"):
        apply_label_noise(torch.zeros(5, dtype=torch.int64), **{**ok, "num_classes": 1})
    with pytest.raises(UserError, match=r"labels must lie in \[0, 10\), found \[0, 12\]"):
        apply_label_noise(torch.tensor([0, 12]), **ok)
    with pytest.raises(UserError, match=r"labels must lie in \[0, 10\)"):
        apply_label_noise(torch.tensor([-1, 3]), **ok)
    with pytest.raises(UserError, match="1-D tensor"):
        apply_label_noise(torch.zeros(2, 2, dtype=torch.int64), **ok)
    with pytest.raises(UserError, match="integer tensor"):
        apply_label_noise(torch.zeros(3), **ok)
    asym = {**ok, "kind": "asymmetric"}
    with pytest.raises(UserError, match=r"class_map entry 3 -> 10 is outside the classes \[0, 10\)"):
        apply_label_noise(y, **asym, class_map={3: 10})
    with pytest.raises(UserError, match="outside"):
        apply_label_noise(y, **asym, class_map={-1: 2})
    with pytest.raises(UserError, match="maps class 4 to itself"):
        apply_label_noise(y, **asym, class_map={4: 4})
    with pytest.raises(UserError, match="num_classes must be >= 2"):
        default_class_map("cifar10", 1)


def test_noise_kinds_constant():
    assert NOISE_KINDS == ("none", "symmetric", "uniform", "bernoulli", "asymmetric", "pairflip", "transition", "instance")
