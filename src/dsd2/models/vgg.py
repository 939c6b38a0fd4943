"""VGG-like(δ, γ), the width/depth-study network of the DSD² paper.

``depth`` = δ blocks, each ``[Conv3x3(pad 1, bias) -> ReLU -> BatchNorm2d] x 2 -> MaxPool2d(2)``
(ReLU *before* BatchNorm, as in the reference). Block 1 has ``2**gamma`` channels
(γ = ``gamma``), doubling per block. Head:

* ``head="reference"`` (default): ``AdaptiveAvgPool2d(7) -> flatten -> Linear(C*49, K)``,
  exactly the reference. For δ=5 on 32x32 the 1x1 map is replicated to 7x7, so the
  classifier has 25,088 inputs (a quirk that shifts global magnitude pruning).
* ``head="compact"``: ``AdaptiveAvgPool2d(1) -> flatten -> Linear(C, K)``.

VGG-like(5, 5), 10 classes, reference head: 4,967,082 parameters, 4,961,120 prunable
weights, about 67.2 M MACs per 32x32 image.

Module layout: ``features`` is a flat ``nn.Sequential`` (conv, relu, bn, conv, relu, bn,
pool, ...), then ``pool`` and ``classifier`` (the Linear); prunable weights are
``features.0.weight``, ``features.3.weight``, ..., ``classifier.weight``. Every ReLU is
its own ``nn.ReLU(inplace=False)`` module, one "layer" for the activation entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsd2.errors import UserError
from dsd2.models.registry import register_model

HEADS = ("reference", "compact")


class VGGLike(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 5, gamma: int = 5, head: str = "reference") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, width = in_channels, 2**gamma
        for block in range(depth):
            c_out = width * 2**block
            for _ in range(2):
                conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True)
                layers += [conv, nn.ReLU(), nn.BatchNorm2d(c_out)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = 7 if head == "reference" else 1
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.classifier = nn.Linear(c_in * side * side, num_classes)
        self.depth, self.gamma, self.head = depth, gamma, head

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg_like", input_shape=(3, 32, 32))
def vgg_like(
    num_classes: int,
    in_channels: int,
    input_size: int,
    depth: int = 5,
    gamma: int = 5,
    head: str = "reference",
) -> nn.Module:
    """VGG-like(δ=depth, γ=gamma): width 2**gamma in block 1, doubling per block."""
    if depth < 1:
        raise UserError(f"model 'vgg_like': depth must be >= 1 (number of conv blocks), got {depth}.")
    if input_size < 2**depth:
        max_depth = input_size.bit_length() - 1
        raise UserError(
            f"model 'vgg_like': depth={depth} halves the image {depth} times, but input_size="
            f"{input_size} < 2**{depth}={2**depth}; use depth <= {max_depth} for {input_size}x{input_size} inputs."
        )
    if not 0 <= gamma <= 16:
        raise UserError(
            f"model 'vgg_like': gamma must be in 0..16 (block-1 width 2**gamma), got {gamma}; the paper uses 3..6 (width 8..64)."
        )
    if head not in HEADS:
        raise UserError(f"model 'vgg_like': head must be one of {', '.join(HEADS)}, got {head!r}.")
    return VGGLike(num_classes, in_channels, depth=depth, gamma=gamma, head=head)
