"""PSSL pre-training: (K+1)-way segmentation on explanation-ensemble pseudo-labels (methods.md §3.1-3.2).

``rayseg label`` writes one decile map per image (pseudo-label shards, ``rayseg.labeling.shards``), which
:class:`rayseg.data.pseudo_labels.PSSLDataset` reads. Every
pixel with ``D(x) >= threshold`` (the top decile by default) becomes the image's class ``c ∈ {0..K-1}``, every other
pixel the background class ``K``, crop padding ``IGNORE_INDEX`` (-1, so K may be 1000 or more); the network
predicts K+1 classes and is trained with the background-weighted cross-entropy of PSSL Eq. 3. The exported model
carries the (K+1)-way classifier; fine-tuning on a target dataset drops it (``rayseg.models.weights`` drops a
classifier of another class count) and keeps backbone + decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from rayseg.config import Config
from rayseg.data import segmentation_transform
from rayseg.data.pseudo_labels import PSSLDataset
from rayseg.ignore import IGNORE_INDEX
from rayseg.methods.base import Method
from rayseg.methods.ssa_losses import SSALoss, segmentation_losses
from rayseg.models import SegmentationModel
from rayseg.models.from_config import build_model_from_config

__all__ = ["PSSL", "BackgroundWeightedCrossEntropy"]


class BackgroundWeightedCrossEntropy(nn.Module):
    """PSSL's weighted pixel cross-entropy (Eq. 3) with PaddleSeg's ``avg_non_ignore`` normalisation.

    Logits have ``K + 1`` channels; channel ``K`` is the background. With class weights
    ``w_c = 1`` for the K object classes and ``w_K = w_bg`` (the paper's ``w_bg = 0.1``), the per-pixel loss is
    ``ℓ(x) = −w_{y(x)} log p_{y(x)}(x)`` with ``p(x) = softmax(logits(x))``, and the batch loss is::

        L = Σ_x ℓ(x) / Σ_x w_{y(x)}        over the non-ignored pixels x (y(x) ≠ ignore_index)

    which equals ``F.cross_entropy(logits, y, weight=w, ignore_index=ignore_index)``. A batch whose pixels are
    all ignored (or all carry weight 0) gives 0 — with a gradient, not NaN.
    """

    def __init__(self, num_classes: int, bg_weight: float, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not bg_weight >= 0:
            raise ValueError(f"bg_weight must be >= 0, got {bg_weight}")
        self.num_classes, self.bg_weight, self.ignore_index = int(num_classes), float(bg_weight), int(ignore_index)
        weight = torch.ones(self.num_classes + 1)
        weight[-1] = self.bg_weight
        self.register_buffer("weight", weight, persistent=False)  # derived from the config, not training state

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.num_classes + 1:
            raise ValueError(f"logits have {logits.shape[1]} channels, expected K+1 = {self.num_classes + 1}")
        log_p = F.log_softmax(logits.float(), dim=1)                       # B x (K+1) x H x W
        valid = target != self.ignore_index
        y = torch.where(valid, target, torch.zeros_like(target))           # any in-range index for ignored pixels
        nll = -log_p.gather(1, y.unsqueeze(1)).squeeze(1)                  # −log p_{y(x)}(x)
        w = self.weight.to(log_p.device)[y] * valid                         # w_{y(x)}, 0 where ignored
        numerator = (w * nll).sum()
        # the denominator is 0 only when every weight is 0, and then the numerator is exactly 0 with zero gradient
        return numerator / w.sum().clamp_min(torch.finfo(torch.float32).tiny)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, bg_weight={self.bg_weight}, ignore_index={self.ignore_index}"


class PSSL(Method):
    """``L = Σ_x w_{y(x)} (−log p_{y(x)}(x)) / Σ_x w_{y(x)}`` on (K+1)-way pseudo-masks (PSSL Eq. 3).

    With an SSA classifier (``model.classifier: ssa``) this is the main term and the SSA terms are added.
    """

    evaluates = False  # its K+1 classes are not a target dataset's
    export_part = "model"

    def __init__(self, model: SegmentationModel, class_names: list[str], num_image_classes: int,
                 bg_weight: float = 0.1, ignore_index: int = IGNORE_INDEX, ssa_loss: SSALoss | None = None):
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.num_image_classes = int(num_image_classes)
        self.loss = BackgroundWeightedCrossEntropy(num_image_classes, bg_weight, ignore_index)
        self.ssa_loss = ssa_loss if ssa_loss is not None else SSALoss(ignore_index=ignore_index)

    @classmethod
    def train_dataset(cls, cfg: Config) -> PSSLDataset:
        return PSSLDataset(cfg.pssl.labels, cfg.pssl.images, cfg.pssl.num_classes,
                           transform=segmentation_transform(cfg.data, train=True),
                           threshold=cfg.pssl.threshold_decile, ignore_d8=cfg.pssl.ignore_d8,
                           skip_bad=cfg.data.skip_bad)

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> "PSSL":
        k = cfg.pssl.num_classes
        names = getattr(train_set, "class_names", None)
        if names is None or len(names) != k + 1:
            names = [f"class{i}" for i in range(k)] + ["background"]
        model = build_model_from_config(cfg.model, num_classes=k + 1)
        return cls(model, names, k, cfg.pssl.bg_weight, ssa_loss=SSALoss.from_config(cfg.ssa))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return segmentation_losses(self.model, batch["image"], batch["mask"], self.loss, "wce", self.ssa_loss)

    def segmentation_model(self) -> SegmentationModel:
        return self.model

    def export_meta(self) -> dict:
        return {"class_names": self.class_names, "pssl_classes": self.num_image_classes}
