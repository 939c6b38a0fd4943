"""Fused training (dsd2.fused): K runs as one batched computation against K separate runs."""

from __future__ import annotations

import torch
from torch import nn

from dsd2.data import AugmentSpec
from dsd2.fused import NotFusable, check, fold, stack, train_fused, unfold
from dsd2.models import build_model
from dsd2.prune import apply_masks, full_masks, global_magnitude_masks
from dsd2.train import Batches, Schedule, train

K = 3
# measured on CPU fp32 (docs/fused.md): the largest |fused - separate| weight difference after one
# epoch was below 1e-5 for these models; the bound leaves room for other BLAS builds
WEIGHT_TOL = 1e-4


def _models(name: str, **kw) -> list[nn.Module]:
    out = []
    for seed in range(K):
        torch.manual_seed(seed)
        out.append(build_model(name, **kw))
    return out


def _sources(shape: tuple[int, ...], n: int = 96, classes: int = 10) -> list[Batches]:
    """One image set, K label draws (the runs' noise differs), crop + flip augmentation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    return [
        Batches(
            x,
            torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(10 + k)),
            mean,
            std,
            AugmentSpec(crop_padding=2, flip=True),
        )
        for k in range(K)
    ]


def _masks(models: list[nn.Module], rate: float) -> list[tuple[dict, dict]]:
    """Per run: (prunable weights, masks) after one magnitude pruning step (the runs' masks differ)."""
    out = []
    for m in models:
        w = {n: p for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1}
        masks = global_magnitude_masks(w, full_masks(w), rate)
        apply_masks(w, masks)
        out.append((w, masks))
    return out


CASES = {
    "lenet5": (dict(num_classes=10, in_channels=1, input_size=28), (1, 28, 28)),
    "lenet_300_100": (dict(num_classes=10, in_channels=1, input_size=28), (1, 28, 28)),
    "vgg_like": (dict(num_classes=10, in_channels=3, input_size=16, depth=2, gamma=2), (3, 16, 16)),
}


def _run(name: str, fused: bool, rate: float = 0.5):
    kw, shape = CASES[name]
    models = _models(name, **kw)
    sources = _sources(shape)
    wm = _masks(models, rate)
    sched = Schedule(epochs=2, lr=0.05, momentum=0.9, weight_decay=1e-4, kind="multistep", milestones=(0.5,))
    gens = [torch.Generator().manual_seed(100 + k) for k in range(K)]
    if fused:
        logs = train_fused(models, sources, sched, batch_size=32, generators=gens, weights=[w for w, _ in wm], masks=[m for _, m in wm])
    else:
        logs = [train(m, s, sched, batch_size=32, generator=g, weights=w, masks=mk) for m, s, g, (w, mk) in zip(models, sources, gens, wm)]
    return models, logs, wm


def _max_diff(a: list[nn.Module], b: list[nn.Module]) -> float:
    worst = 0.0
    for ma, mb in zip(a, b):
        for (name, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values()):
            if ta.is_floating_point():
                worst = max(worst, float((ta - tb).abs().max()))
            else:
                assert torch.equal(ta, tb), name
    return worst


def test_fused_training_equals_separate_runs_within_tolerance():
    for name in CASES:
        fused, flogs, wm = _run(name, fused=True)
        separate, slogs, _ = _run(name, fused=False)
        diff = _max_diff(fused, separate)
        assert diff < WEIGHT_TOL, (name, diff)
        for fl, sl in zip(flogs, slogs):
            assert [x.epoch for x in fl] == [x.epoch for x in sl]
            assert [x.lr for x in fl] == [x.lr for x in sl]
            for a, b in zip(fl, sl):
                assert abs(a.loss - b.loss) < 1e-4 and abs(a.acc - b.acc) <= 2 / 96
        for w, masks in wm:  # pruned weights stay zero in every run
            for key, mask in masks.items():
                assert (w[key][~mask] == 0).all()
        # the runs stay distinct (different seeds, labels, masks)
        first = [next(iter(m.state_dict().values())) for m in fused]
        assert not torch.equal(first[0], first[1])


def test_fused_rerun_is_bit_identical():
    a, la, _ = _run("vgg_like", fused=True)
    b, lb, _ = _run("vgg_like", fused=True)
    assert _max_diff(a, b) == 0.0
    assert [[vars(x) for x in r] for r in la] == [[vars(x) for x in r] for r in lb]


def test_batchnorm_statistics_are_per_run():
    fused, _, _ = _run("vgg_like", fused=True)
    separate, _, _ = _run("vgg_like", fused=False)
    for mf, ms in zip(fused, separate):
        for name, t in ms.state_dict().items():
            if "running" in name:
                assert torch.allclose(mf.state_dict()[name], t, atol=WEIGHT_TOL), name
    # and they differ between runs (each saw its own batches)
    means = [m.state_dict()["features.2.running_mean"] for m in fused]
    assert not torch.allclose(means[0], means[1])


def test_stacked_module_matches_models_forward():
    kw, shape = CASES["vgg_like"]
    models = _models("vgg_like", **kw)
    xs = [torch.randn(4, *shape) for _ in range(K)]
    fused = stack(models)
    check(fused, models, xs)  # raises when the outputs differ
    fused.eval()
    out = unfold(fused(fold(xs)), K)
    for i, m in enumerate(models):
        m.eval()
        assert torch.allclose(out[i], m(xs[i]), atol=1e-5)


class _Mixer(nn.Module):
    """A forward that mixes the runs: a reshape with a fixed channel count."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.reshape(-1, 8))


def test_unfusable_models_are_refused():
    torch.manual_seed(0)
    mixers = [_Mixer(), _Mixer()]
    try:
        check(stack(mixers), mixers, [torch.randn(2, 8), torch.randn(2, 8)])
    except NotFusable as err:
        assert "mixes the runs" in str(err) or "does not run folded" in str(err) or "Linear" in str(err)
    else:
        raise AssertionError("a forward that mixes the runs was accepted")
    ln = [nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(2)]
    try:
        stack(ln)
    except NotFusable as err:
        assert "LayerNorm" in str(err)
    else:
        raise AssertionError("LayerNorm was accepted")


def test_folded_uint8_path_equals_per_run_preparation(monkeypatch):
    """The fast input path (gather, augment, fold as uint8, normalise once) gives bit-identical
    training to folding each run's own prepared batch."""
    import dsd2.fused.engine as engine

    fast, _, _ = _run("lenet5", fused=True)
    monkeypatch.setattr(engine, "_shared_layout", lambda sources: False)
    slow, _, _ = _run("lenet5", fused=True)
    assert _max_diff(fast, slow) == 0.0


def test_one_gather_for_shared_images_equals_per_run_gathers(monkeypatch):
    """The K runs' batches are gathered in one call per step, from their shared images (runs
    that differ in seed or noise) or from a stacked copy of their own (each seed's subset):
    bit-identical to gathering each run's rows (and to folding each run's prepared batch)."""
    import dsd2.fused.engine as engine

    kw, shape = CASES["lenet_300_100"]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, *shape), generator=g, dtype=torch.uint8)  # 100: a short last batch
    shared = [x, x.clone(), x.clone()]
    own = [torch.roll(x, k, 0) for k in range(K)]

    def trained(images: list[torch.Tensor]) -> list[nn.Module]:
        models = _models("lenet_300_100", **kw)
        ys = [torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(10 + k)) for k in range(K)]
        sources = [Batches(xi, y, (0.5,), (0.25,)) for xi, y in zip(images, ys)]
        gens = [torch.Generator().manual_seed(100 + k) for k in range(K)]
        train_fused(models, sources, Schedule(epochs=2, lr=0.05), batch_size=32, generators=gens)
        return models

    assert engine._same_images([Batches(xi, torch.zeros(100), (0.5,), (0.25,)) for xi in shared])
    assert not engine._same_images([Batches(xi, torch.zeros(100), (0.5,), (0.25,)) for xi in own])
    one, stacked = trained(shared), trained(own)
    monkeypatch.setattr(engine, "STACK_BYTES", 0)
    assert _max_diff(stacked, trained(own)) == 0.0  # per-run gathers
    monkeypatch.setattr(engine, "_same_images", lambda srcs: False)
    assert _max_diff(one, trained(shared)) == 0.0
    monkeypatch.setattr(engine, "_shared_layout", lambda sources: False)
    assert _max_diff(one, trained(shared)) == 0.0  # each run's own prepared batch, folded


