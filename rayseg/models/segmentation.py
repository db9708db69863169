"""Segmentation model = backbone + decoder + classifier, and torchvision image classifiers by name."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from rayseg.models.backbones import Backbone, build_backbone
from rayseg.models.heads import build_head
from rayseg.models.ssa import SSAClassifier


class SegmentationModel(nn.Module):
    """``backbone`` (feature dict) -> ``decoder`` (B x C x h x w) -> ``classifier`` (B x K x h x w) -> upsample.

    ``classifier`` is any module mapping decoder features to logits (a 1x1 conv by default), so it can be
    swapped. ``arch`` holds the build arguments as plain python values: ``build_model(**model.arch)``
    rebuilds the same architecture.
    """

    def __init__(self, backbone: Backbone, decoder: nn.Module, num_classes: int, arch: dict[str, Any],
                 classifier: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.classifier = classifier if classifier is not None else nn.Conv2d(decoder.out_channels, num_classes, 1)
        self.arch = dict(arch, num_classes=num_classes)
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """Train decoder + classifier only: the backbone's weights get no gradient and its BatchNorm statistics
        stay as loaded (the backbone stays in eval mode through ``train()``)."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> dict[str, Any]:
        """``{"backbone": OrderedDict of levels, "decoder": B x C x h x w}``."""
        features = self.backbone(x)
        return {"backbone": features, "decoder": self.decoder(features)}

    def classify(self, decoder_features: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Classifier on decoder features, bilinearly upsampled to ``size`` (align_corners=False)."""
        logits = self.classifier(decoder_features)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B x num_classes x H x W`` at the input resolution."""
        return self.classify(self.forward_features(x)["decoder"], x.shape[-2:])

    def replace_classifier(self, num_classes: int) -> None:
        """New, randomly initialised classifier (1x1 conv, or SSA) for ``num_classes`` (same device and dtype)."""
        reference = next(self.decoder.parameters())
        if self.arch.get("classifier") == "ssa":
            classifier = SSAClassifier(self.decoder.out_channels, num_classes, self.arch["dropout"])
        else:
            classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        self.classifier = classifier.to(reference.device, reference.dtype)
        self.arch["num_classes"] = num_classes

    @property
    def num_classes(self) -> int:
        return self.arch["num_classes"]


CLASSIFIER_KINDS = ("linear", "ssa")  # pixel classifiers on the decoder features


def build_model(
    backbone: str = "resnet18",
    head: str = "fcn",
    num_classes: int = 21,
    output_stride: int = 8,
    channels: int = 128,
    dropout: float = 0.1,
    classifier: str = "linear",
) -> SegmentationModel:
    """Build a randomly initialised segmentation model; ValueError on unknown names or unsupported strides.

    ``classifier``: ``"linear"`` (1x1 conv) or ``"ssa"`` (:class:`SSAClassifier`; the decoder is then built without
    its trailing dropout, which moves into the SSA coarse-mask path, and ``arch`` records ``classifier``).
    """
    if classifier not in CLASSIFIER_KINDS:
        raise ValueError(f"unknown classifier {classifier!r}; supported: {', '.join(CLASSIFIER_KINDS)}")
    trunk = build_backbone(backbone, output_stride)
    ssa = classifier == "ssa"
    decoder = build_head(head, trunk.channels, channels, output_stride, 0.0 if ssa else dropout)
    arch = {
        "backbone": backbone,
        "head": head,
        "output_stride": int(output_stride),
        "channels": int(channels),
        "dropout": float(dropout),
    }
    if ssa:
        arch["classifier"] = classifier
        pixel_classifier = SSAClassifier(decoder.out_channels, int(num_classes), float(dropout))
        return SegmentationModel(trunk, decoder, int(num_classes), arch, pixel_classifier)
    return SegmentationModel(trunk, decoder, int(num_classes), arch)


CLASSIFIERS = tuple(sorted(tvm.list_models(module=tvm)))  # torchvision image-classification architectures
TIMM_PREFIX = "timm/"  # "timm/<model>": any classifier of the timm library (e.g. timm/convnext_tiny)


def is_classifier(name: str) -> bool:
    """``name`` is a torchvision classifier, or ``timm/<model>`` with a model timm knows."""
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(name[len(TIMM_PREFIX):])
    return name in CLASSIFIERS


def build_classifier(name: str, num_classes: int) -> nn.Module:
    """Randomly initialised image classifier ``name`` for ``num_classes``: a torchvision model (resnet18,
    densenet121, ...) or ``timm/<model>`` from timm (its weights come from local files, as every member's: timm
    downloads nothing here)."""
    if not is_classifier(name):
        raise ValueError(
            f"unknown classifier {name!r}; use a torchvision classification model, e.g. resnet18, resnet50, "
            f"mobilenet_v3_large, densenet121, efficientnet_b0, vgg11_bn, regnet_y_400mf "
            f"({len(CLASSIFIERS)} in torchvision.models.list_models(module=torchvision.models)), or timm/<model> "
            f"for a timm classifier"
        )
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes)
    return tvm.get_model(name, weights=None, num_classes=num_classes)
