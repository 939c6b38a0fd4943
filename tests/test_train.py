"""The training loop: schedule, masks kept at zero, NaN detection naming epoch and step, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsd2.prune import full_masks, global_magnitude_masks
from dsd2.train import Batches, Schedule, TrainingDiverged, accuracy, predict, train


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return Batches(x=x, y=y, mean=(0.0,), std=(1.0,))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_multistep_and_cosine_schedules():
    s = Schedule(epochs=160, lr=0.1)
    assert [s.lr_at(e) for e in (0, 79, 80, 119, 120, 159)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    c = Schedule(epochs=10, lr=1.0, kind="cosine")
    assert c.lr_at(0) == 1.0 and c.lr_at(5) == pytest.approx(0.5) and c.lr_at(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert Schedule(epochs=10, lr=0.3, kind="constant").lr_at(7) == 0.3


def test_training_learns_and_keeps_pruned_weights_at_zero():
    model, data = _model(), _data()
    weights = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    masks = global_magnitude_masks(weights, full_masks(weights), 0.5)
    with torch.no_grad():
        for k, w in weights.items():
            w.mul_(masks[k])
    logs = train(
        model, data, Schedule(epochs=15, lr=0.05), batch_size=16, generator=torch.Generator().manual_seed(1), masks=masks, weights=weights
    )
    assert logs[-1].loss < logs[0].loss
    for k, w in weights.items():
        assert (w[~masks[k]] == 0).all()
    assert accuracy(predict(model, data, batch_size=10), data.y) > 0.8


def test_same_seed_same_weights():
    a, b = _model(), _model()
    for m in (a, b):
        train(m, _data(), Schedule(epochs=3, lr=0.05), batch_size=16, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_nan_loss_names_epoch_and_step():
    calls = {"n": 0}

    def poisoned(logits, targets, inputs, index):
        calls["n"] += 1
        loss = F.cross_entropy(logits, targets)
        return loss * float("nan") if calls["n"] == 6 else loss  # 4 steps per epoch: epoch 2, step 2

    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 2 of 4"):
        train(_model(), _data(), Schedule(epochs=3, lr=0.05), batch_size=16, generator=torch.Generator().manual_seed(0), objective=poisoned)


def test_accuracy_is_an_exact_fraction():
    assert accuracy(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])) == 2 / 3
    assert accuracy(torch.tensor([1, 0]), torch.tensor([1, 1]), torch.tensor([], dtype=torch.long)) is None
