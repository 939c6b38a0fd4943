"""The baseline for benchmarks/fused_exactness.py: how far two *unfused* runs of the same config
drift apart when only the thread count differs (1 vs 2), on the shortened demo setting.
Prints one JSON line per round (largest |difference| of the accuracy columns, of train_loss,
and the masks overlap). Usage: python benchmarks/fused_threads_baseline.py"""

import json
import tempfile
from pathlib import Path

from dsd2 import imp, store
from dsd2.config import load_config

OVERRIDES = ["train.epochs=4", "prune.rounds=4"]

with tempfile.TemporaryDirectory() as tmp:
    a = imp.run(load_config("demo_fmnist", [*OVERRIDES, "train.threads=1"]), Path(tmp) / "a")
    b = imp.run(load_config("demo_fmnist", [*OVERRIDES, "train.threads=2"]), Path(tmp) / "b")
    for x, y in zip(store.read_csv(a / "rounds.csv"), store.read_csv(b / "rounds.csv")):
        ma = store.load_tensors(store.round_dir(a, x["round"]) / "masks.safetensors")
        mb = store.load_tensors(store.round_dir(b, x["round"]) / "masks.safetensors")
        overlap = sum(int((ma[k] & mb[k]).sum()) for k in ma) / sum(int((ma[k] | mb[k]).sum()) for k in ma)
        acc = max(abs(x[c] - y[c]) for c in ("train_acc_noisy", "val_acc", "test_acc"))
        print(
            json.dumps(
                {
                    "round": x["round"],
                    "max_abs_diff_acc": acc,
                    "train_loss_diff": abs(x["train_loss"] - y["train_loss"]),
                    "mask_overlap": overlap,
                }
            )
        )
