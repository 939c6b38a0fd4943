"""Image folders (dataset.name=image_folder): layout, the memory and stream data paths, their
reproducibility contract (workers, resume), unreadable files, and the sweep's cost from file counts."""

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dsd2 import checkpoint, imp, rundir, store
from dsd2.cli import main
from dsd2.config import apply_overrides, load_config
from dsd2.data import load_dataset
from dsd2.data.image_folder import (
    EVAL,
    TRAIN,
    ImageFiles,
    ImageLoader,
    choose_loader,
    decode_rgb,
    sample_seeds,
    scan_folder,
)
from dsd2.data.testing import write_image_folder
from dsd2.errors import UserError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes, 10 train + 4 test images each, PNG and JPEG in turn, 8..40 px, width and height apart."""
    root = tmp_path_factory.mktemp("imgs")
    write_image_folder(root, n_train=10, n_test=4)
    return root


def run_args(root, loader, *extra):
    return [
        "name=imf",
        "dataset.name=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=16",
        f"dataset.loader={loader}",
        "dataset.workers=0",
        "dataset.val_size=6",
        "model.name=lenet5",
        "train.epochs=2",
        "train.batch_size=8",
        "train.optimizer=adam",
        "train.lr=0.001",
        "train.schedule=constant",
        "train.device=cpu",
        "train.eval_batch_size=7",
        "prune.rounds=2",
        "prune.rate=0.5",
        "noise.rate=0.2",
        "entropy.batch_size=5",
        *extra,
    ]


def config(root, loader, *extra):
    return load_config(None, run_args(root, loader, *extra))


def config_file(path, root, loader, *extra):
    """The run's config as a YAML file (for the command line)."""
    path.write_text(yaml.safe_dump(apply_overrides({}, run_args(root, loader, *extra))))
    return str(path)


def same_rounds(a, b, rounds):
    assert (a / "rounds.csv").read_bytes() == (b / "rounds.csv").read_bytes()
    for i in range(rounds + 1):
        for name in ("state.safetensors", "masks.safetensors"):
            x = store.load_tensors(rundir.round_dir(a, i) / name)
            y = store.load_tensors(rundir.round_dir(b, i) / name)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), (i, name)


# ----------------------------------------------------------------------------- layout


def test_layout_classes_order_and_mixed_files(folder, tmp_path):
    f = scan_folder(folder)
    assert f.classes == ("ant", "bee", "cat") and (f.n_train, f.n_val, f.n_test) == (30, 0, 12)
    rel = [f.table.relative(i) for i in range(len(f.table))]
    assert {r.rsplit(".", 1)[1] for r in rel} == {"png", "jpg"}
    # rows interleave the classes: the k-th file of every class before the (k+1)-th
    assert f.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert rel[:3] == ["train/ant/img_000.png", "train/bee/img_000.png", "train/cat/img_000.png"]
    # the symmetric rule flips "the first eps N": with this order that is about eps of every class
    assert np.bincount(f.labels[:15], minlength=3).tolist() == [5, 5, 5]
    sizes = {Image.open(folder / r).size for r in rel}
    assert len(sizes) > 10 and min(min(s) for s in sizes) >= 8 and max(max(s) for s in sizes) <= 40

    # val/ is the test split when there is no test/ (ImageNet); hidden entries and non-images are skipped
    other = tmp_path / "inet"
    write_image_folder(other, n_train=3, n_test=2, test_folder="val")
    (other / "train" / "ant" / "notes.txt").write_text("not an image")
    (other / "train" / ".cache").mkdir()
    (other / "train" / ".cache" / "x.png").write_bytes(b"junk")
    (other / "train" / "bee" / ".hidden.jpg").write_bytes(b"junk")
    g = scan_folder(other)
    assert (g.n_train, g.n_val, g.n_test, g.test_folder) == (9, 0, 6, "val")


def test_layout_errors(tmp_path):
    with pytest.raises(UserError, match="no train/ folder"):
        scan_folder(tmp_path)
    write_image_folder(tmp_path / "a", n_train=2, n_test=1)
    (tmp_path / "a" / "test" / "dog").mkdir()
    with pytest.raises(UserError, match=r"dog is not a class of"):
        scan_folder(tmp_path / "a")
    write_image_folder(tmp_path / "b", n_train=2, n_test=1)
    (tmp_path / "b" / "train" / "emu").mkdir()
    with pytest.raises(UserError, match=r"emu holds no image"):
        scan_folder(tmp_path / "b")
    (tmp_path / "c" / "train" / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="no test/ \\(or val/\\) folder"):
        scan_folder(tmp_path / "c")
    with pytest.raises(UserError, match="needs dataset.root"):
        load_dataset("image_folder", None)
    with pytest.raises(UserError, match="does not apply to dataset mnist1d"):
        load_dataset("mnist1d", None, options={"image_size": 32})
    with pytest.raises(UserError, match="image_size"):
        imp.build_data(load_config("tiny_mnist1d", ["dataset.image_size=32"]))


