"""Your model on your image folder: vanilla IMP and DSD², early stop, export, load and predict.

    python examples/own_model_own_images.py [--out runs/example] [--train 3000] [--rounds 10] [--epochs 10]

Works as written on 2 CPU cores in a few minutes. It:

1. writes a small image folder itself (Fashion-MNIST saved as PNGs, ``train/<class>/*.png`` and
   ``test/<class>/*.png``; ``make data`` or ``dsd2 fetch fashion_mnist --download`` provides it),
   the layout your own images would have (docs/data.md);
2. trains your own model (``my_cnn`` from the plugin ``examples/my_dsd2_plugin.py``) with vanilla
   IMP under 40% label noise (the teacher), then the DSD² student distilled from the teacher's
   best round, with the entropy early-stop rule (``dsd2.pipeline``);
3. exports the student's kept round (``last_good``: the sparsest round before the stop) with the
   masks folded in, compressed, and as ONNX when onnxruntime is installed (``dsd2.export``);
4. loads it back (``dsd2.load_exported``, and onnxruntime on the ONNX file) and predicts the test
   images from their PNG files.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dsd2
from dsd2.data import load_dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the plugin module lives next to this script
PLUGIN = "my_dsd2_plugin"


def write_png_folder(root: Path, n_train: int, n_test: int) -> list[str]:
    """Fashion-MNIST's first ``n_train``/``n_test`` images as PNGs under ``root``; the class folders."""
    data = load_dataset("fashion_mnist", "./data", val_size=0)
    classes = [f"{i}_{name.lower().replace('/', '_').replace(' ', '_')}" for i, name in enumerate(data.class_names or [])]
    for split, x, y, n in (("train", data.train_x, data.train_y, n_train), ("test", data.test_x, data.test_y, n_test)):
        for i in range(min(n, len(y))):
            folder = root / split / classes[int(y[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return classes


def study_config(root: Path, rounds: int, epochs: int) -> dict:
    return {
        "name": "my_cnn_images",
        "plugins": [PLUGIN],
        "dataset": {"name": "image_folder", "root": str(root), "image_size": 28, "loader": "memory", "val_size": 500, "augment": False},
        "noise": {"kind": "symmetric", "rate": 0.4},
        "model": {"name": "my_cnn", "width": 16},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "device": "cpu",
        },
        "prune": {"rounds": rounds, "rate": 0.3},
        "distill": {"round": "best", "alpha": 1.0, "temperature": 10.0},
        "early_stop": {"rule": "entropy", "select": "last_good", "tolerance": 0.03},
    }


def test_images(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files = sorted((root / "test").glob("*/*.png"))
    return files, np.array([classes.index(f.parent.name) for f in files])


def as_batch(files: list[Path], info: dict) -> np.ndarray:
    """What the exported model expects: RGB float in [0, 1], normalised by model.json's mean/std."""
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files]).transpose(0, 3, 1, 2)
    mean = np.array(info["mean"], dtype=np.float32)[:, None, None]
    std = np.array(info["std"], dtype=np.float32)[:, None, None]
    return (x - mean) / std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/example"))
    ap.add_argument("--train", type=int, default=3000, help="training images written (500 of them become the validation split)")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()

    root = args.out / "images"
    classes = write_png_folder(root, args.train, args.test)
    print(f"1. wrote {args.train} training and {args.test} test PNGs under {root} ({len(classes)} classes)")

    study = dsd2.pipeline(study_config(root, args.rounds, args.epochs), out=args.out / "runs")
    for label, res in (("teacher (vanilla IMP)", study.teacher), ("DSD² student", study.student)):
        curve = ", ".join(f"{r.sparsity:.0%}:{r.test_acc:.1%}" for r in res.rows)
        print(f"2. {label}: {res.run_dir}\n   sparsity:test accuracy per round: {curve}")

    onnx = importlib.util.find_spec("onnxruntime") is not None
    exp = dsd2.export(study.student.run_dir, args.out / "export", round="last_good", compressed=True, onnx=onnx, force=True)
    print(
        f"3. exported round {exp.round} ({exp.sparsity:.1%} sparse) to {exp.dir}: weights {exp.weights_bytes:,} bytes "
        f"compressed vs {exp.dense_bytes:,} dense" + (f"; ONNX max |diff| {exp.onnx_max_abs_diff:.1e}" if onnx else "")
    )

    files, labels = test_images(root, exp.info["class_names"])
    x = as_batch(files, exp.info)
    model = dsd2.load_exported(exp.dir)
    with torch.inference_mode():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    print(f"4. load_exported: test accuracy {np.mean(pred == labels):.1%} on {len(files)} PNG files")
    if onnx:
        import onnxruntime as ort

        session = ort.InferenceSession(str(exp.dir / "model.onnx"))
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        agree = np.mean(logits.argmax(1) == pred)
        print(f"   onnxruntime: test accuracy {np.mean(logits.argmax(1) == labels):.1%}, agrees with PyTorch on {agree:.1%}")


if __name__ == "__main__":
    main()
