"""Channel pruning keeps every layer alive (docs/pruning.md, "Allocations"): the per-layer floor
``prune.min_channels``, Li et al.'s per-layer ranking (``channel_uniform``), the global ranking on
per-layer normalised scores (``channel_normalised``), and the guard against a model cut in two."""

import pytest
import torch

from dsd2 import imp, store
from dsd2.data import DATASETS, RawDataset, register_dataset
from dsd2.errors import UserError
from dsd2.prune import _drop_smallest, alive_rows, full_masks, prune_with
from dsd2.registry import PRUNING_ALLOCATIONS

from conftest import tiny_config

CHANNEL_ALLOCATIONS = ("channel", "channel_uniform", "channel_normalised")


def _two_convs(scale_second: float = 1.0) -> dict[str, torch.Tensor]:
    """Two conv layers, 6 and 8 filters; the second's weights ``scale_second`` times the first's scale."""
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(6, 3, 3, 3, generator=g),
        "b.weight": scale_second * torch.randn(8, 6, 3, 3, generator=g),
    }


def _removed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {n: (alive_rows(before[n]) & ~alive_rows(after[n])).nonzero().flatten().tolist() for n in after}


def test_channel_uniform_is_li_et_al_l1_filter_pruning_on_a_hand_made_example():
    # filter norms chosen by hand: layer a's L1 norms 6,1,5,2,4,3 (×27 weights), layer b's 10× larger
    w = {
        "a.weight": torch.tensor([6.0, 1, 5, 2, 4, 3]).view(6, 1, 1, 1).expand(6, 3, 3, 3).clone(),
        "b.weight": 10 * torch.tensor([8.0, 3, 7, 1, 6, 2, 5, 4]).view(8, 1, 1, 1).expand(8, 6, 3, 3).clone(),
    }
    w["a.weight"][:, 0] *= -1  # signs do not matter: L1 norm
    masks = full_masks(w)
    new = prune_with("magnitude", "channel_uniform", w, masks, 0.5)
    # Li et al.: within each layer, the filters of smallest sum |w|, the same rate in every layer
    l1 = {n: t.abs().flatten(1).sum(1) for n, t in w.items()}
    expect = {n: sorted(torch.argsort(l1[n])[: len(l1[n]) // 2].tolist()) for n in w}
    assert {n: sorted(r) for n, r in _removed(masks, new).items()} == expect == {"a.weight": [1, 3, 5], "b.weight": [1, 3, 5, 7]}
    assert all((m.all(1) | ~m.any(1)).all() for m in (new[n].flatten(1) for n in new))  # whole filters
    # the global ranking would take all six filters of the layer of smaller weights: the floor keeps its largest
    glob = prune_with("magnitude", "channel", w, masks, 0.5)
    assert _removed(masks, glob) == {"a.weight": [1, 2, 3, 4, 5], "b.weight": [3, 5]}


def test_channel_normalised_does_not_depend_on_a_layer_scale():
    masks = full_masks(_two_convs())
    plain = prune_with("magnitude", "channel_normalised", _two_convs(), masks, 0.4)
    scaled = prune_with("magnitude", "channel_normalised", _two_convs(scale_second=50.0), masks, 0.4)
    assert _removed(masks, plain) == _removed(masks, scaled)
    assert sum(len(r) for r in _removed(masks, plain).values()) == round(0.4 * 14)
    # the raw global ranking is led by the scale: layer a goes down to its floor before b loses one
    raw = _removed(masks, prune_with("magnitude", "channel", _two_convs(scale_second=50.0), masks, 0.4))
    assert len(raw["a.weight"]) == 5 and len(raw["b.weight"]) == 1


def _old_channel_allocation(scores, masks, rate):
    """The channel allocation before the floor (kept here to prove the masks did not change)."""
    names = list(scores)
    unit_scores, unit_alive = [], []
    for n in names:
        m = masks[n].flatten(1)
        sc = scores[n].reshape(m.shape)
        mean = (sc * m).sum(1) / m.sum(1).clamp(min=1)
        finite = torch.isfinite(sc).all(1)
        unit_scores.append(torch.where(finite, mean, torch.zeros_like(mean)))
        unit_alive.append(m.any(1) & finite)
    flat_alive = torch.cat(unit_alive)
    keep = _drop_smallest(torch.cat(unit_scores), flat_alive, round(rate * int(flat_alive.sum())))
    out, start = {}, 0
    for n, alive in zip(names, unit_alive):
        rows = keep[start : start + alive.numel()] | ~alive
        start += alive.numel()
        out[n] = masks[n] & rows.view(-1, *([1] * (masks[n].dim() - 1)))
    return out


def test_channel_masks_are_unchanged_until_the_old_allocation_would_empty_a_layer():
    w = _two_convs(scale_second=0.7)
    masks = full_masks(w)
    for _ in range(2):  # (6, 8) -> (5, 5) -> (5, 2) channels: bit-identical to the allocation before the floor
        new = prune_with("magnitude", "channel", w, masks, 0.3)
        assert all(torch.equal(new[n], old) for n, old in _old_channel_allocation({n: t.abs() for n, t in w.items()}, masks, 0.3).items())
        masks = new
    old = _old_channel_allocation({n: t.abs() for n, t in w.items()}, masks, 0.3)
    new = prune_with("magnitude", "channel", w, masks, 0.3)
    # the old one took b's last two channels; the floor keeps b's best and takes a's lowest instead
    assert [int(alive_rows(old[n]).sum()) for n in w] == [5, 0] and [int(alive_rows(new[n]).sum()) for n in w] == [4, 1]


def test_the_capped_choice_is_the_greedy_one_in_score_order():
    from dsd2.prune import _drop_capped

    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        n = int(torch.randint(1, 40, (1,), generator=g))
        scores = torch.randint(0, 6, (n,), generator=g).float()  # ties on purpose
        eligible = torch.rand(n, generator=g) < 0.8
        layer = torch.randint(0, 4, (n,), generator=g)
        caps = torch.randint(0, 5, (4,), generator=g)
        n_drop = int(torch.randint(0, n + 1, (1,), generator=g))
        want, taken, left = eligible.clone(), [0] * 4, n_drop
        for i in sorted(eligible.nonzero().flatten().tolist(), key=lambda i: (float(scores[i]), i)):
            if left and taken[layer[i]] < caps[layer[i]]:  # lowest score first, ties by position
                want[i], taken[layer[i]], left = False, taken[layer[i]] + 1, left - 1
        assert torch.equal(_drop_capped(scores, eligible, layer, caps, n_drop), want)


@pytest.mark.parametrize("allocation", CHANNEL_ALLOCATIONS)
@pytest.mark.parametrize("min_channels", [1, 3])
def test_the_floor_holds_at_extreme_sparsity(allocation, min_channels):
    w = _two_convs(scale_second=0.1)  # the global ranking would empty layer b first
    masks = full_masks(w)
    with pytest.raises(UserError, match=f"prune.min_channels={min_channels}"):
        for _ in range(20):
            masks = prune_with("magnitude", allocation, w, masks, 0.9, min_channels=min_channels)
            assert all(int(alive_rows(m).sum()) >= min_channels for m in masks.values())
    # it stopped because every layer is at its floor, not before
    assert [int(alive_rows(m).sum()) for m in masks.values()] == [min_channels, min_channels]


def test_a_layer_narrower_than_the_floor_loses_nothing_and_the_others_go_on():
    w = {"a.weight": torch.randn(2, 4), "b.weight": torch.randn(10, 2)}
    masks = full_masks(w)
    new = prune_with("magnitude", "channel_uniform", w, masks, 0.5, min_channels=3)
    assert int(alive_rows(new["a.weight"]).sum()) == 2 and int(alive_rows(new["b.weight"]).sum()) == 5


def test_a_structured_allocation_that_empties_a_layer_is_refused():
    def drop_everything(scores, masks, rate, density):
        return {n: torch.zeros_like(m) for n, m in masks.items()}

    w = _two_convs()
    masks = full_masks(w)
    with PRUNING_ALLOCATIONS.snapshot():
        PRUNING_ALLOCATIONS.register("drop_all", drop_everything, metadata={"structured": True})
        with pytest.raises(UserError, match="removed every output channel of layer a.weight: the model would be cut in two"):
            prune_with("magnitude", "drop_all", w, masks, 0.5)
    # masks of an older run with an empty layer: refused, with the way out
    old = {**masks, "b.weight": torch.zeros_like(masks["b.weight"])}
    with pytest.raises(UserError, match="layer b.weight has no output channel left .* Start a new run"):
        prune_with("magnitude", "channel", w, old, 0.5)


# ----------------------------------------------------------------------------- tiny end-to-end runs


def _images(learnable: bool):
    def load(root, *, download=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(360, 1, 8, 8, generator=g)
        # learnable: the class is the quadrant of largest mean; random: labels drawn independently
        quad = torch.stack([x[:, 0, :4, :4], x[:, 0, :4, 4:], x[:, 0, 4:, :4], x[:, 0, 4:, 4:]], 1).flatten(2).mean(2)
        y = quad.argmax(1) if learnable else torch.randint(0, 4, (360,), generator=g)
        return RawDataset("imgs", 4, x[:300], y[:300], x[300:], y[300:], (0.0,), (1.0,), default_val_size=60)

    return load


@pytest.mark.parametrize(
    ("learnable", "criterion"),
    [(False, "slimming"), (False, "magnitude"), (True, "magnitude")],
    ids=["random-data-slimming", "random-data-magnitude", "learnable-magnitude"],
)
def test_channel_runs_keep_every_layer_alive_over_several_rounds(tmp_path, learnable, criterion):
    """The issue's three runs: VGG-like(2, 2) (4, 4, 8, 8 channels), the classifier kept, global
    channel ranking. Before the floor each emptied the last conv within two rounds."""
    with DATASETS.snapshot():
        register_dataset("imgs", num_classes=4, input_shape=(1, 8, 8), train_size=300, test_size=60)(_images(learnable))
        cfg = tiny_config(
            "dataset={name: imgs, root: null, val_size: 60}",
            "model={name: vgg_like, depth: 2, gamma: 2, head: compact}",
            "noise.rate=0.0",
            f"prune.criterion={criterion}",
            "prune.allocation=channel",
            "prune.include_classifier=false",
            "prune.slimming_lambda=1e-2",
            "prune.rate=0.3",
            "prune.rounds=4",
        )
        run_dir = imp.run(cfg, tmp_path)
    alive = []
    for r in range(5):
        masks = store.load_tensors(store.round_dir(run_dir, r) / "masks.safetensors")
        alive.append([int(alive_rows(masks[k]).sum()) for k in sorted(masks)])
    assert all(min(a) >= 1 for a in alive), alive
    assert sum(alive[-1]) < sum(alive[0])  # and it pruned


def test_channel_allocations_with_min_channels_in_a_run_config(tmp_path):
    cfg = tiny_config(
        "prune.criterion=magnitude",
        "prune.allocation=channel_uniform",
        "prune.min_channels=12",
        "prune.include_classifier=false",
        "prune.rate=0.2",
    )
    assert cfg.prune.min_channels == 12 and cfg.run_id() != tiny_config("prune.allocation=channel_uniform").run_id()
    run_dir = imp.run(cfg, tmp_path)
    masks = store.load_tensors(store.round_dir(run_dir, 2) / "masks.safetensors")
    assert sorted(int(alive_rows(m).sum()) for m in masks.values()) == [12, 12]  # 16 -> 13 -> 12 (the floor)
    with pytest.raises(Exception, match="min_channels"):
        tiny_config("prune.min_channels=0")


def test_a_run_the_floor_blocks_stops_with_a_clear_error_and_keeps_its_rounds(tmp_path):
    # 32 hidden channels at rate 0.9: 32 -> 3 -> 2 (one per layer) -> round 3 can remove none
    cfg = tiny_config(
        "prune.criterion=magnitude", "prune.allocation=channel", "prune.include_classifier=false", "prune.rate=0.9", "prune.rounds=3"
    )
    with pytest.raises(UserError, match="no channel can be removed"):
        imp.run(cfg, tmp_path)
    run_dir = tmp_path / cfg.run_id()
    assert [r["round"] for r in store.read_csv(run_dir / "rounds.csv")] == [0, 1, 2]
    masks = store.load_tensors(store.round_dir(run_dir, 2) / "masks.safetensors")
    assert [int(alive_rows(m).sum()) for m in masks.values()] == [1, 1]


def test_a_floor_above_every_layers_width_says_at_most_and_how_to_export(tmp_path):
    """16-channel layers under prune.min_channels=100 were never "down to" 100: the error says
    "at most", names the floor as a fix, and says how to use the rounds that finished."""
    cfg = tiny_config("prune.allocation=channel", "prune.include_classifier=false", "prune.min_channels=100", "prune.rounds=1")
    with pytest.raises(UserError) as err:
        imp.run(cfg, tmp_path)
    text = str(err.value)
    assert "has at most prune.min_channels=100 output channel(s) left" in text and "down to" not in text
    assert "--round N" in text and "lower prune.min_channels" in text and "\n" not in text