def test_an_image_folder_gone_from_its_place_says_how_to_repoint_it(folder, tmp_path, capsys):
    # before: "dataset.root=... is not a folder; expected root/train/<class>/..." for a run whose
    # images moved, with no word of giving the run their new place
    moved = tmp_path / "imgs"
    shutil.copytree(folder, moved)
    # train.threads=1: no "machine busy" line on a loaded machine
    cfg = config_file(tmp_path / "imf.yaml", moved, "memory", "prune.rounds=1", "train.epochs=1", "train.threads=1")
    assert main(["run", cfg, "--out", str(tmp_path / "runs"), "-q"]) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    moved.rename(tmp_path / "imgs2")
    assert main(["resume", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"dataset.root={moved} is not a folder (nothing there)" in err and "dataset.root=NEW" in err and len(err.splitlines()) == 1
    assert main(["resume", str(run_dir), f"dataset.root={tmp_path / 'imgs2'}", "-q"]) == 0
    # reusing the run at the images' new place is said, as for a label file (it was silent)
    out = capsys.readouterr().out
    assert f"dataset.root now {tmp_path / 'imgs2'} (was {moved}; the same images" in " ".join(out.split())
    shutil.copytree(tmp_path / "imgs2", tmp_path / "imgs3")
    assert main(["run", cfg, f"dataset.root={tmp_path / 'imgs3'}", "--out", str(tmp_path / "runs"), "-q"]) == 0
    assert f"dataset.root now {tmp_path / 'imgs3'}" in " ".join(capsys.readouterr().out.split())
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]  # reused: no new folder


def test_fixed_validation_folder(tmp_path):
    """val/ next to test/ is the validation split (Flowers-102's official train/val/test)."""
    write_image_folder(tmp_path, n_train=4, n_val=2, n_test=3)
    d = load_dataset("image_folder", tmp_path, seed=3, options={"image_size": 16, "loader": "stream"})
    assert d.num_train == 12 and d.val_y.numel() == 6 and d.test_y.numel() == 9
    assert d.val_idx.tolist() == list(range(12, 18)) and d.train_idx.tolist() == list(range(12))
    assert all(d.val_x.path(i).split("/")[-3] == "val" for i in range(6))
    assert load_dataset("image_folder", tmp_path, val_size=0, options={"image_size": 16, "loader": "stream"}).val_y.numel() == 0
    sub = load_dataset("image_folder", tmp_path, train_subset=5, seed=1, options={"image_size": 16, "loader": "stream"})
    assert sub.num_train == 5 and set(sub.train_idx.tolist()) <= set(range(12))
    with pytest.raises(UserError, match="fixed validation split"):
        load_dataset("image_folder", tmp_path, val_size=3, options={"image_size": 16, "loader": "stream"})


def test_auto_chooses_by_decoded_size(folder):
    assert choose_loader("auto", 1000, 224, 4.0) == "memory"  # 0.15 GB
    assert choose_loader("auto", 1_281_167, 224, 4.0) == "stream"  # ImageNet: 193 GB
    assert choose_loader("stream", 1, 8, 4.0) == "stream"
    small = load_dataset("image_folder", folder, val_size=6, options={"image_size": 16, "memory_budget_gb": 1e-9})
    big = load_dataset("image_folder", folder, val_size=6, options={"image_size": 16, "memory_budget_gb": 1.0, "workers": 0})
    assert isinstance(small.train_x, ImageFiles) and small.streamed
    assert isinstance(big.train_x, torch.Tensor) and big.train_x.shape == (24, 3, 16, 16) and big.train_x.dtype == torch.uint8
    # same split, labels and class names on both paths; the stream path's augmentation runs in the workers
    assert torch.equal(small.train_idx, big.train_idx) and torch.equal(small.train_y, big.train_y)
    assert small.class_names == big.class_names == ("ant", "bee", "cat")
    assert small.augment.resized_crop and not big.augment.resized_crop and big.augment.crop_padding == 2


def test_transforms_and_seeded_samples(folder):
    """Evaluation = Resize(S/0.875) + CenterCrop(S), memory path = Resize(S) + CenterCrop(S) (torchvision v2);
    a training sample depends on its seed only."""
    from torchvision.transforms import v2

    d = load_dataset("image_folder", folder, val_size=0, options={"image_size": 16, "loader": "stream"})
    files = d.train_x
    loader = ImageLoader(files.table, 16, augment=d.augment, workers=0)
    rows = files.rows[:5]
    (ev,) = loader.batches(rows, EVAL, None, 8)
    for i, r in enumerate(rows):
        img = decode_rgb(files.table.path(int(r)))
        assert torch.equal(ev[i], v2.CenterCrop(16)(v2.Resize(18)(img)))
    mem = load_dataset("image_folder", folder, val_size=0, options={"image_size": 16, "loader": "memory", "workers": 0})
    img = decode_rgb(files.table.path(int(rows[0])))
    assert torch.equal(mem.train_x[0], v2.CenterCrop(16)(v2.Resize(16)(img)))

    seeds = sample_seeds(123, np.arange(5))
    assert len(set(seeds.tolist())) == 5 and seeds.dtype == np.uint64
    (a,) = loader.batches(rows, TRAIN, seeds, 8)
    torch.manual_seed(0)  # the global RNG's state does not matter
    (c,) = loader.batches(rows, TRAIN, seeds, 5)
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, c)
    assert not torch.equal(a, ev)  # augmented
    (other,) = loader.batches(rows, TRAIN, sample_seeds(124, np.arange(5)), 8)
    assert not torch.equal(a, other)
    loader.close()


