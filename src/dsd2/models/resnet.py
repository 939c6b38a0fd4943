"""ResNets, built on torchvision's ``ResNet``.

Registered names:

* ``resnet18_cifar`` -- ResNet-18 with a 3x3 stride-1 stem conv (no bias) + BN + ReLU for
  32x32 inputs. ``maxpool=True`` (default) keeps torchvision's 3x3/2 max-pool after the
  stem, exactly as the reference DSD² code does (layer1 runs at 16x16 on 32x32 input,
  about 140 M MACs/image). ``maxpool=False`` replaces it by ``nn.Identity`` as in He et
  al. and most CIFAR ResNets (layer1 at 32x32, about 4x the compute). Both variants have
  11,173,962 parameters for 10 classes.
* ``resnet18``, ``resnet50`` -- torchvision's ImageNet-stem ResNets (7x7/2 conv +
  max-pool), random init (no pretrained weights).

``in_channels != 3`` replaces the stem conv. A replaced stem conv is initialised like
torchvision (and the reference) initialise every conv: Kaiming normal, fan_out, ReLU.

Activations: torchvision's blocks call one ``self.relu`` (inplace=True) two or three times.
Here every ReLU call site has its own ``nn.ReLU(inplace=False)`` module (``relu1``,
``relu2`` [, ``relu3``] in the blocks, ``relu`` after the stem), so that each ``nn.ReLU``
module is exactly one "layer" for the activation-entropy measure and forward hooks see
every activation once. ReLUs have no parameters, so state-dict keys are torchvision's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from dsd2.models.registry import register_model


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with one ReLU module per call site (``relu1``, ``relu2``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU(inplace=False)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck with one ReLU module per call site (``relu1``..``relu3``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU(inplace=False)
        self.relu2 = nn.ReLU(inplace=False)
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _torchvision_resnet(
    block: type[tv_resnet.BasicBlock | tv_resnet.Bottleneck],
    layers: list[int],
    num_classes: int,
    zero_init_residual: bool,
) -> tv_resnet.ResNet:
    # Same construction as torchvision.models.resnet18/50(weights=None, num_classes=...),
    # with the blocks above; then the stem ReLU is made non-inplace.
    model = tv_resnet.ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
    model.relu = nn.ReLU(inplace=False)
    return model


@register_model("resnet18_cifar", input_shape=(3, 32, 32))
def resnet18_cifar(
    num_classes: int,
    in_channels: int,
    input_size: int,
    maxpool: bool = True,
    zero_init_residual: bool = False,
) -> nn.Module:
    """ResNet-18, CIFAR stem (3x3/1 conv). ``maxpool=True`` = the reference DSD² model."""
    model = _torchvision_resnet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual)
    model.conv1 = _init_conv(nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False))
    if not maxpool:
        model.maxpool = nn.Identity()
    return model


def _imagenet_stem(model: tv_resnet.ResNet, in_channels: int) -> tv_resnet.ResNet:
    if in_channels != 3:
        model.conv1 = _init_conv(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False))
    return model


@register_model("resnet18", input_shape=(3, 224, 224))
def resnet18(num_classes: int, in_channels: int, input_size: int, zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-18 (ImageNet stem: 7x7/2 conv + 3x3/2 max-pool), random init."""
    model = _torchvision_resnet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual)
    return _imagenet_stem(model, in_channels)


@register_model("resnet50", input_shape=(3, 224, 224))
def resnet50(num_classes: int, in_channels: int, input_size: int, zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-50 (ImageNet stem, Bottleneck [3,4,6,3]), random init."""
    model = _torchvision_resnet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual)
    return _imagenet_stem(model, in_channels)
