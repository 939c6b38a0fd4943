"""Model zoo: registry, builders and inspection helpers.

Every activation in the registered models is an ``nn.ReLU(inplace=False)`` *module* used at
exactly one place in the forward pass, so each ``nn.ReLU`` module is one "layer" for the
activation-entropy measure (forward hooks see each activation exactly once).

Registered: ``resnet18_cifar`` (default ``maxpool=True`` = the reference), ``resnet18``,
``resnet50``, ``vgg_like``, ``lenet_300_100``, ``lenet5``, ``mlp``, ``vit`` (GELU modules,
one per block, :mod:`dsd2.models.vit`). Besides, every torchvision
classifier is ``torchvision/<name>`` and, with timm installed, every timm model ``timm/<name>``
(:mod:`dsd2.models.zoo`, docs/models.md): the library's own modules, whose shared in-place
ReLUs and GELU/SiLU activations the entropy measure handles (:mod:`dsd2.entropy`).
"""

from dsd2.models.analysis import classifier_layers, count_parameters, first_conv, macs_per_example, prunable_weights
from dsd2.models.registry import MODELS, build_model, list_models, model_options, register_model

# Import the builders so that they register themselves.
from dsd2.models import lenet, mlp, resnet, vgg, vit, zoo  # noqa: F401  isort: skip

__all__ = [
    "MODELS",
    "build_model",
    "classifier_layers",
    "count_parameters",
    "first_conv",
    "list_models",
    "macs_per_example",
    "model_options",
    "prunable_weights",
    "register_model",
]
