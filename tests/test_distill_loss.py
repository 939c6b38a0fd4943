import math

import pytest
import torch

from dsd2.distill import kd_loss
from dsd2.errors import UserError


def _by_hand(s, t, y, alpha, T):
    """Hinton KD written out with explicit exp/log sums (float64, no F.kl_div)."""
    s = s.double()
    t = t.double()
    B, K = s.shape
    kl_total = 0.0
    ce_total = 0.0
    for i in range(B):
        zs = [float(v) / T for v in s[i]]
        zt = [float(v) / T for v in t[i]]
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        for k in range(K):
            log_ps = zs[k] - ls
            log_pt = zt[k] - lt
            kl_total += math.exp(log_pt) * (log_pt - log_ps)
        raw = [float(v) for v in s[i]]
        lraw = math.log(sum(math.exp(v) for v in raw))
        ce_total += lraw - raw[int(y[i])]
    return alpha * T * T * kl_total / B + (1 - alpha) * ce_total / B


@pytest.mark.parametrize("alpha,T", [(0.8, 10.0), (0.5, 2.0), (0.0, 4.0), (1.0, 1.0), (0.3, 0.5)])
def test_matches_hand_computation(alpha, T):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g) * 3
    t = torch.randn(5, 7, generator=g) * 3
    y = torch.randint(0, 7, (5,), generator=g)
    got = kd_loss(s, t, y, alpha=alpha, temperature=T)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_by_hand(s, t, y, alpha, T), rel=1e-5, abs=1e-6)


def test_defaults_are_paper_values():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0])
    assert kd_loss(s, t, y).item() == pytest.approx(_by_hand(s, t, y, 0.8, 10.0), rel=1e-5)


def test_alpha_zero_is_ce_and_alpha_one_is_pure_kd():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert kd_loss(s, t, y, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    # alpha = 1: labels do not matter, and identical logits give zero loss.
    a = kd_loss(s, t, y, alpha=1.0)
    b = kd_loss(s, t, (y + 1) % 4, alpha=1.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-7)
    assert kd_loss(s, s.clone(), y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_only_to_student():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=g, requires_grad=True)
    t = torch.randn(3, 5, generator=g, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_float32_under_autocast_and_half_inputs():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 6, generator=g)
    t = torch.randn(4, 6, generator=g)
    y = torch.randint(0, 6, (4,), generator=g)
    ref = kd_loss(s, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = kd_loss(s.bfloat16(), t.bfloat16(), y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=5e-2)


@pytest.mark.parametrize("kw", [{"alpha": -0.1}, {"alpha": 1.5}, {"temperature": 0.0}, {"temperature": -1.0}])
def test_validation(kw):
    s = torch.zeros(2, 3)
    with pytest.raises(UserError):
        kd_loss(s, s, torch.tensor([0, 1]), **kw)


def test_shape_mismatch():
    with pytest.raises(UserError):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))
