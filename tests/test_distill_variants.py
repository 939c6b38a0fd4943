"""Distillation variants (docs/distillation.md): several teachers, self-distillation."""

import pytest
import torch
import torch.nn.functional as F

from dsd2 import imp, rundir, store
from dsd2.distill import KDObjective, TeacherEnsemble, kd_loss, mixture_log_probs
from dsd2.distill.feature import make_adapter
from dsd2.errors import UserError
from dsd2.flops import step_flops

from conftest import run_interrupted, tiny_config


def tiny(*extra):
    return tiny_config("model.hidden=[16]", "entropy.enabled=false", *extra)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return imp.run(tiny("name=teacher"), tmp_path_factory.mktemp("t"))


def two_teachers(run_dir, *extra):
    pair = f"distill.teachers=[{{run: {run_dir}, round: dense}}, {{run: {run_dir}, round: best, weight: 3}}]"
    return tiny("name=student", pair, "prune.rounds=1", *extra)


# ----------------------------------------------------------------------------- several teachers


def test_mixture_target_is_the_hand_computed_weighted_average():
    g = torch.Generator().manual_seed(0)
    s, t1, t2 = (torch.randn(5, 4, generator=g) * 3 for _ in range(3))
    y = torch.randint(0, 4, (5,), generator=g)
    T, alpha = 4.0, 0.7
    p = 0.25 * F.softmax(t1 / T, dim=1) + 0.75 * F.softmax(t2 / T, dim=1)  # weights 1 and 3
    log_p = mixture_log_probs([t1, t2], [1.0, 3.0], T)
    assert torch.allclose(log_p.exp(), p, atol=1e-6)
    log_s = F.log_softmax(s / T, dim=1)
    by_hand = alpha * T * T * (p * (p.log() - log_s)).sum(1).mean() + (1 - alpha) * F.cross_entropy(s, y)
    obj = KDObjective([torch.nn.Identity(), torch.nn.Identity()], alpha=alpha, temperature=T, cached_logits=[t1, t2], weights=[1.0, 3.0])
    got = obj(s, y, s, torch.arange(5))
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_one_teacher_in_the_list_form_is_plain_kd():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    one = kd_loss(s, t, y)
    mixed = KDObjective([torch.nn.Identity(), torch.nn.Identity()], alpha=0.8, temperature=10.0, weights=[1.0, 1.0])(s, y, t)
    assert mixed.item() == pytest.approx(one.item(), rel=1e-5)  # two identical teachers = that teacher


def test_teacher_forms_are_exclusive_and_self_is_not_a_list_entry(teacher):
    with pytest.raises(UserError, match="exclusive"):
        tiny(f"distill.teacher={teacher}", f"distill.teachers=[{{run: {teacher}}}]")
    with pytest.raises(UserError, match="not an entry"):
        tiny("distill.teachers=[{run: self}]")
    with pytest.raises(UserError, match="weight"):
        tiny(f"distill.teachers=[{{run: {teacher}, weight: 0}}]")


def test_dense_and_best_of_one_run_as_two_teachers(teacher, tmp_path):
    run_dir = imp.run(two_teachers(teacher), tmp_path)
    info = store.read_json(run_dir / "teacher.json")
    assert isinstance(info, list) and [t["round"] for t in info][0] == 0
    assert [t["weight"] for t in info] == [0.25, 0.75]
    assert all(len(t["digest"]) == 64 for t in info)
    rows = rundir.read_rounds(run_dir)
    assert len(rows) == 2
    # the accounting adds both teachers' forwards: student step + 2 teacher forwards (same MLP)
    ctx = imp.prepare(rundir.read_config(run_dir), run_dir)
    teacher = ctx.teaching.teacher
    assert isinstance(teacher, TeacherEnsemble) and len(teacher.members) == 2
    example = ctx.train_batches.example(2)
    alone = step_flops(teacher.members[0], example, teacher=None)
    both = step_flops(ctx.model, example, teacher=teacher)
    assert both.teacher_fwd == 2 * alone.dense_fwd
    vanilla = rundir.read_rounds(imp.run(tiny("name=vanilla", "prune.rounds=1"), tmp_path))
    # unaugmented MNIST-1D: the teachers' logits are cached, one pass each charged to round 0
    n, pf = ctx.train_batches.num_rows, 1e15
    extra = rows[0]["round_pflops_dense"] - vanilla[0]["round_pflops_dense"]
    assert extra * pf == pytest.approx(2 * alone.dense_fwd / 2 * n, rel=1e-6)
    assert rows[1]["round_pflops_dense"] == pytest.approx(vanilla[1]["round_pflops_dense"], rel=1e-9)


