"""Channel pruning keeps every layer alive (docs/pruning.md, "Allocations"): the per-layer floor
``prune.min_channels``, Li et al.'s per-layer ranking (``channel_uniform``), the global ranking on
per-layer normalised scores (``channel_normalised``), and the guard against a model cut in two."""

import contextlib
import io

import pytest
import torch

from dsd2 import imp, rundir, store
from dsd2.cli import main
from dsd2.data import DATASETS, RawDataset, register_dataset
from dsd2.distill.teacher import _teacher_state
from dsd2.errors import UserError
from dsd2.prune import alive_rows, drop_smallest, full_masks, prune_with
from dsd2.registry import PRUNING_ALLOCATIONS
from dsd2.report.data import load_runs
from dsd2.runs import result

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
    keep = drop_smallest(torch.cat(unit_scores), flat_alive, round(rate * int(flat_alive.sum())))
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
    from dsd2.prune.channels import _drop_capped

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


def _floored(tmp_path):
    # 32 hidden channels at rate 0.9: 32 -> 3 -> 2 (one per layer) -> round 3 can remove none
    cfg = tiny_config(
        "prune.criterion=magnitude", "prune.allocation=channel", "prune.include_classifier=false", "prune.rate=0.9", "prune.rounds=4"
    )
    return cfg, imp.run(cfg, tmp_path)


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


def test_a_run_the_floor_stops_is_complete_at_the_round_before(tmp_path):
    """The floor ends the curve as an early stop does: floor_stop.json records the last round, the
    run is complete there (export --round best, resume, teacher best), and extending it is refused."""
    cfg, run_dir = _floored(tmp_path)
    assert [r["round"] for r in store.read_csv(run_dir / "rounds.csv")] == [0, 1, 2]
    masks = store.load_tensors(store.round_dir(run_dir, 2) / "masks.safetensors")
    assert [int(alive_rows(m).sum()) for m in masks.values()] == [1, 1]
    floor = store.read_json(run_dir / "floor_stop.json")
    assert floor["stop_round"] == 2 and floor["min_channels"] == 1 and "no channel can be removed" in floor["reason"]
    assert rundir.floor_stopped_at(run_dir) == 2 and rundir.is_complete(cfg, 3, run_dir)
    assert "undetermined" not in {r["phase"] for r in store.read_csv(run_dir / "rounds.csv")}  # a finished curve
    assert result(run_dir).complete
    # export --round best needs the whole curve: this is it
    code, text = _cli("export", str(run_dir), "--round", "best", "-o", str(tmp_path / "exp"))
    assert code == 0, text
    # resume: nothing to train, and it says it is finished
    before = (run_dir / "rounds.csv").read_bytes()
    code, text = _cli("resume", str(run_dir), "-q")
    assert code == 0 and "finished on" in text, text
    assert (run_dir / "rounds.csv").read_bytes() == before and not store.round_dir(run_dir, 3).exists()
    # more rounds: refused in one line, config and meta untouched
    config, meta = (run_dir / "config.yaml").read_bytes(), (run_dir / "meta.json").read_bytes()
    code, text = _cli("run", str(run_dir), "prune.rounds=6")
    assert code == 2 and "the floor prune.min_channels=1" in text and "lower prune.min_channels" in text, text
    assert (run_dir / "config.yaml").read_bytes() == config and (run_dir / "meta.json").read_bytes() == meta
    # a teacher at its best round: the floor's curve is whole
    rows, incomplete = _teacher_state(run_dir, cfg.prune.rounds)
    assert incomplete is None and len(rows) == 3
    assert len(load_runs([run_dir])) == 1  # the report reads it
    # a damaged record fails closed, in one line
    (run_dir / "floor_stop.json").write_text('{"stop_round": "x"}')
    code, text = _cli("export", str(run_dir), "--round", "best", "-o", str(tmp_path / "exp2"))
    assert code == 2 and "floor_stop.json is not what dsd2 writes" in text and "Traceback" not in text, text


def test_a_floor_above_every_layers_width_stops_after_round_0(tmp_path):
    """16-channel layers under prune.min_channels=100 were never "down to" 100: the recorded reason
    says "at most" and names the floor as a fix."""
    cfg = tiny_config("prune.allocation=channel", "prune.include_classifier=false", "prune.min_channels=100", "prune.rounds=1")
    run_dir = imp.run(cfg, tmp_path)
    text = store.read_json(run_dir / "floor_stop.json")["reason"]
    assert "has at most prune.min_channels=100 output channel(s) left" in text and "down to" not in text
    assert "lower prune.min_channels" in text and "\n" not in text
    assert rundir.floor_stopped_at(run_dir) == 0 and rundir.is_complete(cfg, 1, run_dir)


def test_structured_allocations_leave_the_classifier_out_by_default():
    """The classifier's output rows are the classes: a structured allocation that pruned it removed
    classes (LeNet-300-100 with channel_uniform lost 2 of 10 per round), so it is left out unless
    the config says otherwise, and a new run that says otherwise is refused."""
    for allocation in CHANNEL_ALLOCATIONS:
        assert tiny_config(f"prune.allocation={allocation}").prune.include_classifier is False
    assert tiny_config("prune.allocation=global").prune.include_classifier is True
    assert tiny_config("prune.criterion=magnitude").prune.include_classifier is True  # the method's own allocation
    explicit = tiny_config("prune.allocation=channel_uniform", "prune.include_classifier=true")
    assert explicit.prune.include_classifier is True
    assert explicit.run_id() != tiny_config("prune.allocation=channel_uniform").run_id()