def test_train_samples_do_not_depend_on_batching(folder):
    d = load_dataset("image_folder", folder, val_size=0, options={"image_size": 16, "loader": "stream"})
    files = d.train_x
    loader = ImageLoader(files.table, 16, augment=d.augment, workers=0)
    rows, seeds = files.rows[:6], sample_seeds(7, np.arange(6))
    whole = torch.cat(list(loader.batches(rows, TRAIN, seeds, 6)))
    pairs = torch.cat(list(loader.batches(rows, TRAIN, seeds, 2)))
    backwards = torch.cat(list(loader.batches(rows[::-1].copy(), TRAIN, seeds[::-1].copy(), 4)))
    assert torch.equal(whole, pairs) and torch.equal(whole, backwards.flip(0))


# ----------------------------------------------------------------------------- runs on both paths


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {mode: imp.run(config(folder, mode), out / mode) for mode in ("memory", "stream")}


def test_tiny_runs_on_both_paths(runs, folder):
    for mode, run_dir in runs.items():
        rows = store.read_csv(run_dir / "rounds.csv")
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert all(0.0 <= r[c] <= 1.0 for r in rows for c in ("train_acc_noisy", "val_acc", "test_acc"))
        assert all(r["entropy"] is not None for r in rows)
        data = store.read_json(run_dir / "meta.json")["data"]
        assert data["loader"] == mode
        assert data["class_names"] == ["ant", "bee", "cat"]
        assert data["input_shape"] == [3, 16, 16] and (data["in_channels"], data["input_size"], data["num_classes"]) == (3, 16, 3)
        assert data["mean"] == [0.485, 0.456, 0.406] and data["std"] == [0.229, 0.224, 0.225]
        assert data["files_sha256"] == scan_folder(folder).table.digest()
        labels = store.load_tensors(run_dir / "labels.safetensors")
        assert labels["train_idx"].numel() == 24 and labels["flipped"].tolist() == list(range(4))
        model, masks, _ = rundir.load_round_model(run_dir, 2)
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    a, b = (store.load_tensors(runs[m] / "labels.safetensors") for m in ("memory", "stream"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same split and noise on both paths


def test_stream_results_do_not_depend_on_workers(runs, folder, tmp_path):
    two = imp.run(config(folder, "stream", "dataset.workers=2"), tmp_path)
    assert two.name == runs["stream"].name  # dataset.workers is not part of the run id
    same_rounds(two, runs["stream"], 2)


@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_resume_equals_uninterrupted(loader, runs, folder, tmp_path):
    """1 round, then extended to 2 rounds with a kill inside round 2 (after its first epoch
    checkpoint), then resumed: the rounds equal the uninterrupted 2-round run bit for bit.
    (The memory path checks the channels_last conv net's optimiser state after a resume.)"""
    ref = runs[loader]
    first = imp.run(config(folder, loader, "prune.rounds=1"), tmp_path)
    assert rundir.finished_rounds(first) == [0, 1]

    class Boom(Exception):
        pass

    real = checkpoint.save_epoch_state

    def save_then_die(path, **kw):
        real(path, **kw)
        raise Boom

    checkpoint.save_epoch_state = save_then_die
    try:
        with pytest.raises(Boom):
            imp.run(config(folder, loader, "train.checkpoint_interval_s=0"), tmp_path)
    finally:
        checkpoint.save_epoch_state = real
    assert checkpoint.partial_path(first, 2).is_file()
    assert imp.run(config(folder, loader), tmp_path) == first
    same_rounds(first, ref, 2)
    assert not list(first.glob("round_*.partial.safetensors"))


def test_resume_refuses_a_changed_folder(folder, tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, n_train=10, n_test=4)
    cfg = config(root, "stream", "prune.rounds=0")
    run_dir = imp.run(cfg, tmp_path / "runs")
    (root / "train" / "cat" / "img_009.jpg").rename(root / "train" / "cat" / "img_099.jpg")  # same labels, other files
    with pytest.raises(UserError, match="file list changed|trained on other data"):
        imp.run(config(root, "stream", "prune.rounds=1"), tmp_path / "runs")
    assert rundir.finished_rounds(run_dir) == [0]


def test_kd_student_on_the_stream_path(runs, folder, tmp_path):
    student = imp.run(config(folder, "stream", f"distill.teacher={runs['stream']}", "distill.round=dense", "prune.rounds=1"), tmp_path)
    assert store.read_json(student / "teacher.json")["round"] == 0
    with pytest.raises(UserError, match="input shape"):
        imp.run(config(folder, "stream", f"distill.teacher={runs['stream']}", "distill.round=dense", "dataset.image_size=20"), tmp_path)


# ----------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("loader, workers", [("memory", 0), ("stream", 0), ("stream", 1)])
def test_corrupt_image_is_exit_2_naming_it(loader, workers, tmp_path, capsys):
    root = tmp_path / "imgs"
    write_image_folder(root, n_train=4, n_test=2)
    bad = root / "train" / "bee" / "img_001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    cfg = config_file(tmp_path / "run.yaml", root, loader, f"dataset.workers={workers}", "dataset.val_size=3")
    assert main(["run", cfg, "--out", str(tmp_path / "runs"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"cannot decode image {bad}" in " ".join(err.split()) and "Traceback" not in err  # one message (wrapped to the terminal)
    with pytest.raises(UserError, match="img_001.jpg"):
        decode_rgb(str(bad))
    (root / "train" / "bee" / "img_002.png").write_bytes(b"")  # empty file
    with pytest.raises(UserError, match="img_002.png"):
        decode_rgb(str(root / "train" / "bee" / "img_002.png"))


def test_other_image_types_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "b.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "c.tif")
    Image.fromarray(rgb).convert("P").save(tmp_path / "d.gif")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "e.png")  # 16-bit grey
    for name in ("a.bmp", "b.png", "c.tif", "d.gif", "e.png"):
        x = decode_rgb(str(tmp_path / name))
        assert x.shape == (3, 9, 7) and x.dtype == torch.uint8, name
    assert torch.equal(decode_rgb(str(tmp_path / "a.bmp")), torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(decode_rgb(str(tmp_path / "e.png"))[0], torch.from_numpy(rgb[:, :, 0]))


# ----------------------------------------------------------------------------- the sweep's cost


def test_sweep_cost_counts_the_files(folder, tmp_path):
    from dsd2.sweep.cost import train_examples
    from dsd2.sweep.shapes import dataset_info, has_model_facts, input_shape

    cfg = config(folder, "stream")
    assert train_examples(cfg) == 24 and input_shape(cfg) == (3, 16, 16) and has_model_facts(cfg)
    assert dataset_info(cfg)["num_classes"] == 3
    write_image_folder(tmp_path / "fl", n_train=4, n_val=2, n_test=3)
    assert train_examples(config(tmp_path / "fl", "stream", "dataset.val_size=null")) == 12  # val/ is the validation split
    missing = config(tmp_path / "nowhere", "stream")
    assert not has_model_facts(missing)  # validation: no meta model, no error
    with pytest.raises(UserError, match="cost estimate needs.*not a folder"):
        train_examples(missing)


# ----------------------------------------------------------------------------- a real kill


@pytest.mark.slow
def test_sigkill_with_loader_workers_then_resume(runs, folder, tmp_path):
    """SIGKILL of a streaming run with 2 loader workers after its first epoch checkpoint; `dsd2 resume`
    finishes it equal to the uninterrupted run."""
    out = tmp_path / "killed"
    cfg = config_file(tmp_path / "run.yaml", folder, "stream", "dataset.workers=2", "train.checkpoint_interval_s=0")
    args = [sys.executable, "-m", "dsd2.cli", "run", cfg, "--out", str(out), "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = out / runs["stream"].name
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(run_dir.glob("round_*.partial.safetensors")):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(rundir.finished_rounds(run_dir)) < 3
    res = subprocess.run([sys.executable, "-m", "dsd2.cli", "resume", str(run_dir), "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    same_rounds(run_dir, runs["stream"], 2)
