"""LeNet-300-100 and LeNet-5 (MNIST / Fashion-MNIST sized inputs).

Each activation is its own ``nn.ReLU(inplace=False)`` module (one "layer" for the
activation entropy). Layers sit in one ``nn.Sequential`` called ``layers``.
"""

from __future__ import annotations

from torch import Tensor, nn

from dsd2.errors import UserError
from dsd2.models.registry import register_model


class LeNet300100(nn.Module):
    """flatten -> Linear(D, 300) -> ReLU -> Linear(300, 100) -> ReLU -> Linear(100, K)."""

    def __init__(self, num_classes: int, in_features: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LeNet5(nn.Module):
    """Conv 6@5x5 pad 2 -> ReLU -> MaxPool 2 -> Conv 16@5x5 -> ReLU -> MaxPool 2 ->
    flatten -> 120 -> ReLU -> 84 -> ReLU -> K."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = (input_size // 2 - 4) // 2
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@register_model("lenet_300_100", input_shape=(1, 28, 28))
def lenet_300_100(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """LeNet-300-100 MLP on ``in_channels x input_size x input_size`` inputs (266,610
    parameters for 1x28x28 and 10 classes)."""
    return LeNet300100(num_classes, in_channels * input_size * input_size)


@register_model("lenet5", input_shape=(1, 28, 28))
def lenet5(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Classic LeNet-5 (28x28 with padding 2 on the first conv); needs input_size >= 12."""
    if input_size < 12:
        raise UserError(f"model 'lenet5' needs input_size >= 12 (two 5x5 convs and two 2x2 pools), got {input_size}.")
    return LeNet5(num_classes, in_channels, input_size)
