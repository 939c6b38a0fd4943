import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsd2.entropy import (
    OnCounter,
    activation_entropy,
    binary_entropy,
    entropy_summary,
    layer_entropies,
    layer_neuron_counts,
)
from dsd2.errors import UserError

EPS = 1e-5
H_CLAMP = -(EPS * math.log2(EPS) + (1 - EPS) * math.log2(1 - EPS))


def H(p):
    p = min(max(p, EPS), 1 - EPS)
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def identity_relu(d):
    lin = nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d))
        lin.bias.zero_()
    return nn.Sequential(lin, nn.ReLU())


def no_function_mode_active():
    return torch._C._len_torch_function_stack() == 0


def all_hooks_empty(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- binary entropy ---------------------------------------------------------------------


def test_binary_entropy_exact_cases():
    p = torch.tensor([0.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    h = binary_entropy(p)
    assert h[2].item() == 1.0
    assert h[0].item() == pytest.approx(H_CLAMP, rel=1e-12)
    assert h[1].item() == pytest.approx(H_CLAMP, rel=1e-12)
    assert 0 < H_CLAMP < 2e-4
    assert h[3].item() == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))


def test_binary_entropy_without_clamp_is_zero_at_ends():
    h = binary_entropy(torch.tensor([0.0, 1.0], dtype=torch.float64), eps=0.0)
    assert h.tolist() == [0.0, 0.0]


# -- exact p_j on a controlled layer ------------------------------------------------------


def controlled_inputs():
    # 8 inputs, 4 neurons: always on, always off (zeros count as off), half on, quarter on.
    x = torch.zeros(8, 4)
    x[:, 0] = 1.0
    x[:, 1] = torch.tensor([-1.0, 0.0, -2.0, 0.0, -1.0, -1.0, 0.0, -3.0])
    x[:, 2] = torch.tensor([1.0, -1.0] * 4)
    x[:, 3] = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0])
    return x


def test_exact_probabilities_and_layer_entropy():
    model = identity_relu(4)
    x = controlled_inputs()
    with torch.no_grad(), OnCounter(model) as oc:
        model(x)
    assert list(oc.counts) == ["1"]
    assert oc.counts["1"].dtype == torch.int64
    assert oc.counts["1"].tolist() == [8, 0, 4, 2]
    assert oc.samples["1"] == 8
    assert oc.probabilities()["1"].tolist() == [1.0, 0.0, 0.5, 0.25]

    res = activation_entropy(model, x)
    expected = (H_CLAMP + H_CLAMP + 1.0 + H(0.25)) / 4
    assert res.per_layer["1"] == pytest.approx(expected, rel=1e-12)
    assert res.neurons["1"] == 4


def test_always_on_and_always_off_layers_give_clamp_value():
    model = identity_relu(3)
    on = torch.ones(10, 3)
    assert layer_entropies(model, on)["1"] == pytest.approx(H_CLAMP, rel=1e-12)
    assert layer_entropies(model, -on)["1"] == pytest.approx(H_CLAMP, rel=1e-12)
    half = torch.cat([on, -on])
    assert layer_entropies(model, half)["1"] == 1.0


# -- dataset-level estimator --------------------------------------------------------------


def test_many_batches_equal_concatenated_set():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
    x = torch.randn(50, 5)
    a = activation_entropy(model, x, batch_size=3)
    b = activation_entropy(model, x, batch_size=50)
    c = activation_entropy(model, [x[:20], (x[20:], None)])  # iterable of batches
    assert list(a.per_layer) == ["1", "3"]
    for k in a.per_layer:
        assert a.per_layer[k] == pytest.approx(b.per_layer[k], abs=1e-12)
        assert c.per_layer[k] == pytest.approx(b.per_layer[k], abs=1e-12)
    assert a.samples == OrderedDict([("1", 50), ("3", 50)])


def test_differs_from_mean_of_per_batch_entropies():
    model = identity_relu(1)
    x = torch.tensor([[1.0], [1.0], [1.0], [-1.0], [-1.0], [-1.0]])
    whole = layer_entropies(model, x, batch_size=3)["1"]
    assert whole == 1.0  # p = 1/2 over the set
    per_batch = [layer_entropies(model, x[i : i + 3])["1"] for i in (0, 3)]
    assert sum(per_batch) / 2 == pytest.approx(H_CLAMP)  # each batch is constant
    assert abs(whole - sum(per_batch) / 2) > 0.9


# -- layer discovery ----------------------------------------------------------------------


def test_conv_layer_counts_channel_h_w_neurons():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU())
    res = activation_entropy(model, torch.randn(7, 2, 5, 5), batch_size=2)
    assert res.neurons == OrderedDict([("1", 3 * 5 * 5), ("3", 4 * 3 * 3)])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = F.relu(self.fc(x))
        x = torch.relu(x - 0.1)
        return (x - 0.2).relu()


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.block = Block()
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem(x), inplace=True)
        x = self.block(x)
        x = self.act(x - 0.3)
        x = torch.relu_(x - 0.4)
        x = (x - 0.5).relu_()
        x = F.relu_(x - 0.6)
        return self.head(x)


