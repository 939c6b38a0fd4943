"""Distillation variants (docs/distillation.md): several teachers, self-distillation."""

import pytest
import torch
import torch.nn.functional as F

from dsd2 import imp, rundir, store
from dsd2.distill import KDObjective, TeacherEnsemble, kd_loss, mixture_log_probs
from dsd2.errors import UserError
from dsd2.flops import step_flops

from conftest import tiny_config


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
    assert isinstance(ctx.teacher, TeacherEnsemble) and len(ctx.teacher.members) == 2
    example = ctx.train_batches.example(2)
    alone = step_flops(ctx.teacher.members[0], example, teacher=None)
    both = step_flops(ctx.model, example, teacher=ctx.teacher)
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
    assert ctx.teacher is None  # round 0 has no teacher: plain CE
    imp._teach_from_round_before(ctx, 1)
    saved = store.load_tensors(store.round_dir(run_dir, 0) / "state.safetensors")
    got = ctx.teacher.state_dict()
    assert saved.keys() == got.keys() and all(torch.equal(saved[k], got[k].cpu()) for k in saved)
    assert not any(p.requires_grad for p in ctx.teacher.parameters())
    assert all(m.all() for m in ctx.teacher_masks.values())  # round 0 is dense


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

    class Boom(Exception):
        pass

    def stop_after_round_1(row):
        if row["round"] == 1:
            raise Boom

    with pytest.raises(Boom):
        imp.run(cfg, tmp_path, on_round=stop_after_round_1)
    run_dir = tmp_path / cfg.run_id()
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
