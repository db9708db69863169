"""Supervised segmentation: pixel-wise cross-entropy on labelled masks (pre-training and fine-tuning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rayseg.config import Config
from rayseg.data import IGNORE_INDEX, build_segmentation_dataset
from rayseg.methods.base import Method
from rayseg.models import SegmentationModel
from rayseg.models.from_config import build_model_from_config


class Supervised(Method):
    """``L = mean over non-ignored pixels x of -log softmax(f(I))_{y(x)}`` (``F.cross_entropy``, ignore 255)."""

    evaluates = True

    def __init__(self, model: SegmentationModel, class_names: list[str], ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.ignore_index = ignore_index

    @classmethod
    def train_dataset(cls, cfg: Config) -> Dataset:
        return build_segmentation_dataset(cfg.data, train=True)

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> "Supervised":
        model = build_model_from_config(cfg.model, num_classes=train_set.num_classes)
        return cls(model, train_set.class_names)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"])
        return {"ce": F.cross_entropy(logits.float(), batch["mask"], ignore_index=self.ignore_index)}

    def segmentation_model(self) -> SegmentationModel:
        return self.model

    def export_meta(self) -> dict:
        return {"class_names": self.class_names}
