"""Model zoo and model loading: a timm-like ``@register_model`` registry plus ``pkg.module:factory``.

Every zoo model takes ``(in_channels=3, num_classes=10)`` and works on 28x28 (MNIST-like) and 32x32
(CIFAR-like) inputs: the classifier sits behind ``nn.AdaptiveAvgPool2d(1)``. A model is described by a
*spec* of plain data (``{"model", "kwargs", "input_shape"}``) so a run directory can rebuild it.

Example:
    >>> model = create_model("resnet20", in_channels=1, num_classes=10)
    >>> spec = model_spec("resnet20", 1, 10, (1, 28, 28))
    >>> same = build_from_spec(spec)
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from nas_prune.errors import NasPruneError
from nas_prune.factory import import_factory
from nas_prune.plain import check_plain

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
    "convnet",
    "resnet20",
    "resnet56",
    "vgg11_bn",
    "vgg16_bn",
    "mobilenetv2",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}
"""Zoo name -> factory ``(in_channels=3, num_classes=10) -> nn.Module``."""

SEARCH_SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
"""Where ``search_spaces/<model>.yaml`` live (the repository's top level)."""


# ---------------------------------------------------------------------------------------------------
# Registry and loading
# ---------------------------------------------------------------------------------------------------


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory in :data:`MODELS` under the function's name.

    Args:
        fn: Factory taking ``in_channels`` and ``num_classes`` keyword arguments.

    Returns:
        ``fn`` unchanged, so this works as a decorator.
    """
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    MODELS[fn.__name__] = fn
    return fn


def model_names() -> list[str]:
    """Return the sorted names of the registered zoo models."""
    return sorted(MODELS)


def _choices() -> str:
    return ", ".join(model_names()) + ", or pkg.module:factory"


def _accepted_kwargs(factory: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep the keyword arguments ``factory`` accepts.

    ``in_channels`` and ``num_classes`` are dropped silently when the factory does not take them (it
    fixes them itself); any other unaccepted argument was asked for explicitly and is an error.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature: pass everything
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    names = {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(k for k in kwargs if k not in names and k not in ("in_channels", "num_classes"))
    if unknown:
        raise NasPruneError(
            f"model {name!r} does not accept {', '.join(unknown)}; it accepts: {', '.join(sorted(names))}"
        )
    return {k: v for k, v in kwargs.items() if k in names}


def create_model(name: str, in_channels: int = 3, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a ``"pkg.module:factory"`` path.

    Args:
        name: A name from :func:`model_names` or ``"pkg.module:factory"``. The factory is called with
            ``in_channels``, ``num_classes`` and ``kwargs``, restricted to the ones its signature takes.
        in_channels: Channels of the input images.
        num_classes: Size of the classifier output.
        **kwargs: Extra keyword arguments for the factory.

    Returns:
        The new model (fresh weights).

    Raises:
        NasPruneError: Unknown name, an import that fails, a factory that is not callable, rejects the
            given arguments or does not return an ``nn.Module``.
    """
    if ":" in name:
        factory = import_factory(name, "model", _choices())
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise NasPruneError(f"unknown model {name!r}; choose {_choices()}")
    all_kwargs = {"in_channels": in_channels, "num_classes": num_classes, **kwargs}
    model = factory(**_accepted_kwargs(factory, name, all_kwargs))
    if not isinstance(model, nn.Module):
        raise NasPruneError(
            f"model factory {name!r} returned a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def model_spec(
    name: str, in_channels: int, num_classes: int, input_shape: tuple[int, ...] | list[int], **kwargs: Any
) -> dict[str, Any]:
    """Describe a model as plain data, as stored in ``model.pt`` under ``"spec"``.

    Args:
        name: Zoo name or ``"pkg.module:factory"``.
        in_channels: Channels of the input images.
        num_classes: Size of the classifier output.
        input_shape: One sample's shape ``[C, H, W]`` (no batch dimension).
        **kwargs: Extra factory arguments (plain data only).

    Returns:
        ``{"model": name, "kwargs": {"in_channels", "num_classes", ...}, "input_shape": [C, H, W]}``.
    """
    spec = {
        "model": str(name),
        "kwargs": {"in_channels": int(in_channels), "num_classes": int(num_classes), **kwargs},
        "input_shape": [int(d) for d in input_shape],
    }
    check_plain(spec, "spec")
    return spec


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the dense model a spec from :func:`model_spec` describes (fresh weights).

    Raises:
        NasPruneError: The spec is malformed or names a model that cannot be built.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        raise NasPruneError(f"model spec must be a dict with a 'model' name, got {spec!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise NasPruneError(f"model spec 'kwargs' must be a dict, got {type(kwargs).__name__}")
    return create_model(spec["model"], **kwargs)


def default_model(dataset: str) -> str:
    """A zoo CNN suited to the dataset and a laptop CPU: ``convnet`` for 28x28 sets, else ``resnet20``."""
    return "convnet" if dataset in ("fashion-mnist", "mnist", "synthetic") else "resnet20"


def load_search_space(name: str) -> dict[str, Any] | None:
    """Read ``search_spaces/<name>.yaml`` for a zoo model.

    Returns:
        The parsed YAML (keys ``model, round_to, min_fraction, frozen`` and optionally ``grid``), or ``None`` for a
        ``pkg.module:factory`` or a name without a file.
    """
    if ":" in name or "/" in name or "\\" in name:
        return None
    path = SEARCH_SPACE_DIR / f"{name}.yaml"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, BN weight 1 / bias 0, small-normal linears (as torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class ConvBNAct(nn.Sequential):
    """``conv -> BatchNorm -> activation`` (children named ``conv``, ``bn``, ``act``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ):
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_ch),
        )
        if act is not None:
            layers["act"] = act(inplace=True)
        super().__init__(layers)


class _Classifier(nn.Module):
    """Global average pool, flatten, linear: makes the head independent of the input size."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------------------------------------------
# ConvNet
# ---------------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Small CPU-friendly CNN: 32-32-pool-64-64-pool-128 (3x3 conv-BN-ReLU), global pool, linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=ConvBNAct(in_channels, 32),
                conv2=ConvBNAct(32, 32),
                pool1=nn.MaxPool2d(2),
                conv3=ConvBNAct(32, 64),
                conv4=ConvBNAct(64, 64),
                pool2=nn.MaxPool2d(2),
                conv5=ConvBNAct(64, 128),
            )
        )
        self.head = _Classifier(128, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------------
# ResNet (CIFAR)
# ---------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity, or 1x1 conv + BN, shortcut (ResNet option B)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, Sec. 4.2): 3x3 stem of 16, stages of 16/32/64 channels, n blocks each.

    Downsampling shortcuts are 1x1 conv + BN ("option B") rather than the paper's zero-padded identity
    ("option A"): a padded identity ties channel indices across stages, whereas a projection keeps each
    stage's channels an independent, prunable group. It adds ~1-2% parameters.
    """

    def __init__(self, num_blocks: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, num_blocks, stride=1)
        self.layer2 = self._stage(16, 32, num_blocks, stride=2)
        self.layer3 = self._stage(32, 64, num_blocks, stride=2)
        self.head = _Classifier(64, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(x)


# ---------------------------------------------------------------------------------------------------
# VGG (CIFAR)
# ---------------------------------------------------------------------------------------------------

_VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm (torchvision configs) and a single linear head instead of 3 FC layers.

    Max-pools use ``ceil_mode=True`` so five halvings work on 28x28 (28-14-7-4-2-1) as on 32x32.
    """

    def __init__(self, cfg: list[int | str], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v))]
                layers.append(nn.ReLU(inplace=True))
                ch = int(v)
        self.features = nn.Sequential(*layers)
        self.head = _Classifier(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------------
# MobileNetV2 (CIFAR)
# ---------------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expand_ratio == 1``), 3x3 depthwise, 1x1 linear projection.

    The input is added back when ``stride == 1`` and ``in_ch == out_ch``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = ConvBNAct(in_ch, hidden, 1, act=nn.ReLU6) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        self.project = ConvBNAct(hidden, out_ch, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 (Sandler et al. 2018), width 1.0.

    As in common CIFAR ports (e.g. kuangliu/pytorch-cifar), the stem and the first stride-2 stage
    (24 channels) use stride 1, so 32x32 inputs reach the head at 4x4 (28x28 at 4x4 too).
    """

    # (expand ratio t, output channels c, blocks n, first stride s)
    CFG: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),  # stride 2 -> 1 for CIFAR
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(in_channels, 32, 3, 1, act=nn.ReLU6)  # stride 2 -> 1 for CIFAR
        blocks: list[nn.Module] = []
        ch = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                blocks.append(InvertedResidual(ch, c, s if i == 0 else 1, t))
                ch = c
        self.blocks = nn.Sequential(*blocks)
        self.conv_last = ConvBNAct(ch, 1280, 1, act=nn.ReLU6)
        self.head = _Classifier(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_last(self.blocks(self.stem(x))))


# ---------------------------------------------------------------------------------------------------
# ResNeXt and ShuffleNetV2 (CIFAR-sized)
# ---------------------------------------------------------------------------------------------------


class ResNeXtBlock(nn.Module):
    """1x1 reduce, 3x3 grouped conv (``cardinality`` groups), 1x1 expand; identity or 1x1 shortcut."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, cardinality: int):
        super().__init__()
        self.reduce = ConvBNAct(in_ch, width, 1)
        self.grouped = ConvBNAct(width, width, 3, stride, groups=cardinality)
        self.expand = ConvBNAct(width, out_ch, 1, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBNAct(in_ch, out_ch, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    """CIFAR ResNeXt (Xie et al. 2017) at depth 20: a 3x3 stem of 32, three stages of two bottleneck blocks
    with 8 groups of 4/8/16 channels (widths 32/64/128) and outputs of 64/128/256 channels."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, cardinality: int = 8, group_width: int = 4
    ):
        super().__init__()
        self.stem = ConvBNAct(in_channels, 32, 3)
        blocks: list[nn.Module] = []
        ch = 32
        for stage in range(3):
            width, out = cardinality * group_width * 2**stage, 64 * 2**stage
            for i in range(2):
                blocks.append(ResNeXtBlock(ch, width, out, 2 if i == 0 and stage > 0 else 1, cardinality))
                ch = out
        self.blocks = nn.Sequential(*blocks)
        self.head = _Classifier(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of ``groups`` equal slices."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, channel shuffle."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        half = out_ch // 2
        self.stride = stride
        self.branch1: nn.Module = nn.Identity()
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=None), ConvBNAct(in_ch, half, 1)
            )
        cin = in_ch if stride > 1 else half
        self.branch2 = nn.Sequential(
            ConvBNAct(cin, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out)


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2 (Ma et al. 2018), width 0.5 (stages of 48/96/192), two units per stage, a 3x3
    stride-1 stem of 24 without max-pool, and a 1x1 conv of 512 before the head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(in_channels, 24, 3)
        units: list[nn.Module] = []
        ch = 24
        for out in (48, 96, 192):
            units += [ShuffleUnit(ch, out, 2), ShuffleUnit(out, out, 1)]
            ch = out
        self.units = nn.Sequential(*units)
        self.conv_last = ConvBNAct(ch, 512, 1)
        self.head = _Classifier(512, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_last(self.units(self.stem(x))))


# ---------------------------------------------------------------------------------------------------
# Zoo
# ---------------------------------------------------------------------------------------------------


@register_model
def convnet(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Small 5-conv CNN, the CPU default (~36 s per Fashion-MNIST epoch, batch 128, 2 CPU cores)."""
    return ConvNet(in_channels, num_classes)


@register_model
def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-20 (3 blocks per stage, option-B shortcuts)."""
    return ResNet(3, in_channels, num_classes)


@register_model
def resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-56 (9 blocks per stage, option-B shortcuts)."""
    return ResNet(9, in_channels, num_classes)


@register_model
def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG-11 with BatchNorm and a single linear head."""
    return VGG(_VGG_CFGS["vgg11"], in_channels, num_classes)


@register_model
def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG-16 with BatchNorm and a single linear head."""
    return VGG(_VGG_CFGS["vgg16"], in_channels, num_classes)


@register_model
def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR MobileNetV2, width 1.0."""
    return MobileNetV2(in_channels, num_classes)


@register_model
def resnext20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNeXt-20 (8x4d): grouped 3x3 convolutions, searchable on multiples of 8 channels."""
    return ResNeXt(in_channels, num_classes)


@register_model
def shufflenetv2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ShuffleNetV2 0.5x (two units per stage): branch widths are searched, shuffled channels frozen."""
    return ShuffleNetV2(in_channels, num_classes)