def test_resumed_multi_teacher_student_refuses_a_changed_teacher(teacher, tmp_path):
    import shutil

    t = tmp_path / "teacher"
    shutil.copytree(teacher, t)
    cfg = two_teachers(t)
    run_dir = imp.run(cfg, tmp_path)
    shutil.rmtree(store.round_dir(run_dir, 1))
    state = store.round_dir(t, 0) / "state.safetensors"
    tensors = store.load_tensors(state)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    store.save_tensors(state, tensors)
    store.write_manifest(store.round_dir(t, 0), ["state.safetensors", "masks.safetensors", "metrics.json"])
    with pytest.raises(UserError, match="changed since this student started"):
        imp.run(cfg, tmp_path)


# ----------------------------------------------------------------------------- self-distillation


@pytest.fixture(scope="module")
def self_run(tmp_path_factory):
    cfg = tiny("name=selfkd", "distill.teacher=self")
    return cfg, imp.run(cfg, tmp_path_factory.mktemp("s"))


def test_self_distillation_teacher_is_the_previous_round(self_run, monkeypatch):
    cfg, run_dir = self_run
    assert store.read_json(run_dir / "teacher.json")["self"] is True
    ctx = imp.prepare(cfg, run_dir)
    assert ctx.teaching.teacher is None  # round 0 has no teacher: plain CE
    t = imp.loop.round_teaching(ctx, 1, ctx.teaching)
    saved = store.load_tensors(store.round_dir(run_dir, 0) / "state.safetensors")
    got = t.teacher.state_dict()
    assert saved.keys() == got.keys() and all(torch.equal(saved[k], got[k].cpu()) for k in saved)
    assert not any(p.requires_grad for p in t.teacher.parameters())
    assert all(m.all() for m in t.masks.values())  # round 0 is dense
    assert ctx.teaching.teacher is None  # the run's context is unchanged: the teaching is the round's


def test_self_distillation_differs_from_vanilla_from_round_1_only(self_run, tmp_path):
    cfg, run_dir = self_run
    vanilla = rundir.read_rounds(imp.run(tiny("name=selfkd"), tmp_path))
    rows = rundir.read_rounds(run_dir)
    assert rows[0]["val_acc"] == vanilla[0]["val_acc"]
    assert rows[0]["round_pflops_dense"] == vanilla[0]["round_pflops_dense"]
    # rounds >= 1 pay one cached pass of their teacher (the same MLP as the student): round 1's
    # teacher is dense round 0, round 2's is the half-pruned round 1 (cheaper when sparse-aware)
    extra = [
        (r["round_pflops_dense"] - v["round_pflops_dense"], r["round_pflops_sparse"] - v["round_pflops_sparse"])
        for r, v in zip(rows, vanilla)
    ]
    assert extra[1][0] > 0 and extra[1][1] == pytest.approx(extra[1][0], rel=1e-3)
    assert extra[2][0] == pytest.approx(extra[1][0], rel=1e-3) and extra[2][1] < 0.8 * extra[2][0]


