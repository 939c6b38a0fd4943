import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from dsd2.errors import UserError
from dsd2.flops import (
    StepFlops,
    flop_counter,
    paper_run_flops,
    paper_training_flops,
    paper_units,
    step_flops,
    to_pflops,
    training_flops,
)


def test_linear_forward_and_backward_exact():
    B, i, o = 4, 6, 5
    s = step_flops(nn.Linear(i, o), torch.randn(B, i))
    assert s.dense_fwd == 2 * B * i * o
    # Input needs no gradient: only grad-weight (one forward-equivalent).
    assert s.dense_bwd == 2 * B * i * o
    assert s.teacher_fwd == 0 and s.batch_size == B
    assert s.fwd_per_example == 2 * i * o


def test_two_linear_layers_backward_is_twice_forward_after_the_first():
    B, a, b, c = 3, 4, 7, 2
    model = nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c))
    s = step_flops(model, torch.randn(B, a))
    assert s.dense_fwd == 2 * B * (a * b + b * c)
    assert s.dense_bwd == 2 * B * a * b + 2 * (2 * B * b * c)
    assert s.layers["0"].fwd == 2 * B * a * b and s.layers["0"].bwd == 2 * B * a * b
    assert s.layers["2"].fwd == 2 * B * b * c and s.layers["2"].bwd == 4 * B * b * c
    assert s.dense_step == s.dense_fwd + s.dense_bwd
    assert s.sparse_fwd == s.dense_fwd and s.sparse_bwd == s.dense_bwd


def test_conv_forward_exact():
    B, cin, cout, k, H = 2, 3, 4, 3, 9
    conv = nn.Conv2d(cin, cout, k, stride=2, padding=1)
    s = step_flops(conv, torch.randn(B, cin, H, H))
    hout = (H + 2 - k) // 2 + 1
    assert s.dense_fwd == 2 * B * cout * hout * hout * cin * k * k


def conv_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, groups=4, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1, stride=2),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 10),
    )


def test_layer_attribution_matches_flop_counter_breakdown():
    torch.manual_seed(0)
    model = conv_net()
    x = torch.randn(3, 3, 8, 8)
    s = step_flops(model, x)
    with flop_counter() as ours:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as default:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    assert s.dense_fwd + s.dense_bwd == ours.get_total_flops()
    ours_c, default_c = ours.get_flop_counts(), default.get_flop_counts()
    for name, lf in s.layers.items():
        key = f"Sequential.{name}"
        assert lf.fwd + lf.bwd == sum(ours_c[key].values()), name
        if name != "5":  # ungrouped layers: identical to FlopCounterMode's own formulas
            assert ours_c[key] == default_c[key], name
    # Grouped conv (groups=4): its input needs grad, so backward = 2 forwards; the stock
    # formula counts grad-weight groups-fold (1 + 4 forwards).
    g = s.layers["5"]
    assert g.bwd == 2 * g.fwd
    assert sum(default_c["Sequential.5"].values()) == g.fwd + g.fwd + 4 * g.fwd
    assert sum(lf.fwd for lf in s.layers.values()) == s.dense_fwd
    assert sum(lf.bwd for lf in s.layers.values()) == s.dense_bwd


def test_masks_scale_only_their_layer():
    B, a, b, c = 5, 8, 6, 3
    model = nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c))
    mask = torch.zeros(b, a)
    mask.view(-1)[: b * a // 2] = 1
    x = torch.randn(B, a)
    for key in ("0", "0.weight"):
        s = step_flops(model, x, masks={key: mask})
        l0, l2 = s.layers["0"], s.layers["2"]
        assert l0.density == 0.5 and l2.density == 1.0
        assert s.sparse_fwd == 0.5 * l0.fwd + l2.fwd
        assert s.sparse_bwd == 0.5 * l0.bwd + l2.bwd
        assert s.dense_fwd == l0.fwd + l2.fwd  # dense counts unchanged


def test_torch_prune_weight_mask_is_used_by_default():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.75)
    s = step_flops(model, torch.randn(2, 10))
    assert s.layers["0"].density == pytest.approx(0.25)
    assert s.sparse_fwd == pytest.approx(0.25 * s.layers["0"].fwd + s.layers["2"].fwd)


