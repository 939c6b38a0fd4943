"""Register your own model and run a small IMP study with it (works as written).

    python examples/custom_model.py [--out runs] [--rounds 3]

The builder receives the data's shape and the options from the config (`model.<option>`);
`dsd2.models.prunable_weights` finds its Conv/Linear weights, and every `nn.ReLU` module is
a layer of the activation-entropy measure.
"""

from __future__ import annotations

import argparse

from torch import nn

from dsd2 import imp, store
from dsd2.config import load_config
from dsd2.models import register_model


@register_model("tiny_resmlp")
def tiny_resmlp(num_classes: int, in_channels: int, input_size: int, width: int = 64, blocks: int = 2) -> nn.Module:
    """An MLP with residual blocks, for 1-D inputs such as MNIST-1D (input_size = length)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(width, width)
            self.act = nn.ReLU()

        def forward(self, x):
            return x + self.act(self.fc(x))

    return nn.Sequential(
        nn.Flatten(), nn.Linear(input_size, width), nn.ReLU(), *[Block() for _ in range(blocks)], nn.Linear(width, num_classes)
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    # "model={...}" replaces the whole section (the preset's mlp options do not apply to this model)
    cfg = load_config("tiny_mnist1d", ["name=custom_model", "model={name: tiny_resmlp, width: 32}", f"prune.rounds={args.rounds}"])
    run_dir = imp.run(cfg, args.out)
    for row in store.read_csv(run_dir / "rounds.csv"):
        print(
            f"round {row['round']}: sparsity {100 * row['sparsity']:.1f}%, test {100 * row['test_acc']:.1f}%, entropy {row['entropy']:.3f}"
        )
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
