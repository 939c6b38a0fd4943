"""Pruning criteria, sparsity allocations and layer selection (docs/pruning.md)."""

import math

import pytest
import torch
from torch import nn

from dsd2 import imp, rundir, store
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.models import prunable_weights
from dsd2.prune import (
    GradientSource,
    ScoreInputs,
    apply_masks,
    composed,
    count_alive,
    count_total,
    erk_allocation,
    erk_densities,
    full_masks,
    global_magnitude_masks,
    layerwise_magnitude_masks,
    prune_with,
    random_masks,
)

from conftest import tiny_config


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 20), nn.ReLU(), nn.Linear(20, 5))


def _weights(net):
    return {f"{i}.weight": m.weight for i, m in enumerate(net) if isinstance(m, (nn.Conv2d, nn.Linear))}


# ----------------------------------------------------------------------------- the existing methods, unchanged


def _old_drop(scores, alive, n_drop):  # the one-piece implementations as they were before criteria existed
    new = alive.clone()
    if n_drop <= 0:
        return new
    idx = alive.nonzero().squeeze(1)
    new[idx[torch.sort(scores[idx], stable=True).indices[:n_drop]]] = False
    return new


def _old_split(flat, names, like):
    out, start = {}, 0
    for n in names:
        out[n] = flat[start : start + like[n].numel()].view_as(like[n])
        start += like[n].numel()
    return out


def _old_global(w, m, rate, gen=None):
    names = list(w)
    scores = torch.cat([w[n].detach().abs().float().flatten() for n in names])
    alive = torch.cat([m[n].flatten() for n in names])
    return _old_split(_old_drop(scores, alive, round(rate * int(alive.sum()))), names, m)


def _old_layerwise(w, m, rate, gen=None):
    return {n: _old_drop(w[n].detach().abs().float().flatten(), m[n].flatten(), round(rate * int(m[n].sum()))).view_as(m[n]) for n in w}


def _old_random(w, m, rate, gen):
    names = list(w)
    alive = torch.cat([m[n].flatten() for n in names])
    scores = torch.rand(alive.numel(), generator=gen)
    return _old_split(_old_drop(scores, alive, round(rate * int(alive.sum()))), names, m)


@pytest.mark.parametrize(
    "new, old, method, criterion, allocation",
    [
        (global_magnitude_masks, _old_global, "global_magnitude", "magnitude", "global"),
        (layerwise_magnitude_masks, _old_layerwise, "layerwise_magnitude", "magnitude", "uniform"),
        (random_masks, _old_random, "random", "random", "global"),
    ],
)
def test_existing_methods_give_bit_identical_masks_and_equal_their_composition(new, old, method, criterion, allocation):
    w = _weights(_net(3))
    ours = theirs = composed_masks = full_masks(w)
    for i in range(1, 6):
        g1, g2, g3 = (torch.Generator().manual_seed(i) for _ in range(3))
        ours, theirs = new(w, ours, 0.3, g1), old(w, theirs, 0.3, g2)
        composed_masks = prune_with(criterion, allocation, w, composed_masks, 0.3, inputs=ScoreInputs(composed_masks, g3))
        for n in w:
            assert torch.equal(ours[n], theirs[n]) and torch.equal(ours[n], composed_masks[n])
        apply_masks(w, ours)
    assert composed(method, None, None) is None
    assert composed(method, criterion, None) == (criterion, allocation) == composed(method, None, allocation)


def test_a_method_without_parts_needs_both_choices():
    from dsd2.registry import PRUNING_METHODS

    with PRUNING_METHODS.snapshot():
        PRUNING_METHODS.register("mine", lambda w, m, r, g=None: m)
        with pytest.raises(UserError, match="prune.allocation"):
            composed("mine", "snip", None)
        assert composed("mine", "snip", "erk") == ("snip", "erk")
        with pytest.raises(UserError, match="give both"):
            load_config(None, ["prune.method=mine", "prune.allocation=erk"])


def test_new_defaults_keep_run_ids():
    cfg = load_config("tiny_mnist1d")
    assert cfg.run_id() == load_config("tiny_mnist1d", ["prune.include=[]", "prune.score_batches=8"]).run_id()
    assert cfg.run_id() != load_config("tiny_mnist1d", ["prune.allocation=erk"]).run_id()
    assert load_config(None, ["prune.criterion=SNIP", "prune.allocation=ERK"]).prune.criterion == "snip"


# ----------------------------------------------------------------------------- layer selection


