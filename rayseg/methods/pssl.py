"""PSSL pre-training: (K+1)-way segmentation on explanation-ensemble pseudo-labels (methods.md §3.1-3.2).

``rayseg label`` writes one decile map per image (pseudo-label shards, ``rayseg.labeling.shards``). Here every
pixel with ``D(x) >= threshold`` (the top decile by default) becomes the image's class ``c ∈ {0..K-1}``, every other
pixel the background class ``K``, crop padding the ignore index 255; the network predicts K+1 classes and is
trained with the background-weighted cross-entropy of PSSL Eq. 3. The exported model carries the (K+1)-way
classifier; fine-tuning on a target dataset drops it (``rayseg.models.weights`` drops a classifier of another
class count) and keeps backbone + decoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rayseg import storage
from rayseg.config import Config, ConfigError
from rayseg.data import IGNORE_INDEX
from rayseg.data.errors import BadSampleError
from rayseg.data.folders import _SkipBadMixin, load_rgb
from rayseg.data.transforms import SegTrainTransform, to_float_pair
from rayseg.labeling import shards
from rayseg.labeling.ensemble import pseudo_label
from rayseg.methods.base import Method
from rayseg.methods.ssa_losses import SSALoss, segmentation_losses
from rayseg.models import SegmentationModel
from rayseg.models.from_config import build_model_from_config

__all__ = ["PSSL", "BackgroundWeightedCrossEntropy", "PSSLDataset"]


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


def _folder_class_names(images_root: Path, num_classes: int) -> list[str]:
    """The sorted class sub-folders of an ImageFolder tree when there are exactly K of them, else class{i}."""
    try:
        folders = sorted(e.name for e in os.scandir(images_root) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        folders = []
    return folders if len(folders) == num_classes else [f"class{i}" for i in range(num_classes)]


class PSSLDataset(_SkipBadMixin, Dataset):
    """Images of an ImageFolder tree with their PSSL pseudo-masks from committed label shards.

    ``labels_dir``: the label-version folder, a path or an object-store URI (:mod:`rayseg.storage`); its shards
    are read once, here. ``images_root``: a local folder (or one every node mounts).

    Item ``i``: ``{"image": float 3xHxW, "mask": int64 HxW, "id": str}``. The mask is built from the decile map
    (nearest-resized to the image size, methods.md §3.1 item 7) by :func:`rayseg.labeling.ensemble.pseudo_label`:
    ``D >= threshold`` -> the image's class, ``D = threshold-1`` -> 255 when ``ignore_d8``, the rest -> K
    (background); ``transform(image, mask)`` is a joint transform (crop padding of the mask = 255).
    ``num_classes`` is K+1; ``class_names`` the K class names + ``"background"``. A missing or corrupt image (or
    decile PNG) raises ``BadSampleError`` naming it, or with ``skip_bad`` comes back as a marker for
    ``collate_skip_bad`` and is recorded in ``bad_samples``.
    """

    def __init__(
        self,
        labels_dir: str | os.PathLike,
        images_root: str | os.PathLike,
        num_classes: int,
        transform: Callable | None = None,
        threshold: int = 9,
        ignore_d8: bool = False,
        skip_bad: bool = False,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 1 <= threshold <= 9:
            raise ValueError(f"threshold must be in 1..9, got {threshold}")
        self.labels_dir, self.images_root = str(labels_dir), Path(images_root)
        table = shards.read_labels(self.labels_dir, columns=["id", "class_index", "deciles_png"])
        if table.num_rows == 0:
            raise ValueError(f"no committed label shards in {self.labels_dir}: run `rayseg label` first")
        # plain python lists: cheap to pickle to DataLoader workers (no Arrow table)
        self.ids: list[str] = table.column("id").to_pylist()
        self.class_index: list[int] = table.column("class_index").to_pylist()
        self.deciles_png: list[bytes] = table.column("deciles_png").to_pylist()
        bad = sorted({c for c in self.class_index if not 0 <= c < num_classes})
        if bad:
            raise ValueError(f"labels in {self.labels_dir} have class indices {bad[:5]} outside 0..{num_classes - 1} "
                             f"(pssl.num_classes = {num_classes})")
        self.num_image_classes = int(num_classes)  # K
        self.num_classes = self.num_image_classes + 1  # K + 1: index K = background
        self.class_names = _folder_class_names(self.images_root, self.num_image_classes) + ["background"]
        self.transform, self.threshold, self.ignore_d8 = transform, int(threshold), bool(ignore_d8)
        self.skip_bad, self.bad_samples = bool(skip_bad), {}

    def __len__(self) -> int:
        return len(self.ids)

    def pseudo_mask(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        """The int64 ``size`` pseudo-mask of item ``i`` (before any transform)."""
        try:
            deciles = torch.from_numpy(shards.decode_deciles(self.deciles_png[i]))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on a corrupt PNG
            raise BadSampleError(self._label_of(i), f"cannot decode the decile map ({exc})") from None
        if deciles.ndim != 2:
            raise BadSampleError(self._label_of(i), f"decile map of shape {tuple(deciles.shape)}, not HxW")
        if tuple(deciles.shape) != tuple(size):
            deciles = TF.resize(deciles[None], list(size), interpolation=InterpolationMode.NEAREST)[0]
        return pseudo_label(deciles, self.class_index[i], background_index=self.num_image_classes,
                            threshold=self.threshold, ignore_d8=self.ignore_d8, ignore_index=IGNORE_INDEX)

    def _label_of(self, i: int) -> str:
        """The name of item ``i``'s label in error messages: ``<labels_dir>/<id>``."""
        return storage.join(self.labels_dir, self.ids[i])

    def __getitem__(self, i: int) -> dict:
        return self._load_or_mark(self.ids[i], lambda: self._load(i))

    def _load(self, i: int) -> dict:
        image_id = self.ids[i]
        rgb = load_rgb(self.images_root / image_id)  # BadSampleError naming the file when missing / corrupt
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        mask = self.pseudo_mask(i, (image.shape[1], image.shape[2]))
        if self.transform is not None:
            image_t, mask_t = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        else:
            image_t, mask_t = to_float_pair(image, mask)
        return {"image": image_t, "mask": mask_t, "id": image_id}


