"""Supervised segmentation: pixel-wise cross-entropy on labelled masks (pre-training and fine-tuning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rayseg.config import Config
from rayseg.data import build_segmentation_dataset
from rayseg.ignore import IGNORE_INDEX
from rayseg.methods.base import Method
from rayseg.methods.ssa_losses import SSALoss, segmentation_losses
from rayseg.models import SegmentationModel
from rayseg.models.from_config import build_model_from_config


class Supervised(Method):
    """``L = mean over non-ignored pixels x of -log softmax(f(I))_{y(x)}`` (``F.cross_entropy``; ignore:
    ``IGNORE_INDEX``).

    With an SSA classifier (``model.classifier: ssa``) the SSA terms of ``ssa_loss`` are added (``ssa_losses``).
    """

    evaluates = True

    def __init__(self, model: SegmentationModel, class_names: list[str], ignore_index: int = IGNORE_INDEX,
                 ssa_loss: SSALoss | None = None):
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.ssa_loss = ssa_loss if ssa_loss is not None else SSALoss(ignore_index=ignore_index)

    @classmethod
    def train_dataset(cls, cfg: Config) -> Dataset:
        return build_segmentation_dataset(cfg.data, train=True)

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> "Supervised":
        model = build_model_from_config(cfg.model, num_classes=train_set.num_classes)
        return cls(model, train_set.class_names, ssa_loss=SSALoss.from_config(cfg.ssa))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return segmentation_losses(self.model, batch["image"], batch["mask"], self.cross_entropy, "ce", self.ssa_loss)

    def cross_entropy(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), mask, ignore_index=self.ignore_index)

    def segmentation_model(self) -> SegmentationModel:
        return self.model

    def export_meta(self) -> dict:
        return {"class_names": self.class_names}
