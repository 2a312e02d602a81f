"""Model zoo and model loading: a timm-like ``@register_model`` registry plus ``pkg.module:factory``.

Every zoo model takes ``(in_channels=3, num_classes=10)`` and works on 28x28 (MNIST-like) and 32x32
(CIFAR-like) inputs: the classifier sits behind ``nn.AdaptiveAvgPool2d(1)``. A model is described by a
*spec* of plain data (``{"model", "kwargs", "input_shape"}``) so a run directory can rebuild it.

Modules: ``registry`` (names, factories, specs, search spaces), ``layers`` (shared building blocks),
``classic`` (ConvNet, ResNet, VGG) and ``grouped`` (MobileNetV2, ResNeXt, ShuffleNetV2). Importing
this package registers every zoo model.

Example:
    >>> model = create_model("resnet20", in_channels=1, num_classes=10)
    >>> spec = model_spec("resnet20", 1, 10, (1, 28, 28))
    >>> same = build_from_spec(spec)
"""

from .classic import VGG, BasicBlock, ConvNet, ResNet, convnet, resnet20, resnet56, vgg11_bn, vgg16_bn
from .grouped import (
    InvertedResidual,
    MobileNetV2,
    ResNeXt,
    ShuffleNetV2,
    ShuffleUnit,
    channel_shuffle,
    mobilenetv2,
    resnext20,
    shufflenetv2,
)
from .layers import init_weights
from .registry import (
    MODELS,
    SEARCH_SPACE_DIR,
    build_from_spec,
    create_model,
    default_model,
    load_search_space,
    model_names,
    model_spec,
    register_model,
)

__all__ = [
    "MODELS",
    "SEARCH_SPACE_DIR",
    "register_model",
    "model_names",
    "create_model",
    "model_spec",
    "build_from_spec",
    "load_search_space",
    "default_model",
    "init_weights",
    "ConvNet",
    "BasicBlock",
    "ResNet",
    "VGG",
    "InvertedResidual",
    "MobileNetV2",
    "ResNeXt",
    "ShuffleNetV2",
    "ShuffleUnit",
    "channel_shuffle",
    "convnet",
    "resnet20",
    "resnet56",
    "vgg11_bn",
    "vgg16_bn",
    "mobilenetv2",
    "resnext20",
    "shufflenetv2",
]