def test_non_prunable_flops_are_not_scaled():
    class WithMatmul(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.extra = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return self.fc(x) @ self.extra

    B = 3
    s = step_flops(WithMatmul(), torch.randn(B, 4), masks={"fc": torch.zeros(4, 4)})
    mm = 2 * B * 4 * 4
    assert s.dense_fwd == 2 * mm
    assert s.sparse_fwd == mm  # the Linear at density 0, the matmul untouched


def test_teacher_forward_adds_exactly_its_forward():
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    teacher = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(7, 6)
    alone = step_flops(student, x)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        teacher(x)
    s = step_flops(student, x, teacher=teacher)
    assert s.teacher_fwd == fc.get_total_flops() == 2 * 7 * (6 * 32 + 32 * 3)
    assert s.dense_step == alone.dense_step + s.teacher_fwd
    assert s.teacher_fwd_sparse == s.teacher_fwd
    half = torch.ones(32, 6)
    half[:16] = 0
    s2 = step_flops(student, x, teacher=teacher, teacher_masks={"0.weight": half})
    assert s2.teacher_fwd_sparse == 0.5 * 2 * 7 * 6 * 32 + 2 * 7 * 32 * 3
    assert teacher.training  # mode restored
    assert all(p.grad is None for p in teacher.parameters())


def test_reused_layer_counted_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    s = step_flops(Twice(), torch.randn(2, 5))
    one = 2 * 2 * 5 * 5
    assert s.layers["fc"].fwd == 2 * one == s.dense_fwd
    assert s.layers["fc"].bwd == one + 2 * one == s.dense_bwd


def test_model_state_is_unchanged():
    torch.manual_seed(2)
    model = conv_net()
    model.eval()
    model[1].train()  # mixed modes
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    grads = [p.grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, teacher = torch.randn(4, 3, 8, 8), conv_net()
    rng = torch.get_rng_state()
    step_flops(model, x, teacher=teacher)
    assert not model.training and model[1].training and not model[0].training
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(g, torch.full_like(g, 3.0)) for g in grads)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # incl. BatchNorm running stats
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_masks_and_batches():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(UserError):
        step_flops(model, torch.randn(2, 3), masks={"nope.weight": torch.ones(3, 3)})
    with pytest.raises(UserError):
        step_flops(model, torch.randn(2, 3), masks={"0": torch.ones(2, 3)})
    with pytest.raises(UserError):
        step_flops(model, torch.randn(0, 3))


def test_training_totals_and_units():
    s = StepFlops(batch_size=4, dense_fwd=400, dense_bwd=800, teacher_fwd=200, sparse_fwd=100.0, sparse_bwd=200.0, teacher_fwd_sparse=50.0)
    assert s.dense_per_example == 350 and s.sparse_per_example == 87.5
    dense, sparse = training_flops(s, n_examples=10, epochs=3)
    assert dense == 350 * 30 and sparse == 87.5 * 30
    assert to_pflops(2.5e15) == 2.5
    assert paper_units(dense * 12, dense) == 12
    with pytest.raises(UserError):
        paper_units(1.0, 0.0)
    with pytest.raises(UserError):
        training_flops(s, n_examples=-1, epochs=1)


def test_paper_convention_vgg_like_unit():
    # VGG-like(5,5): 67.2 M MACs per image forward = 134.4 M FLOPs with FlopCounterMode.
    s = StepFlops(
        batch_size=1,
        dense_fwd=int(2 * 67.2e6),
        dense_bwd=int(4 * 67.2e6),
        teacher_fwd=0,
        sparse_fwd=0.0,
        sparse_bwd=0.0,
        teacher_fwd_sparse=0.0,
    )
    one_run = paper_run_flops(s, n_examples=50_000, epochs=160)
    assert to_pflops(one_run) == pytest.approx(1.6128)
    # Our own convention (2 FLOPs per MAC, fwd + 2 bwd) is exactly twice that; units agree.
    dense, _ = training_flops(s, n_examples=50_000, epochs=160)
    assert dense == pytest.approx(2 * one_run)
    assert paper_units(12 * dense, dense) == paper_units(12 * one_run, one_run) == 12


def test_paper_training_flops_adds_the_teacher_forward_once_per_pass():
    # student 10 MACs/example forward, teacher 30 MACs/example forward
    s = StepFlops(
        batch_size=2,
        dense_fwd=2 * 2 * 10,
        dense_bwd=4 * 2 * 10,
        teacher_fwd=2 * 2 * 30,
        sparse_fwd=0.0,
        sparse_bwd=0.0,
        teacher_fwd_sparse=0.0,
    )
    assert paper_training_flops(s, n_examples=100, epochs=5) == 3 * 10 * 100 * 5 + 30 * 100 * 5
    # cached teacher logits: one teacher pass in the round that computed them, none after
    assert paper_training_flops(s, n_examples=100, epochs=5, teacher_passes=1) == 3 * 10 * 100 * 5 + 30 * 100
    assert paper_training_flops(s, n_examples=100, epochs=5, teacher_passes=0) == 3 * 10 * 100 * 5


def test_rounds_record_the_paper_convention(tmp_path):
    from dsd2 import imp, store
    from dsd2.config import load_config

    cfg = load_config("tiny_mnist1d", ["prune.rounds=1", "entropy.enabled=false", "train.epochs=2"])
    rows = store.read_csv(imp.run(cfg, tmp_path) / "rounds.csv")
    macs = 40 * 64 + 64 * 64 + 64 * 10  # MLP 40-64-64-10 forward MACs per example
    n = 4000 - 500  # MNIST-1D train split minus validation
    assert rows[0]["round_pflops_paper"] == pytest.approx(3 * macs * n * 2 / 1e15)
    assert rows[1]["train_pflops_paper"] == pytest.approx(2 * rows[0]["round_pflops_paper"])
    # measured: 2 FLOPs per MAC, the first layer computes no grad-input
    assert rows[0]["round_pflops_dense"] < 2 * rows[0]["round_pflops_paper"]


class _Attention(nn.Module):
    """nn.MultiheadAttention as torchvision's ViT uses it (batch_first, no weights returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_attention_is_counted_on_the_cpu_and_in_evaluation_mode_too():
    """FlopCounterMode has no formula for CPU's fused attention kernel nor for the fused eval
    kernel of nn.MultiheadAttention: the first gets one (as the CUDA kernels have), the second is
    avoided in eval-mode counts (MACs per example, a teacher's forward), so all agree."""
    from dsd2.models import macs_per_example

    model = _Attention()
    x = torch.randn(2, 5, 8)
    step = step_flops(model, x, teacher=model)
    # per example: q, k, v and output projections 4·5·8·8, scores and weighted sum 2·5·5·8, head 8·3
    expected = 4 * 5 * 8 * 8 + 2 * 5 * 5 * 8 + 8 * 3
    assert step.fwd_per_example / 2 == expected
    assert step.teacher_fwd_per_example / 2 == expected
    assert macs_per_example(model, (5, 8)) == expected
    assert torch.backends.mha.get_fastpath_enabled()  # restored
