import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from dsd2.prune import (
    apply_masks,
    count_alive,
    full_masks,
    global_magnitude_masks,
    layerwise_magnitude_masks,
    next_masks,
    random_masks,
    sparsity,
)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 20), nn.ReLU(), nn.Linear(20, 5))


def _weights(net):
    return {f"{i}.weight": m.weight for i, m in enumerate(net) if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_global_masks_equal_torch_prune_over_rounds():
    """Our masks equal torch.nn.utils.prune.global_unstructured (an independent implementation) for 6 rounds."""
    ours_net, ref_net = _net(), _net()
    ours_w = _weights(ours_net)
    masks = full_masks(ours_w)
    ref_params = [(m, "weight") for m in ref_net if isinstance(m, (nn.Conv2d, nn.Linear))]
    for _ in range(6):
        masks = global_magnitude_masks(ours_w, masks, 0.2)
        apply_masks(ours_w, masks)
        torch_prune.global_unstructured(ref_params, pruning_method=torch_prune.L1Unstructured, amount=0.2)
        ref_masks = [m.weight_mask.bool() for m, _ in ref_params]
        for ours, ref in zip(masks.values(), ref_masks):
            assert torch.equal(ours, ref)


def test_sparsity_follows_one_minus_point8_power():
    net = _net()
    w = _weights(net)
    masks = full_masks(w)
    total = sum(x.numel() for x in w.values())
    for i in range(1, 15):
        masks = global_magnitude_masks(w, masks, 0.2)
        apply_masks(w, masks)
        assert abs(sparsity(masks) - (1 - 0.8**i)) <= i / total + 1e-12
        # pruned stays pruned: masks are nested
    assert count_alive(masks) == pytest.approx(total * 0.8**14, abs=15)


def test_masks_are_nested_and_only_alive_weights_removed():
    net = _net(1)
    w = _weights(net)
    m1 = global_magnitude_masks(w, full_masks(w), 0.5)
    # make a pruned weight huge: it must stay pruned, it is not "alive"
    with torch.no_grad():
        name = next(iter(w))
        flat = w[name].view(-1)
        dead = (~m1[name]).view(-1).nonzero()[0, 0]
        flat[dead] = 100.0
    m2 = global_magnitude_masks(w, m1, 0.5)
    for n in w:
        assert not (m2[n] & ~m1[n]).any()
    assert count_alive(m2) == count_alive(m1) - round(0.5 * count_alive(m1))


def test_global_removes_smallest_magnitudes_across_layers():
    w = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([-0.05, 4.0, -0.3])}
    m = global_magnitude_masks(w, full_masks(w), 3 / 7)
    assert m["a"].tolist() == [[False, True], [True, False]]
    assert m["b"].tolist() == [False, True, True]


def test_layerwise_prunes_each_layer_by_the_rate():
    net = _net(2)
    w = _weights(net)
    m = layerwise_magnitude_masks(w, full_masks(w), 0.25)
    for n, x in w.items():
        assert int(m[n].sum()) == x.numel() - round(0.25 * x.numel())
        kept_min = x.detach().abs()[m[n]].min()
        dropped_max = x.detach().abs()[~m[n]].max()
        assert kept_min >= dropped_max


def test_random_is_seeded_and_counts_exact():
    net = _net(3)
    w = _weights(net)
    a = random_masks(w, full_masks(w), 0.3, torch.Generator().manual_seed(5))
    b = random_masks(w, full_masks(w), 0.3, torch.Generator().manual_seed(5))
    c = random_masks(w, full_masks(w), 0.3, torch.Generator().manual_seed(6))
    total = sum(x.numel() for x in w.values())
    assert all(torch.equal(a[n], b[n]) for n in w)
    assert any(not torch.equal(a[n], c[n]) for n in w)
    assert count_alive(a) == total - round(0.3 * total)


def test_apply_masks_zeroes_in_place_and_next_masks_dispatch():
    net = _net(4)
    w = _weights(net)
    m = next_masks("global_magnitude", w, full_masks(w), 0.6)
    apply_masks(w, m)
    for n, x in w.items():
        assert (x[~m[n]] == 0).all()
    with pytest.raises(ValueError):
        next_masks("nope", w, m, 0.2)
    with pytest.raises(ValueError):
        global_magnitude_masks(w, m, 1.0)
    assert math.isclose(sparsity(full_masks(w)), 0.0)
