"""Plain MLP for 1-D inputs (MNIST-1D: N x L floats, L = ``input_size`` = 40).

flatten -> [Linear -> ReLU] per entry of ``hidden`` -> Linear(., K). ``in_channels`` is
ignored (an N x 1 x L input flattens to L as well). Each ReLU is its own
``nn.ReLU(inplace=False)`` module (one "layer" for the activation entropy).
"""

from __future__ import annotations

from torch import Tensor, nn

from dsd2.errors import UserError
from dsd2.models.registry import register_model


class MLP(nn.Module):
    def __init__(self, num_classes: int, in_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@register_model("mlp", input_shape=(40,))
def mlp(num_classes: int, in_channels: int, input_size: int, hidden: tuple[int, ...] = (512, 512)) -> nn.Module:
    """MLP input_size -> hidden... -> num_classes (MNIST-1D: 40-512-512-10)."""
    if any(h < 1 for h in hidden):
        raise UserError(f"model 'mlp': every hidden width must be a positive integer, got hidden={hidden!r}.")
    return MLP(num_classes, input_size, tuple(hidden))