def test_stacked_linear_gradients_are_autograds_bit_for_bit():
    """StackedLinear's own backward (the weight gradient in the weight's layout, used where a
    probe finds it equal) gives exactly autograd's gradients of the plain batched matmul."""
    import importlib

    stacking = importlib.import_module("dsd2.fused.stack")
    used = []
    for k, b, i, o in ((3, 32, 784, 300), (3, 32, 100, 10), (2, 7, 33, 17), (1, 5, 4, 3)):
        g = torch.Generator().manual_seed(i)
        lin = stacking.StackedLinear(k, nn.Linear(i, o))
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
        x, grad_out = torch.randn(b, k * i, generator=g), torch.randn(b, k * o, generator=g)
        got = []
        for reference in (False, True):
            xx = x.clone().requires_grad_()
            lin.zero_grad(set_to_none=True)
            if reference:
                out = stacking._stacked_matmul(xx.view(b, k, i).transpose(0, 1), lin.weight, lin.bias).transpose(0, 1).reshape(b, -1)
            else:
                out = lin(xx)
            out.backward(grad_out)
            got.append([out.detach(), xx.grad, lin.weight.grad, lin.bias.grad])
        for a, r in zip(*got):
            assert torch.equal(a, r), (k, b, i, o)
        assert got[0][2].is_contiguous()
        used.append(stacking._weight_grad_as_autograd(x.view(b, k, i).transpose(0, 1), o))
    assert any(used)  # the own backward was exercised


