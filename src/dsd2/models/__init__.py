"""Model zoo: registry, builders and inspection helpers.

Every activation in these models is an ``nn.ReLU(inplace=False)`` *module* used at exactly
one place in the forward pass, so each ``nn.ReLU`` module is one "layer" for the
activation-entropy measure (forward hooks see each activation exactly once).

Registered: ``resnet18_cifar`` (default ``maxpool=True`` = the reference), ``resnet18``,
``resnet50``, ``vgg_like``, ``lenet_300_100``, ``lenet5``, ``mlp``.
"""

from dsd2.models.analysis import count_parameters, macs_per_example, prunable_weights
from dsd2.models.registry import MODELS, build_model, list_models, model_options, register_model

# Import the builders so that they register themselves.
from dsd2.models import lenet, mlp, resnet, vgg  # noqa: F401  isort: skip

__all__ = [
    "MODELS",
    "build_model",
    "count_parameters",
    "list_models",
    "macs_per_example",
    "model_options",
    "prunable_weights",
    "register_model",
]
