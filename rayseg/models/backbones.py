"""Backbones: torchvision classification trunks that return a dict of feature levels.

Every backbone returns an ``OrderedDict`` with the levels ``c2, c3, c4, out`` (nominal strides 4, 8, 16, 32;
``out`` is the deepest level, its stride is the output stride) and exposes ``channels`` and ``strides`` per level.
Module names are torchvision's, so a torchvision classifier checkpoint loads into the backbone once its
classification head (``fc.*`` for resnets, ``classifier.*`` for mobilenets) is dropped.
Weights are never downloaded: every torchvision model is built with ``weights=None``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter

LEVELS = ("c2", "c3", "c4", "out")

# replace_stride_with_dilation for (layer2, layer3, layer4) per output stride
_RESNET_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


class Backbone(nn.Module):
    """Base of all backbones: ``forward(x) -> OrderedDict[level, Tensor]``, finest level first.

    ``channels[level]`` and ``strides[level]`` describe each level; ``name`` and ``output_stride`` the build.
    """

    def __init__(self, name: str, output_stride: int, channels: dict[str, int], strides: dict[str, int]):
        super().__init__()
        self.name = name
        self.output_stride = output_stride
        self.channels = dict(channels)
        self.strides = dict(strides)

    @property
    def out_channels(self) -> int:
        return self.channels["out"]


class ResNetBackbone(Backbone):
    """torchvision ResNet without avgpool/fc; keys are torchvision's (``conv1.weight``, ``layer1.0...``)."""

    def __init__(self, name: str, resnet: tvm.ResNet, output_stride: int):
        expansion = type(resnet.layer1[0]).expansion
        channels = {level: c * expansion for level, c in zip(LEVELS, (64, 128, 256, 512))}
        strides = {level: min(s, output_stride) for level, s in zip(LEVELS, (4, 8, 16, 32))}
        super().__init__(name, output_stride, channels, strides)
        for child in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(child, getattr(resnet, child))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return OrderedDict(c2=c2, c3=c3, c4=c4, out=self.layer4(c4))


class MobileNetBackbone(Backbone):
    """torchvision MobileNetV3 ``features`` (keys ``features.*``), tapped at the end of each stride."""

    def __init__(
        self,
        name: str,
        features: nn.Sequential,
        taps: dict[str, str],
        channels: dict[str, int],
        strides: dict[str, int],
        output_stride: int,
    ):
        super().__init__(name, output_stride, channels, strides)
        self.features = IntermediateLayerGetter(features, taps)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.features(x)


def dilate_resnet(resnet: tvm.ResNet, replace_stride_with_dilation: list[bool]) -> tvm.ResNet:
    """Turn the strides of layer2..4 into dilations in place, exactly as torchvision's constructor flag does.

    torchvision's ``BasicBlock`` (resnet18/34) refuses ``replace_stride_with_dilation``; this applies the same
    transformation after construction: the first block of a dilated layer keeps the previous dilation, the
    following blocks use the new one (the "-D8" resnets of MMSegmentation).
    """
    dilation = 1
    for layer, dilate in zip((resnet.layer2, resnet.layer3, resnet.layer4), replace_stride_with_dilation):
        if not dilate:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(layer):
            d = previous if index == 0 else dilation
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.stride = (1, 1)
                    if conv.kernel_size == (3, 3):
                        conv.dilation = conv.padding = (d, d)
    return resnet


def _resnet(name: str, output_stride: int) -> Backbone:
    if output_stride not in _RESNET_DILATION:
        raise ValueError(f"backbone {name} supports output_stride 8, 16 or 32, got {output_stride}")
    builder = getattr(tvm, name)
    dilate = _RESNET_DILATION[output_stride]
    if name in ("resnet18", "resnet34"):  # BasicBlock: torchvision raises on dilation, so dilate afterwards
        resnet = dilate_resnet(builder(weights=None), dilate)
    else:
        resnet = builder(weights=None, replace_stride_with_dilation=dilate)
    return ResNetBackbone(name, resnet, output_stride)


def _mobilenet_v3_large(name: str, output_stride: int) -> Backbone:
    if output_stride not in (16, 32):
        raise ValueError(f"backbone {name} supports output_stride 16 or 32, got {output_stride}")
    model = tvm.mobilenet_v3_large(weights=None, dilated=output_stride == 16)
    # last block of each stride: 4 -> features.3, 8 -> features.6, 16 -> features.12, last conv -> features.16
    taps = {"3": "c2", "6": "c3", "12": "c4", "16": "out"}
    channels = {"c2": 24, "c3": 40, "c4": 112, "out": 960}
    strides = {"c2": 4, "c3": 8, "c4": 16, "out": output_stride}
    return MobileNetBackbone(name, model.features, taps, channels, strides, output_stride)


BACKBONES: dict[str, Callable[[str, int], Backbone]] = {
    "resnet18": _resnet,
    "resnet34": _resnet,
    "resnet50": _resnet,
    "resnet101": _resnet,
    "resnet152": _resnet,
    "mobilenet_v3_large": _mobilenet_v3_large,
}


def build_backbone(name: str, output_stride: int = 8) -> Backbone:
    """Build backbone ``name`` (randomly initialised) at ``output_stride``; ValueError if unsupported."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; supported: {', '.join(BACKBONES)}")
    return BACKBONES[name](name, output_stride)