def _check_pssl_config(cfg: Config) -> None:
    """One-line ``ConfigError`` for a pssl section that cannot work. ``pssl.labels`` may be an object-store URI
    (a prefix with objects under it counts as a folder); ``pssl.images`` is a local folder."""
    p = cfg.pssl
    for key, value, what, is_dir in (
            ("pssl.labels", p.labels, "the label-version folder written by `rayseg label`", storage.is_dir),
            ("pssl.images", p.images, "the image root the label ids are relative to", os.path.isdir)):
        if not value:
            raise ConfigError(f"{key}: required when method is pssl ({what})")
        if not is_dir(value):
            raise ConfigError(f"{key}: folder not found: {value}")
    if p.num_classes < 1:
        raise ConfigError(f"pssl.num_classes: required (>= 1) when method is pssl, got {p.num_classes}")
    if not p.bg_weight >= 0:
        raise ConfigError(f"pssl.bg_weight: must be >= 0, got {p.bg_weight}")
    if not 1 <= p.threshold_decile <= 9:
        raise ConfigError(f"pssl.threshold_decile: must be in 1..9, got {p.threshold_decile}")


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
        _check_pssl_config(cfg)
        d = cfg.data
        transform = SegTrainTransform(crop_size=d.crop_size, base_size=d.base_size or None,
                                      scale_range=(d.scale_min, d.scale_max), hflip_prob=d.hflip,
                                      color_jitter=d.color_jitter, ignore_index=IGNORE_INDEX)
        return PSSLDataset(cfg.pssl.labels, cfg.pssl.images, cfg.pssl.num_classes, transform=transform,
                           threshold=cfg.pssl.threshold_decile, ignore_d8=cfg.pssl.ignore_d8,
                           skip_bad=d.skip_bad)

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> "PSSL":
        k = cfg.pssl.num_classes
        if k < 1:
            raise ConfigError(f"pssl.num_classes: required (>= 1) when method is pssl, got {k}")
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