def test_functional_relus_are_found_and_named():
    torch.manual_seed(1)
    model = Functional()
    x = torch.randn(9, 3)
    res = activation_entropy(model, x, batch_size=4)
    assert list(res.per_layer) == [
        ":relu",
        "block:relu",
        "block:relu#1",
        "block:relu#2",
        "act",
        ":relu#1",
        ":relu#2",
        ":relu#3",
    ]
    assert all(n == 9 for n in res.samples.values())  # nn.ReLU not counted twice
    assert all(n == 4 for n in res.neurons.values())
    # Same names on a second call.
    assert list(activation_entropy(model, x).per_layer) == list(res.per_layer)


def test_functional_counts_match_explicit_computation():
    torch.manual_seed(2)
    model = Functional()
    x = torch.randn(11, 3)
    with torch.no_grad(), OnCounter(model) as oc:
        model(x)
        h = F.relu(model.stem(x))
    assert oc.counts[":relu"].tolist() == (h > 0).sum(0).tolist()
    b1 = F.relu(model.block.fc(h))
    assert oc.counts["block:relu"].tolist() == (b1 > 0).sum(0).tolist()


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 6)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))


def test_reused_relu_module_gets_one_layer_per_call():
    res = activation_entropy(Reuse(), torch.randn(10, 3), batch_size=3)
    assert list(res.per_layer) == ["act", "act#1"]
    assert res.neurons == OrderedDict([("act", 5), ("act#1", 6)])
    assert res.samples == OrderedDict([("act", 10), ("act#1", 10)])


# -- side effects -------------------------------------------------------------------------


class ModeProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return F.relu(self.fc(x))


def test_hooks_and_function_mode_removed_and_modes_restored():
    probe = ModeProbe()
    model = nn.Sequential(probe, nn.Dropout(0.5), nn.ReLU())
    model.train()
    model[1].eval()  # mixed modes must be restored exactly
    activation_entropy(model, torch.randn(5, 2), batch_size=2)
    assert probe.seen and all(s == (False, False) for s in probe.seen)
    assert model.training and probe.training and not model[1].training
    assert all_hooks_empty(model)
    assert no_function_mode_active()

    model.eval()
    activation_entropy(model, torch.randn(5, 2))
    assert not model.training and not probe.training


class Boom(nn.Module):
    def forward(self, x):
        x = F.relu(x)
        raise RuntimeError("boom")


def test_cleanup_on_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), Boom())
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        activation_entropy(model, torch.randn(4, 2))
    assert all_hooks_empty(model)
    assert no_function_mode_active()
    assert model.training


def test_transform_and_device():
    model = identity_relu(2)
    x = torch.tensor([[0, 255], [255, 255], [0, 0], [255, 0]], dtype=torch.uint8)
    res = activation_entropy(model, x, transform=lambda b: b.float() / 255 - 0.5, device="cpu")
    assert res.per_layer["1"] == 1.0


def test_weighted_mean_by_hand():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3), nn.ReLU())
    x = torch.randn(40, 1, 4, 4)
    res = activation_entropy(model, x, batch_size=7)
    with torch.no_grad():
        a1 = F.relu(model[0](x)).flatten(1)
        a2 = F.relu(model[3](F.relu(model[0](x)).flatten(1)))
    hs = []
    for a in (a1, a2):
        p = (a > 0).double().mean(0)
        hs.append([H(float(v)) for v in p])
    l1, l2 = sum(hs[0]) / len(hs[0]), sum(hs[1]) / len(hs[1])
    assert res.per_layer["1"] == pytest.approx(l1, rel=1e-9)
    assert res.per_layer["4"] == pytest.approx(l2, rel=1e-9)
    assert res.neurons == OrderedDict([("1", 32), ("4", 3)])
    all_h = hs[0] + hs[1]
    assert res.weighted_mean == pytest.approx(sum(all_h) / len(all_h), rel=1e-9)
    assert res.layer_mean == pytest.approx((l1 + l2) / 2, rel=1e-9)
    w, m = entropy_summary(res.per_layer, res.neurons)
    assert (w, m) == (res.weighted_mean, res.layer_mean)


def test_layer_neuron_counts_from_counter():
    model = identity_relu(3)
    with torch.no_grad(), OnCounter(model) as oc:
        assert not no_function_mode_active() and not all_hooks_empty(model)
        model(torch.randn(2, 3))
    assert layer_neuron_counts(oc) == OrderedDict([("1", 3)])
    assert all_hooks_empty(model)


def test_no_relu_is_a_user_error():
    with pytest.raises(UserError):
        activation_entropy(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), torch.randn(3, 2))


def test_shape_change_is_a_user_error():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    with pytest.raises(UserError):
        activation_entropy(model, [torch.randn(2, 1, 3, 3), torch.randn(2, 1, 4, 4)])