def test_include_and_exclude_patterns():
    net = _net()
    assert list(prunable_weights(net, include=["0.*", "3"])) == ["0.weight", "3.weight"]
    assert list(prunable_weights(net, exclude=["5.weight"])) == ["0.weight", "3.weight"]
    assert list(prunable_weights(net, include=["*"], exclude=["0"])) == ["3.weight", "5.weight"]
    # applied after include_classifier: the classifier stays out even when a pattern names it
    assert list(prunable_weights(net, include_classifier=False, include=["*"])) == ["0.weight", "3.weight"]
    with pytest.raises(UserError, match=r"'features\.\*' matches no prunable layer; the layers are: 0.weight, 3.weight, 5.weight"):
        prunable_weights(net, include=["features.*"])
    with pytest.raises(UserError, match="leave no layer"):
        prunable_weights(net, exclude=["*"])


def test_downsample_pattern_on_a_resnet():
    from dsd2.models import build_model

    model = build_model("resnet18", num_classes=10, in_channels=3)
    every = prunable_weights(model)
    kept = prunable_weights(model, exclude=["*.downsample.*"])
    assert set(every) - set(kept) == {k for k in every if ".downsample." in k} != set()


# ----------------------------------------------------------------------------- ERK


def test_erk_densities_by_hand():
    # Linear 10->20 (ER: 30/200 = 0.15) and conv 4->8, 3x3 (ERK: 18/288 = 0.0625); total 488 weights
    shapes = {"fc": (20, 10), "conv": (8, 4, 3, 3)}
    eps = 0.5 * 488 / (30 + 18)  # keep half: eps * (0.15*200 + 0.0625*288) = 244
    d = erk_densities(shapes, 0.5)
    assert d["fc"] == pytest.approx(eps * 0.15) and d["conv"] == pytest.approx(eps * 0.0625)
    # a layer over density 1 stays dense and the others share the rest
    shapes = {"small": (2, 2), "big": (100, 100)}  # raw 1.0 and 0.02
    d = erk_densities(shapes, 0.5)
    assert d["small"] == 1.0 and d["big"] == pytest.approx((0.5 * 10004 - 4) / 10000)


def test_erk_rounds_hit_the_geometric_target_and_nest():
    w = _weights(_net(1))
    masks = full_masks(w)
    total = count_total(masks)
    for i in range(1, 8):
        new = erk_allocation({n: x.detach().abs() for n, x in w.items()}, masks, 0.2, 0.8**i)
        assert abs(count_alive(new) - round(total * 0.8**i)) <= len(w)
        assert all(not (new[n] & ~masks[n]).any() for n in w)
        masks = new
    dens = {n: float(m.float().mean()) for n, m in masks.items()}
    assert dens["3.weight"] < dens["5.weight"]  # the large Linear is the sparsest, as ERK intends


# ----------------------------------------------------------------------------- gradient criteria


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3))


def _data(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def test_magnitude_gradient_is_w_times_g_for_one_batch():
    model = _mlp()
    model(torch.randn(16, 6))  # move the BN statistics off their init values
    weights = prunable_weights(model)
    x, y = _data(n=1)[0]
    model.eval()
    g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(weights.values()))
    model.train()
    bn_before = model[2].running_mean.clone()
    source = GradientSource(model, weights, lambda: [(x, y)])
    from dsd2.prune import magnitude_gradient_scores

    scores = magnitude_gradient_scores(weights, ScoreInputs(full_masks(weights), gradients=source))
    for (n, w), gn in zip(weights.items(), g):
        assert torch.allclose(scores[n], (w.detach() * gn).abs())
    assert model.training and torch.equal(model[2].running_mean, bn_before)  # eval mode: statistics untouched
    assert all(w.grad is None for w in weights.values())


def test_gradient_criteria_average_batches_and_are_deterministic():
    model = _mlp()
    weights = prunable_weights(model)
    batches = _data(n=3)
    one = [GradientSource(model, weights, lambda b=b: [b]).gradients() for b in batches]
    mean = GradientSource(model, weights, lambda: batches).gradients()
    for n in weights:
        assert torch.allclose(mean[n], sum(o[n] for o in one) / 3, atol=1e-7)
    masks = full_masks(weights)
    runs = [
        prune_with(
            "magnitude_gradient",
            "global",
            weights,
            masks,
            0.5,
            inputs=ScoreInputs(masks, gradients=GradientSource(model, weights, lambda: batches)),
        )
        for _ in range(2)
    ]
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in weights)
    with pytest.raises(ValueError, match="needs training-loss gradients"):
        prune_with("snip", "global", weights, masks, 0.5)


