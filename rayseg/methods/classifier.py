"""Image classification: the PSSL ensemble members (issue 3 §2), trained through the shared engine.

``L = mean over images i of −log softmax(f(I_i))_{y_i}`` (``F.cross_entropy``) for a torchvision classifier
``f = build_classifier(classifier.arch, K)`` on the synthetic classification set (``classifier.images`` empty:
the same seed and classes the labeling demo labels) or on any ImageFolder tree (``classifier.images``).

Preprocessing matches the labeling pipeline (``rayseg.labeling.pipeline.decode_and_resize``): the image is
resized to ``image_size x image_size`` with bilinear filtering (aspect ratio not kept), scaled to [0, 1] and
normalised with the ImageNet mean/std. Training adds RandomResizedCrop(scale 0.5-1) and a horizontal flip.

``export`` writes ``classifier.pt``: ``{"state_dict": <raw torchvision state dict>, "arch", "num_classes",
"class_names", "image_size", "meta"}``, plain values readable with ``torch.load(weights_only=True)`` and by
:func:`rayseg.labeling.members.load_members`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from rayseg import storage
from rayseg.config import Config, ConfigError
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rayseg.methods.base import Method

__all__ = ["ClassificationItems", "ImageClassifier", "build_classification_dataset",
           "classification_eval_transform", "classification_train_transform"]


def classification_train_transform(image_size: int) -> v2.Compose:
    """uint8 ``tv_tensors.Image`` -> normalised float32 ``3 x s x s`` plain tensor, with augmentation."""
    s = int(image_size)
    return v2.Compose([
        v2.Resize((s, s), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomResizedCrop(s, scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        v2.ToPureTensor(),
    ])


def classification_eval_transform(image_size: int) -> v2.Compose:
    """What the labeling pipeline does: bilinear resize to ``s x s``, [0, 1], ImageNet normalisation."""
    s = int(image_size)
    return v2.Compose([
        v2.Resize((s, s), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        v2.ToPureTensor(),
    ])


class ClassificationItems(Dataset):
    """A classification dataset reduced to ``{"image": float 3xHxW, "label": int}`` per item.

    Other keys (``true_mask``, ``id``) are dropped so that ``default_collate`` / ``collate_skip_bad`` stack the
    items (``label`` becomes int64); bad-sample markers of ``skip_bad`` datasets pass through unchanged.
    """

    def __init__(self, base: Dataset):
        self.base = base
        self.num_classes: int = int(base.num_classes)
        self.class_names: list[str] = list(base.class_names)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def bad_samples(self) -> dict[str, str]:
        return getattr(self.base, "bad_samples", {})

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if item is None or item.get("bad"):
            return item
        return {"image": item["image"], "label": int(item["label"])}


def build_classification_dataset(cfg: Config, train: bool = True, split: str = "train",
                                 num_images: int | None = None) -> ClassificationItems:
    """The classifier's data: ``classifier.images`` (ImageFolder) when set, else the synthetic set.

    ``train`` picks the augmenting or the plain (labeling-like) transform; ``split`` / ``num_images`` apply to the
    synthetic set only (default ``classifier.num_images``)."""
    from rayseg.data.folders import ImageFolderClassification
    from rayseg.data.synthetic import SyntheticClassification

    c = cfg.classifier
    transform = classification_train_transform(c.image_size) if train else classification_eval_transform(c.image_size)
    if c.images:
        base = ImageFolderClassification(c.images, transform=transform, skip_bad=cfg.data.skip_bad)
        if len(base) == 0:
            raise ConfigError(f"classifier.images: no images in {c.images}")
    else:
        n = c.num_images if num_images is None else num_images
        base = SyntheticClassification(num_images=n, image_size=c.image_size, seed=cfg.data.seed, split=split,
                                       transform=transform)
    return ClassificationItems(base)


#: BatchNorm running-statistics momentum used at least (PyTorch's default). Some torchvision models (MobileNetV3,
#: EfficientNet) use 0.01 for long ImageNet schedules; after the few hundred steps of a toy run their running
#: statistics are still mostly the initial (0, 1), and eval-mode predictions, which the explainers use, are near
#: chance while the batch-statistics ones are not. Momentum is not part of the state dict: weights are unchanged.
BATCHNORM_MOMENTUM = 0.1


def _short_run_batchnorm(model: nn.Module, momentum: float = BATCHNORM_MOMENTUM) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, momentum)


class ImageClassifier(Method):
    """``L = F.cross_entropy(f(I), y)`` for a torchvision classifier ``f`` (the PSSL ensemble members)."""

    evaluates = False  # no segmentation model; accuracy is measured by rayseg.labeling.train_members
    export_part = "model"

    def __init__(self, model: nn.Module, arch: str, class_names: list[str], image_size: int):
        super().__init__()
        self.model = model
        self.arch = arch
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size = int(image_size)

    @classmethod
    def train_dataset(cls, cfg: Config) -> ClassificationItems:
        return build_classification_dataset(cfg, train=True)

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> "ImageClassifier":
        from rayseg.models import build_classifier

        arch = cfg.classifier.arch
        model = build_classifier(arch, train_set.num_classes)
        _short_run_batchnorm(model)
        names = list(getattr(train_set, "class_names", None) or [f"class{i}" for i in range(train_set.num_classes)])
        return cls(model, arch, names, cfg.classifier.image_size)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"])
        return {"ce": F.cross_entropy(logits.float(), batch["label"])}

    def segmentation_model(self):
        raise NotImplementedError(
            "method classifier trains an image classifier (a PSSL ensemble member); it has no segmentation model "
            "to evaluate or fine-tune from: use its export/classifier.pt as a `rayseg label` member")

    def export_meta(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "arch": self.arch, "num_classes": self.num_classes,
                "image_size": self.image_size}

    def export(self, directory: str | os.PathLike, meta: dict[str, Any]) -> dict[str, str]:
        directory = Path(directory)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        payload = {"state_dict": state, "arch": self.arch, "num_classes": self.num_classes,
                   "class_names": list(self.class_names), "image_size": self.image_size, "meta": dict(meta)}
        path = directory / "classifier.pt"
        buf = io.BytesIO()
        torch.save(payload, buf)
        storage.write_bytes(path, buf.getbuffer())  # atomic: a reader never sees a half-written file
        return {"classifier": str(path)}
