"""Decoders: backbone feature dict -> one ``B x channels x h x w`` map (the classifier is separate).

- ``fcn``: torchvision ``FCNHead`` minus its last conv, on the deepest level.
- ``deeplabv3``: torchvision ``ASPP`` + ``DeepLabHead``'s conv3x3/BN/ReLU, on the deepest level.
- ``fpn``: ``torchvision.ops.FeaturePyramidNetwork`` over all backbone levels, each level upsampled to the
  finest one and summed (Panoptic-FPN semantic branch, lightweight), then conv3x3/BN/ReLU.
- ``probe``: no decoder, only BatchNorm over the deepest level, so that the 1x1 classifier after it is a linear
  probe of the backbone's features (with ``model.freeze_backbone``); BatchNorm puts features of different
  pre-trainings on one scale, so that one learning rate suits them all.

Every decoder ends with ``Dropout(dropout)`` (the dropout MMSegmentation's decode heads apply before the
classifier) and has ``out_channels`` and ``levels`` (the backbone levels it reads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops import FeaturePyramidNetwork

# ASPP atrous rates per output stride (DeepLabV3's (6, 12, 18) at stride 16, scaled)
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DeepestLevelHead(nn.Sequential):
    """A sequential decoder applied to the deepest backbone level, ``features["out"]``."""

    levels = ("out",)

    def __init__(self, *layers: nn.Module, out_channels: int):
        super().__init__(*layers)
        self.out_channels = out_channels

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(features["out"])


class FCNHead(DeepestLevelHead):
    """conv3x3 + BN + ReLU + Dropout (torchvision ``FCNHead`` without its final 1x1 conv)."""

    def __init__(self, in_channels: int, channels: int, dropout: float = 0.1):
        super().__init__(*conv_bn_relu(in_channels, channels), nn.Dropout(dropout), out_channels=channels)


class DeepLabV3Head(DeepestLevelHead):
    """ASPP + conv3x3 + BN + ReLU + Dropout (torchvision ``DeepLabHead`` without its final 1x1 conv)."""

    def __init__(self, in_channels: int, channels: int, output_stride: int = 8, dropout: float = 0.1):
        if output_stride not in ASPP_RATES:
            raise ValueError(f"head deeplabv3 supports output_stride 8, 16 or 32, got {output_stride}")
        super().__init__(
            ASPP(in_channels, ASPP_RATES[output_stride], out_channels=channels),
            *conv_bn_relu(channels, channels),
            nn.Dropout(dropout),
            out_channels=channels,
        )


class ProbeHead(DeepestLevelHead):
    """BatchNorm + Dropout on the deepest level: at inference an affine map, so decoder + 1x1 classifier stay
    linear in the backbone's features."""

    def __init__(self, in_channels: int, dropout: float = 0.1):
        super().__init__(nn.BatchNorm2d(in_channels), nn.Dropout(dropout), out_channels=in_channels)


class FPNHead(nn.Module):
    """FPN over the given levels; levels upsampled (bilinear) to the finest one, summed, conv3x3 + BN + ReLU."""

    def __init__(self, in_channels: dict[str, int], channels: int, dropout: float = 0.1):
        super().__init__()
        self.levels = tuple(in_channels)
        self.out_channels = channels
        self.fpn = FeaturePyramidNetwork(list(in_channels.values()), channels)
        self.fuse = nn.Sequential(*conv_bn_relu(channels, channels), nn.Dropout(dropout))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        pyramid = self.fpn(OrderedDict((level, features[level]) for level in self.levels))
        size = max((p.shape[-2:] for p in pyramid.values()), key=lambda s: s[0] * s[1])
        fused = sum(
            p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            for p in pyramid.values()
        )
        return self.fuse(fused)


def _fcn(in_channels: dict[str, int], channels: int, output_stride: int, dropout: float) -> nn.Module:
    return FCNHead(in_channels["out"], channels, dropout)


def _deeplabv3(in_channels: dict[str, int], channels: int, output_stride: int, dropout: float) -> nn.Module:
    return DeepLabV3Head(in_channels["out"], channels, output_stride, dropout)


def _fpn(in_channels: dict[str, int], channels: int, output_stride: int, dropout: float) -> nn.Module:
    return FPNHead(in_channels, channels, dropout)


def _probe(in_channels: dict[str, int], channels: int, output_stride: int, dropout: float) -> nn.Module:
    return ProbeHead(in_channels["out"], dropout)


HEADS: dict[str, Callable[[dict[str, int], int, int, float], nn.Module]] = {
    "fcn": _fcn,
    "deeplabv3": _deeplabv3,
    "fpn": _fpn,
    "probe": _probe,
}


def build_head(
    name: str, in_channels: dict[str, int], channels: int, output_stride: int = 8, dropout: float = 0.1
) -> nn.Module:
    """Build decoder ``name`` for backbone levels ``in_channels`` (e.g. ``backbone.channels``)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; supported: {', '.join(HEADS)}")
    return HEADS[name](dict(in_channels), channels, output_stride, dropout)
