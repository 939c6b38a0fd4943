"""A dsd2 plugin: your own model, registered under a name the config can use.

dsd2 imports the modules listed in a config's ``plugins`` (or given with ``--plugin``) before
it validates the config, so ``model.name: my_cnn`` works in ``dsd2 run``, ``resume``,
``pipeline``, ``sweep``, ``report`` and ``export`` (docs/plugins.md). The builder receives the
data's shape; its other arguments are the model's options (``model.width: 32``).
"""

from __future__ import annotations

from torch import nn

from dsd2.models import MODELS, register_model


def my_cnn(num_classes: int, in_channels: int, input_size: int, width: int = 16) -> nn.Module:
    """Two conv blocks and a linear head: every ReLU its own module (one entropy layer each)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


if "my_cnn" not in MODELS:  # importing the plugin twice (a script and a config) registers it once
    register_model("my_cnn", input_shape=(3, 28, 28))(my_cnn)