class _Stop(Exception):
    pass


def test_fused_epoch_checkpoints_resume_bit_identically(tmp_path):
    from dsd2 import checkpoint

    kw, shape = CASES["vgg_like"]
    sched = Schedule(epochs=3, lr=0.05, momentum=0.9, weight_decay=1e-4, kind="multistep", milestones=(0.5,))

    def setup():
        models = _models("vgg_like", **kw)
        wm = _masks(models, 0.5)
        gens = [torch.Generator().manual_seed(100 + k) for k in range(K)]
        return models, _sources(shape), wm, gens

    def go(models, sources, wm, gens, **extra):
        return train_fused(
            models, sources, sched, batch_size=32, generators=gens, weights=[w for w, _ in wm], masks=[m for _, m in wm], **extra
        )

    full_models, *rest = setup()
    full_logs = go(full_models, *rest)

    paths = [tmp_path / f"run{k}.partial.safetensors" for k in range(K)]

    def save(next_epoch, optimizers, logs):
        if next_epoch == 1:
            for k, (m, opt, g) in enumerate(zip(models, optimizers(), gens)):
                checkpoint.save_epoch_state(paths[k], model=m, optimizer=opt, generator=g, next_epoch=1, logs=[vars(x) for x in logs[k]])

    def stop(log, model):
        if log.epoch == 2:
            raise _Stop

    models, sources, wm, gens = setup()
    try:
        go(models, sources, wm, gens, checkpoint=save, on_epoch_end=[stop] * K)
    except _Stop:
        pass
    models, sources, wm, gens = setup()
    states = [checkpoint.load_epoch_state(p) for p in paths]
    for m, st in zip(models, states):
        m.load_state_dict(st.model_state)
    logs = go(models, sources, wm, gens, resume=states)
    assert _max_diff(full_models, models) == 0.0
    assert [[vars(x) for x in r] for r in logs] == [[vars(x) for x in r] for r in full_logs]
    # an unfused run continues from a fused run's epoch checkpoint
    m = _models("vgg_like", **kw)[0]
    m.load_state_dict(states[0].model_state)
    w = {n: p for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1}
    out = train(m, _sources(shape)[0], sched, batch_size=32, generator=torch.Generator(), resume=states[0], weights=w, masks=wm[0][1])
    assert [x.epoch for x in out] == [1, 2, 3]
    assert (
        max(
            float((a - b).abs().max())
            for a, b in zip(m.state_dict().values(), full_models[0].state_dict().values())
            if a.is_floating_point()
        )
        < WEIGHT_TOL
    )


def test_channels_last_models_train_fused_within_tolerance(monkeypatch):
    import test_fused as this

    plain_models, plain_sources = this._models, this._sources
    monkeypatch.setattr(this, "_models", lambda name, **kw: [m.to(memory_format=torch.channels_last) for m in plain_models(name, **kw)])

    def sources(shape, n=96, classes=10):
        out = plain_sources(shape, n, classes)
        for s in out:
            s.channels_last = True
        return out

    monkeypatch.setattr(this, "_sources", sources)
    fused, _, _ = this._run("vgg_like", fused=True)
    separate, _, _ = this._run("vgg_like", fused=False)
    assert _max_diff(fused, separate) < WEIGHT_TOL  # measured 2.5e-7
