"""Image classification: the PSSL ensemble members (issue 3 §2), trained through the shared engine.

``L = mean over images i of −log softmax(f(I_i))_{y_i}`` (``F.cross_entropy``) for a torchvision classifier
``f = build_classifier(classifier.arch, K)`` on the synthetic classification set (``classifier.images`` empty:
the same seed and classes the labeling demo labels) or on any ImageFolder tree (``classifier.images``).

The data (:mod:`rayseg.data.classification`) is preprocessed as the labelling pipeline does it.

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

from rayseg import storage
from rayseg.config import Config
from rayseg.data.classification import ClassificationItems, build_classification_dataset
from rayseg.methods.base import Method

__all__ = ["ImageClassifier"]


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
