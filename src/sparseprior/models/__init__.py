"""Reference models: MLP / LeNet-300-100, LeNet-5, CIFAR-style ResNet-(6n+2), VGG with BN.

>>> from sparseprior.models import build_model
>>> model = build_model("resnet20", in_channels=1, num_classes=10, input_size=28)
>>> model.output_layer_name, model.blocks_per_stage
('classifier', [3, 3, 3])

Every model has ``output_layer_name`` (``"classifier"``, the final ``nn.Linear`` as named in
``named_modules()``), ``input_shape`` ``(C, H, W)`` and ``example_input(batch_size)``.
"""

from sparseprior.models.base import ClassifierModel, init_weights
from sparseprior.models.lenet import LeNet5
from sparseprior.models.mlp import MLP, lenet_300_100
from sparseprior.models.registry import (
    MODELS,
    build_model,
    build_model_for,
    check_model_spec,
    get_output_layer,
    model_options,
)
from sparseprior.models.resnet import BasicBlock, ResNet, check_resnet_depth
from sparseprior.models.vgg import VGG, VGG_CONFIGS

__all__ = [
    "MLP",
    "MODELS",
    "VGG",
    "VGG_CONFIGS",
    "BasicBlock",
    "ClassifierModel",
    "LeNet5",
    "ResNet",
    "build_model",
    "build_model_for",
    "check_resnet_depth",
    "get_output_layer",
    "init_weights",
    "lenet_300_100",
    "check_model_spec",
    "model_options",
]
