"""MDP: multi-dataset pre-training with pixel-to-prototype contrast (methods.md §1; seed 000, the authors' rebuttal).

Pipeline of one step:

1. The batch comes from :class:`rayseg.data.multi.MultiDataset`: masks in global ids of the concatenated label
   space (``K_total`` classes), plus the index of each image's dataset.
2. Training only: cross-dataset mixing (:class:`rayseg.data.mixing.CrossDatasetMix`): a fraction of the images
   region-mixed, a fraction class-mixed, with partners from other datasets; labels mixed with the same mask.
   Global masks mark ignored pixels with ``IGNORE_INDEX`` (-1, :mod:`rayseg.ignore`), whatever the number of classes.
3. ``z = n(head(backbone(x)["out"]))``: a ``D``-dim unit embedding per feature cell (``DenseHead``: 1x1 conv,
   BN, ReLU, 1x1 conv); the labels are nearest-downsampled to the feature grid (``nearest-exact``: the label at
   each cell's centre).
4. Losses against the prototype memory ``P`` (``K_total x D``, unit rows, no gradient) as it was *before* this
   step: :class:`PixelPrototypeContrast` and, by ``mdp.csc``, :class:`CrossClassSparseCoding` (CSC2) or the
   CSC1 exclusion. Returned as ``{"p2p": mean L_p2p, "csc": β · mean L_csc}`` (the engine minimises the sum).
5. Training only: :class:`PrototypeMemory` update by the two-step average, all-gathered across DDP workers.

Classes whose prototype has not been initialised yet ("unseen") take no part in any loss: they are absent from
every denominator, and pixels of such a class are not counted (the very first step therefore has a zero loss).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from rayseg import storage
from rayseg.config import Config, ConfigError
from rayseg.data.mixing import CrossDatasetMix
from rayseg.data.multi import LabelSpace, MultiDataset, build_multi_dataset
from rayseg.ignore import IGNORE_INDEX
from rayseg.methods.base import Method
from rayseg.models import SegmentationModel, build_model
from rayseg.models.from_config import build_model_from_config
from rayseg.models.projection import DenseHead
from rayseg.models.weights import export_weights

__all__ = ["MDP", "CrossClassSparseCoding", "PixelPrototypeContrast", "PrototypeMemory", "downsample_labels",
           "top_k_other_prototypes", "two_step_class_means"]

HEAD_FORMAT = "rayseg-mdp-head-v1"


def downsample_labels(masks: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``B x H x W`` int64 labels -> ``B x h x w`` by nearest-neighbour sampling at the cell centres."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    small = F.interpolate(masks[:, None].float(), size=tuple(size), mode="nearest-exact")
    return small[:, 0].round().long()


# ------------------------------------------------------------------------------------------------ losses


def _valid_pixels(target: torch.Tensor, available: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixels with a label whose prototype exists."""
    labelled = (target != ignore_index) & (target >= 0) & (target < available.numel())
    return labelled & available[torch.where(labelled, target, torch.zeros_like(target))]