def test_a_plugins_structured_allocation_leaves_the_classifier_out_by_default(tmp_path, monkeypatch):
    """Before, the default was chosen before the config's plugins were imported: a plugin's
    structured allocation kept include_classifier=true, and the new run was refused ("leave
    prune.include_classifier out") although the config never named it."""
    import sys

    (tmp_path / "dsd2_qa_channels.py").write_text(
        "from dsd2.prune.channels import channel_uniform_allocation\n"
        "from dsd2.registry import PRUNING_ALLOCATIONS\n"
        "PRUNING_ALLOCATIONS.register('qa_channels', channel_uniform_allocation, metadata={'structured': True})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with PRUNING_ALLOCATIONS.snapshot():
            cfg = tiny_config("plugins=[dsd2_qa_channels]", "prune.allocation=qa_channels")
            assert cfg.prune.include_classifier is False
    finally:
        sys.modules.pop("dsd2_qa_channels", None)


def test_a_new_structured_run_that_would_prune_classes_is_refused(tmp_path):
    cfg = tiny_config("prune.allocation=channel_uniform", "prune.include_classifier=true")
    with pytest.raises(UserError, match="classifier's rows are the classes"):
        imp.run(cfg, tmp_path)
    assert not (tmp_path / cfg.run_id()).exists()  # nothing written


def test_a_structured_run_started_with_the_classifier_goes_on_as_it_began(tmp_path, monkeypatch):
    """Runs started before the refusal keep training as they began (their config.yaml says
    include_classifier: true): resuming one is not refused."""
    from dsd2.imp import checks

    from conftest import run_interrupted

    cfg = tiny_config("prune.allocation=channel_uniform", "prune.include_classifier=true", "prune.rounds=2")
    monkeypatch.setattr(checks, "prunes_classes", lambda *a: None)
    run_dir = run_interrupted(cfg, tmp_path, after_round=1)
    monkeypatch.undo()
    assert imp.run(cfg, tmp_path) == run_dir
    assert len(rundir.read_rounds(run_dir)) == 3


def test_channel_runs_keep_every_class(tmp_path):
    cfg = tiny_config("prune.allocation=channel_uniform", "prune.rate=0.5", "prune.rounds=2")
    run_dir = imp.run(cfg, tmp_path)
    model, masks, _ = rundir.load_round_model(run_dir, 2)
    head = model.layers[-1].weight  # the MLP's classifier: 10 rows, one per class
    assert head.shape[0] == 10 and all(m.shape[0] != 10 for m in masks.values())
    assert sorted(int(alive_rows(m).sum()) for m in masks.values()) == [4, 4]  # 16 -> 8 -> 4 in each hidden layer


def test_a_round_that_would_remove_no_channel_ends_the_curve(tmp_path):
    """channel_uniform removes round(rate x alive channels) per layer: once every layer is so narrow
    that this rounds to 0, the next round would retrain the same masks (a LeNet-5 in the curve bank
    did so for three rounds, and its retrained accuracy rose 29 -> 42% at one sparsity: a fake
    recovery). The curve ends there, as at the floor: 4 -> 3 -> 2 channels, then round(0.4) = 0."""
    cfg = tiny_config("prune.allocation=channel_uniform", "model.hidden=[4, 4]", "prune.rate=0.2", "prune.rounds=5")
    run_dir = imp.run(cfg, tmp_path)
    alive = [sorted(int(alive_rows(m).sum()) for m in store.load_tensors(rundir.round_masks_path(run_dir, r)).values()) for r in range(3)]
    assert alive == [[4, 4], [3, 3], [2, 2]]
    floor = store.read_json(rundir.floor_stop_path(run_dir))
    assert floor["stop_round"] == 2 and "rounds to 0" in floor["reason"] and "higher prune.rate" in floor["reason"]
    assert len(rundir.read_rounds(run_dir)) == 3 and rundir.is_complete(cfg, 3, run_dir)
    code, text = _cli("run", str(run_dir), "prune.rounds=6")
    assert code == 2 and "would remove no channel" in text, text


def test_a_channel_config_that_now_leaves_the_classifier_out_says_where_the_earlier_run_is(tmp_path, monkeypatch):
    """An old channel config (no include_classifier) made a run that pruned the classifier; run again
    today it is another run (the new default changes the numbers), and `dsd2 run` says so, naming
    the earlier folder, instead of silently training a second curve beside it."""
    from dsd2.imp import checks

    from conftest import TINY

    overrides = [*TINY, "prune.allocation=channel_uniform", "prune.rounds=1"]
    old = tiny_config("prune.allocation=channel_uniform", "prune.include_classifier=true", "prune.rounds=1")
    monkeypatch.setattr(checks, "prunes_classes", lambda *a: None)  # as before the refusal
    earlier = imp.run(old, tmp_path)
    monkeypatch.undo()
    code, text = _cli("run", "tiny_mnist1d", *overrides, "--out", str(tmp_path), "-q")
    assert code == 0, text
    assert "a new run: structured allocations now leave the classifier out" in " ".join(text.split())
    assert earlier.name in text.replace("\n", "")
    code, text = _cli("run", "tiny_mnist1d", *overrides, "--out", str(tmp_path), "-q")  # shown: no note
    assert code == 0 and "a new run" not in text, text