def test_self_distillation_resume_gives_identical_rounds(self_run, tmp_path):
    cfg, ref_dir = self_run

    run_dir = run_interrupted(cfg, tmp_path)
    assert store.finished_rounds(run_dir) == [0, 1]
    imp.resume(run_dir)
    assert (run_dir / "rounds.csv").read_bytes() == (ref_dir / "rounds.csv").read_bytes()
    for i in range(3):
        a = store.load_tensors(store.round_dir(run_dir, i) / "state.safetensors")
        b = store.load_tensors(store.round_dir(ref_dir, i) / "state.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_self_distillation_refuses_a_round_choice():
    with pytest.raises(UserError, match="previous round"):
        tiny("distill.teacher=self", "distill.round=dense")


# ----------------------------------------------------------------------------- feature distillation


def hinted(teacher_dir, *extra):
    hint = "distill.feature={student_layer: layers.2, teacher_layer: layers.2, weight: 0.5}"
    return tiny("name=hinted", "model.hidden=[24]", f"distill.teacher={teacher_dir}", hint, "prune.rounds=1", *extra)


def test_adapter_shapes():
    g = torch.Generator().manual_seed(0)
    lin = make_adapter((8, 24), (8, 16), g)
    assert isinstance(lin, torch.nn.Linear) and tuple(lin.weight.shape) == (16, 24)
    conv = make_adapter((2, 8, 4, 4), (2, 32, 4, 4), g)
    assert isinstance(conv, torch.nn.Conv2d) and tuple(conv.weight.shape) == (32, 8, 1, 1)
    tokens = make_adapter((2, 5, 12), (2, 5, 20), g)
    assert tuple(tokens(torch.zeros(2, 5, 12)).shape) == (2, 5, 20)
    with pytest.raises(UserError, match="spatial size"):
        make_adapter((2, 8, 4, 4), (2, 8, 2, 2), g)
    # seeded: the same seed gives the same adapter
    a, b = make_adapter((1, 3), (1, 2), torch.Generator().manual_seed(5)), make_adapter((1, 3), (1, 2), torch.Generator().manual_seed(5))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_unknown_hint_layer_is_refused_with_the_names(teacher, tmp_path):
    bad = "distill.feature={student_layer: layers.9, teacher_layer: layers.2}"
    with pytest.raises(UserError, match=r"layers\.9.*not a module of the student.*layers\.1"):
        imp.run(tiny("name=bad", f"distill.teacher={teacher}", bad), tmp_path)
    with pytest.raises(UserError, match="needs one teacher"):
        tiny(f"distill.teachers=[{{run: {teacher}}}]", "distill.feature={student_layer: a, teacher_layer: b}")
    with pytest.raises(UserError, match="needs a teacher"):
        imp.run(tiny("name=bad", "distill.feature={student_layer: layers.2, teacher_layer: layers.2}"), tmp_path)


def test_feature_distillation_in_a_pipeline(tmp_path):
    from dsd2.study import run_pipeline

    cfg = tiny("prune.rounds=1", "distill.feature={student_layer: layers.2, teacher_layer: layers.2}")
    study = run_pipeline(cfg, out=tmp_path)
    assert store.read_json(study.student / "teacher.json")["round"] in (0, 1)
    assert (store.round_dir(study.student, 1) / "adapter.safetensors").is_file()
    assert not (store.round_dir(study.teacher, 1) / "adapter.safetensors").exists()


def test_feature_distillation_two_rounds(teacher, tmp_path):
    run_dir = imp.run(hinted(teacher), tmp_path)
    plain = rundir.read_rounds(imp.run(hinted(teacher, "distill.feature=null", "name=plain"), tmp_path))
    rows = rundir.read_rounds(run_dir)
    assert len(rows) == 2 and rows[0]["train_loss"] != plain[0]["train_loss"]
    for i in range(2):
        rd = store.round_dir(run_dir, i)
        adapter = store.load_tensors(rd / "adapter.safetensors")
        assert tuple(adapter["weight"].shape) == (16, 24)  # student hint 24 -> teacher hint 16
        assert "adapter" not in "".join(store.load_tensors(rd / "state.safetensors"))  # not in the student, not pruned
        fresh = make_adapter((1, 24), (1, 16), torch.Generator().manual_seed(imp.round_seed(0, i, stream=7)))
        assert not torch.equal(adapter["weight"], fresh.weight)  # trained from the round's seed
    # the teacher runs every step (hints are not cached): more teacher compute than cached plain KD
    assert rows[1]["round_pflops_dense"] > plain[1]["round_pflops_dense"]


def test_feature_self_distillation_resumes_mid_round_exactly(tmp_path):
    hint = "distill.feature={student_layer: layers.2, teacher_layer: layers.2}"
    cfg = tiny("name=selfhint", "distill.teacher=self", hint, "train.epochs=2", "train.checkpoint_interval_s=0")
    ref = imp.run(cfg, tmp_path / "ref")

    class Boom(Exception):
        pass

    def stop_in_round_2(round_idx, epochs, log):
        if round_idx == 2 and log.epoch == 2:  # after the epoch-1 checkpoint (adapter inside) was written
            raise Boom

    with pytest.raises(Boom):
        imp.run(cfg, tmp_path / "cut", progress=stop_in_round_2)
    run_dir = tmp_path / "cut" / cfg.run_id()
    assert (run_dir / "round_002.partial.safetensors").is_file()
    imp.resume(run_dir)
    assert (run_dir / "rounds.csv").read_bytes() == (ref / "rounds.csv").read_bytes()
    for i in range(3):
        for name in ("state.safetensors", "adapter.safetensors") if i else ("state.safetensors",):
            a = store.load_tensors(store.round_dir(run_dir, i) / name)
            b = store.load_tensors(store.round_dir(ref, i) / name)
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (store.round_dir(ref, 0) / "adapter.safetensors").exists()  # round 0 has no teacher yet


# ----------------------------------------------------------------------------- in sweeps


def test_variants_are_sweep_grid_values(tmp_path):
    from dsd2.sweep.spec import expand, load_sweep

    hint = "{student_layer: layers.2, teacher_layer: layers.2, weight: 0.1}"
    spec = load_sweep("tiny_demo", [f"sweep.grid.distill=[{{}}, {{teacher: self}}, {{teacher: self, feature: {hint}}}]"])
    cells = expand(spec)
    kinds = {(c.config.distill.self_distill, c.config.distill.feature is not None) for c in cells}
    assert {(False, False), (True, False), (True, True)} <= kinds
    assert len({c.config.run_id() for c in cells}) == len(cells)


def test_conv_hints_train_the_adapter_and_the_student():
    from dsd2.distill.feature import HintObjective

    torch.manual_seed(0)

    def net(width):
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * width, 5),
        )

    student, teacher = net(4), net(6).eval()
    x = torch.randn(8, 3, 6, 6).to(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (8,))
    obj = HintObjective(student, teacher, student_layer="1", teacher_layer="1", beta=1.0, alpha=0.5, temperature=2.0, example=x[:2], seed=3)
    assert isinstance(obj.adapter, torch.nn.Conv2d) and tuple(obj.adapter.weight.shape) == (6, 4, 1, 1)
    loss = obj(student(x), y, x)
    loss.backward()
    assert obj.adapter.weight.grad is not None and student[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    without = HintObjective(
        student, teacher, student_layer="1", teacher_layer="1", beta=0.0, alpha=0.5, temperature=2.0, example=x[:2], seed=3
    )
    obj.close()
    assert without(student(x), y, x).item() == pytest.approx(kd_loss(student(x), teacher(x), y, alpha=0.5, temperature=2.0).item())
    without.close()
    assert not student[1]._forward_hooks and not teacher[1]._forward_hooks  # closed objectives leave no hooks