class _PrototypeLogitsLoss(nn.Module):
    """Shared settings of the losses over the pixel-to-prototype logits ``s_ik = z_i · p_k / τ``."""

    def __init__(self, temperature: float = 0.1, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.ignore_index = float(temperature), int(ignore_index)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class PixelPrototypeContrast(_PrototypeLogitsLoss):
    """Pixel-to-prototype InfoNCE (methods.md §1.4)::

        s_ik = z_i · p_k / τ
        L_p2p(i) = −log( exp(s_{i,y_i}) / Σ_{k ∈ A_i} exp(s_ik) )
        L_p2p = mean of L_p2p(i) over the valid pixels i

    ``A_i`` is every available (initialised) prototype of every dataset, minus the excluded set ``T_i`` under CSC1.
    A pixel is valid when ``y_i`` is not the ignore index and ``p_{y_i}`` is available. Input ``similarity`` is
    ``z_i · p_k`` (``N x K``). With no valid pixel the loss is 0 (still attached to the graph).
    """

    def forward(self, similarity: torch.Tensor, target: torch.Tensor, available: torch.Tensor,
                excluded: torch.Tensor | None = None) -> torch.Tensor:
        valid = _valid_pixels(target, available, self.ignore_index)
        if not bool(valid.any()):
            return similarity.sum() * 0.0
        logits = similarity[valid].float() / self.temperature
        drop = ~available[None, :]
        if excluded is not None:
            drop = drop | excluded[valid]
        logits = logits.masked_fill(drop, float("-inf"))
        return F.cross_entropy(logits, target[valid])


def top_k_other_prototypes(similarity: torch.Tensor, target: torch.Tensor, available: torch.Tensor, k: int,
                           class_dataset: torch.Tensor | None = None,
                           ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """``T_i``: the ``k`` largest ``z_i · p_j`` over available ``j ≠ y_i`` (no gradient).

    With ``class_dataset`` (dataset index of every class) the candidates are restricted to classes of datasets
    other than ``y_i``'s. Returns ``(index N x k', valid N x k')`` with ``k' = min(k, K)``; ``valid`` is False where
    a pixel has fewer than ``k`` candidates (and for ignored pixels).
    """
    n, num_classes = similarity.shape
    y = torch.where((target >= 0) & (target < num_classes), target, torch.zeros_like(target))
    candidates = available[None, :].expand(n, num_classes).clone()
    candidates[torch.arange(n, device=y.device), y] = False
    if class_dataset is not None:
        candidates &= class_dataset[None, :] != class_dataset[y][:, None]
    candidates &= (target != ignore_index)[:, None]
    scores = similarity.detach().float().masked_fill(~candidates, float("-inf"))
    values, index = scores.topk(min(int(k), num_classes), dim=1)
    return index, torch.isfinite(values)


class CrossClassSparseCoding(_PrototypeLogitsLoss):
    """Cross-class sparse coding, the paper's CSC2 (methods.md §1.7): pull each pixel towards its top-k similar
    other prototypes ``T_i`` with a sparse code::

        a_ij = softmax_{j ∈ T_i}( sg(z_i · p_j) / τ )          (zero outside T_i, no gradient)
        L_csc(i) = −Σ_{j ∈ T_i} a_ij · log softmax_{k ∈ A}(s_ik)_j,   s_ik = z_i · p_k / τ
        L_csc = mean of L_csc(i) over the valid pixels (the same pixels as L_p2p)

    ``A`` are the available prototypes (the same logits as :class:`PixelPrototypeContrast`). A valid pixel without
    candidates contributes 0. The method adds ``β · L_csc``; ``L_p2p + β L_csc`` is a soft target with ``1/(1+β)``
    on ``y_i`` and ``β a_ij/(1+β)`` on ``T_i``.
    """

    def forward(self, similarity: torch.Tensor, target: torch.Tensor, available: torch.Tensor,
                top_index: torch.Tensor, top_valid: torch.Tensor) -> torch.Tensor:
        valid = _valid_pixels(target, available, self.ignore_index)
        if not bool(valid.any()):
            return similarity.sum() * 0.0
        logits = (similarity[valid].float() / self.temperature).masked_fill(~available[None, :], float("-inf"))
        log_p = F.log_softmax(logits, dim=1)
        index, ok = top_index[valid], top_valid[valid]
        code_logits = torch.gather(logits.detach(), 1, index).masked_fill(~ok, float("-inf"))
        code = torch.softmax(code_logits, dim=1).nan_to_num(0.0)      # a_ij; rows without candidates -> 0
        picked = torch.gather(log_p, 1, index).masked_fill(~ok, 0.0)  # log p_ij, only where j ∈ T_i
        return -(code * picked).sum(1).mean()


# ---------------------------------------------------------------------------------------- prototype memory


def two_step_class_means(z: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 of the two-step average, summed over the images of the batch.

    ``z``: ``B x N x D`` embeddings, ``labels``: ``B x N`` global ids. With ``m_bk = mean_{i ∈ b, y_i = k} z_i``
    (image ``b``'s class-``k`` mean) returns ``(Σ_b m_bk  [K x D], #{b : k ∈ b}  [K])``; their ratio is the step-2
    centre ``c_k = mean_{b : k ∈ b} m_bk``, where every image counts once whatever its number of class-k pixels.
    """
    b, n, d = z.shape
    y = labels.reshape(b, n)
    valid = (y != ignore_index) & (y >= 0) & (y < num_classes)
    slot = (torch.arange(b, device=y.device)[:, None] * num_classes + y)[valid]
    z = z.float()
    sums = torch.zeros(b * num_classes, d, device=z.device, dtype=z.dtype).index_add_(0, slot, z[valid])
    counts = torch.zeros(b * num_classes, device=z.device, dtype=z.dtype).index_add_(
        0, slot, torch.ones_like(slot, dtype=z.dtype))
    means = (sums / counts.clamp_min(1.0)[:, None]).view(b, num_classes, d)
    return means.sum(0), (counts > 0).view(b, num_classes).sum(0).to(z.dtype)


def _all_gather_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all DDP workers, added up in rank order on every worker (identical results)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts).sum(0)


class PrototypeMemory(nn.Module):
    """One prototype per class of the concatenated label space (methods.md §1.5), without gradient.

    Buffers (both in the state dict, so in every checkpoint): ``prototypes`` (``K x D``, unit rows once seen) and
    ``seen`` (``K`` bool). :meth:`update`:

    1. per image ``b`` and class ``k`` present: ``m_bk = mean_{i ∈ b, y_i = k} z_i``;
    2. all-gather over DDP workers, then ``c_k = mean_{b : k ∈ b} m_bk`` over the images of all workers;
    3. for every class present: ``p_k ← n(μ p_k + (1 − μ) c_k)``, or ``p_k ← n(c_k)`` the first time ``k`` is seen.

    Classes absent from the global batch keep their value. Every worker ends with identical prototypes.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.99, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"need num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.momentum, self.ignore_index = float(momentum), int(ignore_index)
        self.register_buffer("prototypes", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("seen", torch.zeros(self.num_classes, dtype=torch.bool))

    @torch.no_grad()
    def batch_centres(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c [K x D], present [K] bool)`` of the global batch (all workers); ``c`` is 0 where absent."""
        mean_sum, image_count = two_step_class_means(z, labels, self.num_classes, self.ignore_index)
        packed = _all_gather_sum(torch.cat([mean_sum, image_count[:, None]], dim=1))
        mean_sum, image_count = packed[:, :-1], packed[:, -1]
        present = image_count > 0
        return mean_sum / image_count.clamp_min(1.0)[:, None], present

    @torch.no_grad()
    def update(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Update from ``z`` (``B x N x D``) and ``labels`` (``B x N``); returns the ``present`` mask."""
        centres, present = self.batch_centres(z.detach(), labels)
        centres = centres.to(self.prototypes.dtype)
        moved = F.normalize(self.momentum * self.prototypes + (1.0 - self.momentum) * centres, dim=1)
        fresh = F.normalize(centres, dim=1)
        new = torch.where(self.seen[:, None], moved, fresh)
        self.prototypes.copy_(torch.where(present[:, None], new, self.prototypes))
        self.seen.logical_or_(present)
        return present

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}"


# ------------------------------------------------------------------------------------------------- method


class MDP(Method):
    """``L = mean_i [ L_p2p(i) + β · L_csc(i) ]`` over the valid pixels of clean and mixed images (methods.md §1.8).

    Holds the backbone (``model.*`` config, output stride 8 by default), the dense projection head, the prototype
    memory and the label table. ``segmentation_model()`` puts a fresh decode head of ``model.head`` on the trained
    backbone; the export is the backbone (``backbone.pt``), with the label table in its meta. The label table is
    also the module's extra state, so checkpoints carry it and a resume with other datasets is refused.
    """

    evaluates = False  # its classes are those of several datasets, not of a fine-tuning target
    export_part = "backbone"

    def __init__(self, model: SegmentationModel, label_space: LabelSpace, proj_hidden: int = 512,
                 proj_dim: int = 128, temperature: float = 0.1, momentum: float = 0.99, csc: str = "csc2",
                 top_k: int = 5, beta: float = 0.1, other_datasets_only: bool = True,
                 mixer: CrossDatasetMix | None = None, export_head: bool = False):
        super().__init__()
        if csc not in ("none", "csc1", "csc2"):
            raise ValueError(f"csc must be none, csc1 or csc2, got {csc!r}")
        self.backbone = model.backbone
        self.arch = dict(model.arch)
        self.init_report = getattr(model, "init_report", None)
        self.label_space = label_space
        ignore_index = label_space.ignore_index
        num_classes = label_space.num_classes
        self.head = DenseHead(self.backbone.out_channels, proj_hidden, proj_dim, normalize=True)
        self.memory = PrototypeMemory(num_classes, proj_dim, momentum, ignore_index)
        self.contrast = PixelPrototypeContrast(temperature, ignore_index)
        self.sparse_coding = CrossClassSparseCoding(temperature, ignore_index)
        self.register_buffer("class_dataset", label_space.class_dataset(), persistent=False)
        self.csc, self.top_k, self.beta = csc, int(top_k), float(beta)
        self.other_datasets_only, self.export_head = bool(other_datasets_only), bool(export_head)
        self.mixer, self.ignore_index = mixer, int(ignore_index)

    # -------------------------------------------------------------------------------------- construction

    @classmethod
    def train_dataset(cls, cfg: Config) -> MultiDataset:
        return build_multi_dataset(cfg.mdp.datasets, cfg.data, train=True, sampling=cfg.mdp.sampling)

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> MDP:
        label_space = getattr(train_set, "label_space", None)
        if label_space is None:
            names = list(getattr(train_set, "class_names", [f"class{i}" for i in range(train_set.num_classes)]))
            label_space = LabelSpace.build(["data"], [names])
        m = cfg.mdp
        if m.csc and m.top_k > label_space.num_classes - 1:
            raise ConfigError(f"{m.top_k} but the label space has {label_space.num_classes} classes, so a pixel has "
                              f"at most {label_space.num_classes - 1} other prototypes", "mdp.top_k")
        model = build_model_from_config(cfg.model, num_classes=label_space.num_classes)
        mixer = None
        if m.region_mix_fraction > 0 or m.class_mix_fraction > 0:
            mixer = CrossDatasetMix(m.region_mix_fraction, m.class_mix_fraction, (m.lambda_min, m.lambda_max),
                                    same_dataset_fallback=m.mix_same_dataset_fallback,
                                    ignore_index=label_space.ignore_index)
        return cls(model, label_space, proj_hidden=m.proj_hidden, proj_dim=m.proj_dim, temperature=m.temperature,
                   momentum=m.momentum, csc=m.csc, top_k=m.top_k, beta=m.beta,
                   other_datasets_only=m.other_datasets_only, mixer=mixer, export_head=m.export_head)

    # ------------------------------------------------------------------------------------------- training

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``z``: ``B x D x h x w`` unit pixel embeddings."""
        return self.head(self.backbone(images)["out"])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        if self.training and self.mixer is not None:
            datasets = batch.get("dataset")
            if datasets is None:
                datasets = torch.zeros(images.shape[0], dtype=torch.int64)
            # a generator seeded from the global RNG: the engine reseeds that per (seed, epoch, rank)
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
            mixed = self.mixer(images, masks, datasets, generator)
            images, masks = mixed.images, mixed.masks
        z = self.embed(images)
        with torch.autocast(z.device.type, enabled=False):  # logits and prototypes in fp32 also under bf16 AMP
            return self._losses(z.float(), masks)

    def _losses(self, z: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        b, d = z.shape[:2]
        labels = downsample_labels(masks, z.shape[-2:]).reshape(b, -1)          # B x N
        z = z.flatten(2).transpose(1, 2)                                       # B x N x D
        z_flat, y = z.reshape(-1, d), labels.reshape(-1)
        prototypes, available = self.memory.prototypes.clone(), self.memory.seen.clone()  # before this step
        similarity = z_flat @ prototypes.t()                                   # z_i · p_k, N x K
        losses: dict[str, torch.Tensor] = {}
        excluded = None
        if self.csc != "none":
            index, valid = top_k_other_prototypes(similarity, y, available, self.top_k,
                                                  self.class_dataset if self.other_datasets_only else None,
                                                  self.ignore_index)
            if self.csc == "csc1":
                excluded = torch.zeros_like(similarity, dtype=torch.bool)
                excluded.scatter_(1, index, valid)
        losses["p2p"] = self.contrast(similarity, y, available, excluded)
        if self.csc == "csc2":
            losses["csc"] = self.beta * self.sparse_coding(similarity, y, available, index, valid)
        if self.training:
            self.memory.update(z.detach(), labels)
        return losses

    # --------------------------------------------------------------------------------------------- export

    def segmentation_model(self) -> SegmentationModel:
        """``build_model(**arch)`` (a fresh, untrained decode head and classifier) around the trained backbone."""
        model = build_model(**self.arch)
        model.backbone = self.backbone
        return model.to(next(self.backbone.parameters()).device)

    def export_meta(self) -> dict[str, Any]:
        return {"label_space": self.label_space.to_dict(), "class_names": self.label_space.global_class_names()}

    def export(self, directory: str | os.PathLike, meta: dict[str, Any]) -> dict[str, str]:
        directory = Path(directory)
        out = {"backbone": str(export_weights(self.segmentation_model(), directory / "backbone.pt",
                                              part="backbone", meta=meta))}
        if self.export_head:
            payload = {"format": HEAD_FORMAT,
                       "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
                       "prototypes": self.memory.prototypes.detach().cpu().clone(),
                       "seen": self.memory.seen.detach().cpu().clone(),
                       "label_space": self.label_space.to_dict(), "meta": dict(meta)}
            path = directory / "projection_head.pt"
            buf = io.BytesIO()
            torch.save(payload, buf)
            storage.write_bytes(path, buf.getbuffer())
            out["projection_head"] = str(path)
        return out

    # ----------------------------------------------------------------------------------- checkpoint state

    def get_extra_state(self) -> dict[str, Any]:
        return {"label_space": self.label_space.to_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        stored = LabelSpace.from_dict(state["label_space"])
        if stored != self.label_space:
            raise ValueError(f"the checkpoint's label table ({', '.join(stored.datasets)}: {stored.num_classes} "
                             f"classes) differs from this run's ({', '.join(self.label_space.datasets)}: "
                             f"{self.label_space.num_classes} classes); its prototypes would not fit")