def test_snip_scores_at_init_under_the_mask_and_restores_the_model():
    model = _mlp(1)
    weights = prunable_weights(model)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _data(n=2)
    masks = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) > 0.3 for n, w in weights.items()}
    with torch.no_grad():  # "train" the model away from its init
        for w in weights.values():
            w.mul_(3.0).add_(0.1)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    from dsd2.prune import snip_scores

    scores = snip_scores(weights, ScoreInputs(masks, gradients=GradientSource(model, weights, lambda: batches, init_state=lambda: init)))
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    ref = _mlp(1)
    ref_w = prunable_weights(ref)
    apply_masks(ref_w, masks)
    g = GradientSource(ref, ref_w, lambda: batches).gradients()
    for n in weights:
        assert torch.allclose(scores[n], (ref_w[n].detach() * g[n]).abs())
        assert (scores[n][~masks[n]] == 0).all()  # pruned weights score 0 at init (w0 masked)


# ----------------------------------------------------------------------------- in the round loop


@pytest.mark.parametrize(
    "extra",
    [
        ["prune.criterion=magnitude_gradient", "prune.score_batches=2"],
        ["prune.criterion=snip", "prune.allocation=uniform", "prune.score_batches=2"],
        ["prune.allocation=erk"],
        ["prune.method=random", "prune.allocation=erk"],
        ["prune.exclude=[layers.1]"],
    ],
    ids=["magnitude_gradient", "snip_uniform", "erk", "random_erk", "exclude"],
)
def test_two_round_imp_with_each_choice(extra, tmp_path):
    cfg = tiny_config(*extra)
    result_dir = tmp_path / cfg.run_id()
    imp.run(cfg, tmp_path)
    rows = rundir.read_rounds(result_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert set(rundir.round_columns(False)) <= set(rows[0])
    masks = store.load_tensors(store.round_dir(result_dir, 2) / "masks.safetensors")
    total = sum(m.numel() for m in masks.values())
    assert abs(rows[2]["sparsity"] - 0.75) <= len(masks) / total + 1e-9
    if "prune.exclude=[layers.1]" in extra:
        assert "layers.1.weight" not in masks and len(masks) == 2
    assert math.isfinite(rows[2]["val_acc"])


def test_gradient_pruning_is_reproducible_in_the_round_loop(tmp_path):
    cfg = tiny_config("prune.criterion=magnitude_gradient", "prune.score_batches=2", "prune.rounds=1")
    a, b = tmp_path / "a", tmp_path / "b"
    imp.run(cfg, a)
    imp.run(cfg, b)
    ma = store.load_tensors(store.round_dir(a / cfg.run_id(), 1) / "masks.safetensors")
    mb = store.load_tensors(store.round_dir(b / cfg.run_id(), 1) / "masks.safetensors")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # and it prunes differently from plain magnitude
    plain = tiny_config("prune.rounds=1")
    imp.run(plain, a)
    mp = store.load_tensors(store.round_dir(a / plain.run_id(), 1) / "masks.safetensors")
    assert any(not torch.equal(ma[k], mp[k]) for k in ma)


def test_a_sweep_grid_over_criteria_and_allocations(tmp_path):
    import yaml

    from dsd2.sweep.spec import expand, load_sweep

    path = tmp_path / "prune_sweep.yaml"
    grid = {"prune.criterion": ["magnitude", "snip"], "prune.allocation": ["global", "erk"]}
    path.write_text(yaml.safe_dump({"name": "prune_sweep", "base": "tiny_mnist1d", "grid": grid}))
    cells = expand(load_sweep(path))
    assert {(c.config.prune.criterion, c.config.prune.allocation) for c in cells} == {
        (a, b) for a in grid["prune.criterion"] for b in grid["prune.allocation"]
    }
    assert len({c.config.run_id() for c in cells}) == 4


# ----------------------------------------------------------------------------- network slimming


def _bn_mlp(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(input_size, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


def test_batchnorm_links_on_a_resnet_and_slimming_scores():
    from dsd2.models import build_model
    from dsd2.prune import batchnorm_after, slimming_scores

    model = build_model("resnet18_cifar", num_classes=10)
    links = batchnorm_after(model, prunable_weights(model))
    assert links["conv1.weight"] == "bn1" and links["layer2.0.downsample.0.weight"] == "layer2.0.downsample.1"
    assert links["layer1.0.conv2.weight"] == "layer1.0.bn2" and "fc.weight" not in links
    net = _bn_mlp(3, 1, 6)
    with torch.no_grad():
        net[2].weight.copy_(torch.linspace(-1, 1, 16))
    w = prunable_weights(net)
    scores = slimming_scores(w, ScoreInputs(full_masks(w), model=net))
    assert (
        torch.equal(scores["1.weight"][:, 0], torch.linspace(-1, 1, 16).abs()) and (scores["1.weight"] == scores["1.weight"][:, :1]).all()
    )
    assert torch.isinf(scores["7.weight"]).all()  # the classifier has no BatchNorm after it


def test_channel_allocation_removes_whole_channels_of_smallest_gamma():
    from dsd2.prune import batchnorm_masks, channel_sparsity

    net = _bn_mlp(3, 1, 6)
    with torch.no_grad():
        net[2].weight.copy_(torch.arange(1, 17) / 16)  # channel c of layer 1: gamma (c+1)/16
        net[5].weight.copy_(torch.arange(1, 17) / 8)  # layer 4 larger: loses fewer
    w = prunable_weights(net)
    masks = full_masks(w)
    new = prune_with("slimming", "channel", w, masks, 0.25, inputs=ScoreInputs(masks, model=net))
    assert torch.equal(new["7.weight"], masks["7.weight"])  # no BatchNorm: never chosen
    dead = {n: (~m.any(1)).nonzero().flatten().tolist() for n, m in new.items()}
    assert dead["1.weight"] == [0, 1, 2, 3, 4, 5] and dead["4.weight"] == [0, 1]  # round(0.25*32) = 8 lowest |gamma|
    assert all((m.all(1) | ~m.any(1)).all() for m in new.values())  # whole rows
    assert channel_sparsity(net, new) == pytest.approx(8 / 32)
    params, bn = batchnorm_masks(net, new)
    assert set(params) == {"2.weight", "2.bias", "5.weight", "5.bias"} and bn["2.bias"].tolist()[:7] == [False] * 6 + [True]
    # zeroing gamma and beta with the rows: a removed channel outputs exactly 0
    apply_masks({**w, **params}, {**new, **bn})
    net.eval()
    assert (net[:3](torch.randn(5, 6))[:, :6] == 0).all()


def test_slimming_penalty_adds_lambda_sign_gamma_to_the_gradient():
    from dsd2.prune import add_slimming_penalty

    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    plain, slim = _bn_mlp(3, 1, 6), _bn_mlp(3, 1, 6)
    with torch.no_grad():
        for net in (plain, slim):
            net[2].weight.copy_(torch.linspace(-1, 1, 16))
    handles = add_slimming_penalty(slim, 0.5)
    for net in (plain, slim):
        nn.functional.cross_entropy(net(x), y).backward()
    expected = plain[2].weight.grad + 0.5 * torch.sign(plain[2].weight.detach())
    assert torch.allclose(slim[2].weight.grad, expected) and torch.equal(slim[1].weight.grad, plain[1].weight.grad)
    assert len(handles) == 2


def test_two_round_slimming_run(tmp_path):
    from dsd2.models.registry import MODELS, register_model

    with MODELS.snapshot():
        register_model("bn_mlp", input_shape=(40,))(_bn_mlp)
        cfg = tiny_config("model={name: bn_mlp}", "prune.criterion=slimming", "prune.allocation=channel", "prune.slimming_lambda=1e-3")
        imp.run(cfg, tmp_path)
        run_dir = tmp_path / cfg.run_id()
        rows = rundir.read_rounds(run_dir)
        assert [r["round"] for r in rows] == [0, 1, 2] and set(rundir.round_columns(False)) <= set(rows[0])
        masks = store.load_tensors(store.round_dir(run_dir, 2) / "masks.safetensors")
        state = store.load_tensors(store.round_dir(run_dir, 2) / "state.safetensors")
        for layer, bn in (("1", "2"), ("4", "5")):
            dead = ~masks[f"{layer}.weight"].any(1)
            assert dead.any() and (state[f"{bn}.weight"][dead] == 0).all() and (state[f"{bn}.bias"][dead] == 0).all()
        alive_channels = sum(int(masks[k].any(1).sum()) for k in ("1.weight", "4.weight"))
        assert alive_channels == 8  # 32 channels with a BatchNorm, half removed per round: 16, then 8
