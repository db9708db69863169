"""Pieces shared by the momentum-contrast methods PixCon and DenseCL (methods.md §4.1, §4.3, §4.7).

* :class:`GlobalInfoNCE` and :class:`DenseInfoNCE`: the image-level and the (weighted) pixel-level InfoNCE.
* :func:`similarity_match`: each query cell's positive is the key-view cell with the most similar *backbone*
  feature (DenseCL's and PixCon-Sim/SR's matching).
* :class:`ContrastiveEncoder`: backbone + global head + dense head; the methods add predictors on the online side.
* :class:`MomentumContrast`: the Method plumbing both methods share: online encoder, EMA target, the two key
  queues, the two-view training set, the EMA step in ``on_step_end`` and the backbone-only export.

Notation (methods.md §0.1): ``n(x)`` L2 normalisation, ``τ`` temperature, ``Q`` a queue of negative keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rayseg.config import Config
from rayseg.data.views import TwoViewDataset, build_two_view_dataset
from rayseg.methods.base import Method
from rayseg.methods.momentum import KeyQueue, ema_update_, make_target, momentum_at
from rayseg.models import Backbone, SegmentationModel, build_model, export_weights
from rayseg.models.from_config import build_model_from_config
from rayseg.models.projection import DenseHead, MLPHead

__all__ = ["ContrastiveEncoder", "DenseInfoNCE", "EncoderOutput", "GlobalInfoNCE", "MomentumContrast",
           "similarity_match"]


def full_precision(x: torch.Tensor) -> torch.autocast:
    """Disable autocast (the engine's bf16 on GPU) for ``x``'s device: logits over thousands of queue entries and
    the similarity argmax are computed in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class GlobalInfoNCE(nn.Module):
    """Image-level InfoNCE (MoCo), for L2-normalised queries ``q`` (``B x D``), keys ``k`` (``B x D``) and a queue
    ``Q`` (``K x D``) of negative keys::

        L_g = −(1/B) Σ_b log( exp(q_b·k_b / τ) / (exp(q_b·k_b / τ) + Σ_n exp(q_b·Q_n / τ)) )

    i.e. cross-entropy over the logits ``[q·k, q·Q] / τ`` with target index 0.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        with full_precision(q):
            q, k, queue = q.float(), k.float(), queue.float()
            positive = (q * k).sum(1, keepdim=True)                    # B x 1
            negative = q @ queue.t()                                    # B x K
            logits = torch.cat([positive, negative], 1) / self.temperature
            return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class DenseInfoNCE(nn.Module):
    """Pixel-level InfoNCE with matched positives and per-query weights (PixCon Eq. 7, DenseCL's dense loss).

    For L2-normalised query vectors ``u_i`` (``B x N x D``, N = h·w cells), key vectors ``v_j`` (``B x N x D``), the
    matched key cell ``j*(i)`` of each query (``B x N`` indices), a queue ``Q`` (``K x D``) and weights ``w_i``::

        l_i = −log( exp(u_i·v_{j*(i)} / τ) / (exp(u_i·v_{j*(i)} / τ) + Σ_n exp(u_i·Q_n / τ)) )
        L_d = Σ_{b,i} w_i l_i / Σ_{b,i} w_i          (normalised over the whole batch)

    ``weights=None`` means ``w_i = 1`` (the mean over all B·N queries). When every weight is 0 the loss is 0
    (with a zero gradient), not 0/0.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = float(temperature)

    def per_query(self, u: torch.Tensor, v: torch.Tensor, match: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """``l_i`` for every query: ``B x N``."""
        with full_precision(u):
            u, v, queue = u.float(), v.float(), queue.float()
            v_matched = torch.gather(v, 1, match.unsqueeze(-1).expand(-1, -1, v.shape[-1]))  # B x N x D: v_{j*(i)}
            positive = (u * v_matched).sum(-1, keepdim=True)                                 # B x N x 1
            negative = u @ queue.t()                                                          # B x N x K
            logits = torch.cat([positive, negative], -1) / self.temperature
            return -F.log_softmax(logits, dim=-1)[..., 0]

    def forward(self, u: torch.Tensor, v: torch.Tensor, match: torch.Tensor, queue: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.per_query(u, v, match, queue)
        if weights is None:
            return loss.mean()
        weights = weights.to(loss.dtype)
        return (weights * loss).sum() / weights.sum().clamp_min(torch.finfo(loss.dtype).tiny)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@torch.no_grad()
def similarity_match(f_query: torch.Tensor, f_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives by backbone-feature similarity: ``Σ_ij = cos(f^a_i, f^b_j)`` over the cells of two feature maps
    (``B x C x h x w`` each); returns ``(j*, s)`` with ``j*(i) = argmax_j Σ_ij`` and ``s_i = max_j Σ_ij``, both ``B x N``."""
    with full_precision(f_query):
        a = F.normalize(f_query.float().flatten(2), dim=1)  # B x C x N
        b = F.normalize(f_key.float().flatten(2), dim=1)
        similarity = a.transpose(1, 2) @ b                  # B x N (query) x N (key)
        confidence, match = similarity.max(dim=2)
    return match, confidence


class EncoderOutput(NamedTuple):
    features: torch.Tensor  # backbone C5 ``B x C x h x w``
    global_: torch.Tensor   # global head output ``B x D`` (not normalised)
    dense: torch.Tensor     # dense head output ``B x D x h x w`` (not normalised)


class ContrastiveEncoder(nn.Module):
    """Backbone (its deepest level) + global head (avgpool -> MLP) + dense head (per-position MLP), §4.1."""

    def __init__(self, backbone: Backbone, proj_hidden_dim: int, proj_dim: int, head_batch_norm: bool = True):
        super().__init__()
        self.backbone = backbone
        self.global_head = MLPHead(backbone.out_channels, proj_hidden_dim, proj_dim, batch_norm=head_batch_norm)
        self.dense_head = DenseHead(backbone.out_channels, proj_hidden_dim, proj_dim, batch_norm=head_batch_norm)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        f = self.backbone(x)["out"]
        return EncoderOutput(f, self.global_head(f.mean(dim=(2, 3))), self.dense_head(f))


def cells(x: torch.Tensor) -> torch.Tensor:
    """``B x D x h x w`` -> L2-normalised ``B x N x D`` (float32)."""
    return F.normalize(x.float().flatten(2).transpose(1, 2), dim=-1)


def pooled_dense_key(dense: torch.Tensor) -> torch.Tensor:
    """DenseCL's dense-queue entry: ``n(mean over cells of the target dense-head output)``, ``B x D``."""
    return F.normalize(dense.float().mean(dim=(2, 3)), dim=1)


class MomentumContrast(Method):
    """Shared plumbing of PixCon and DenseCL (see the module docstring). Subclasses implement ``forward``.

    State: ``online`` (:class:`ContrastiveEncoder`), ``target`` (its EMA copy, no gradients), ``global_queue`` and
    ``dense_queue`` (:class:`KeyQueue`). ``arch`` holds the ``model`` section's build arguments so that
    ``segmentation_model()`` can put the online backbone under a (fresh) decoder of the fine-tuning architecture.
    """

    evaluates = False
    export_part = "backbone"
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, encoder: ContrastiveEncoder, arch: dict[str, Any], queue_size: int, momentum: float,
                 momentum_schedule: str):
        super().__init__()
        self.online = encoder
        self.target = make_target(encoder)
        dim = encoder.global_head[-1].out_features
        self.global_queue = KeyQueue(queue_size, dim)
        self.dense_queue = KeyQueue(queue_size, dim)
        self.arch = dict(arch)
        self.base_momentum, self.momentum_schedule = float(momentum), momentum_schedule
        self.momentum = self.base_momentum  # the value used by the last EMA step

    @classmethod
    def train_dataset(cls, cfg: Config) -> TwoViewDataset:
        return build_two_view_dataset(cfg.data, cfg.views)

    @staticmethod
    def encoder_from_config(cfg: Config, proj_hidden_dim: int, proj_dim: int,
                            head_batch_norm: bool = True) -> tuple[ContrastiveEncoder, dict]:
        """The online encoder on ``cfg.model``'s backbone (``model.init_weights`` loaded when set) and the arch."""
        model = build_model_from_config(cfg.model, num_classes=1)
        encoder = ContrastiveEncoder(model.backbone, proj_hidden_dim, proj_dim, head_batch_norm)
        encoder.init_report = model.init_report  # printed by the CLI's preflight
        arch = {k: v for k, v in model.arch.items() if k != "num_classes"}
        return encoder, arch

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA step after optimizer step ``step`` (1-based): momentum of the iteration just done, ``t = step − 1``."""
        self.momentum = momentum_at(step - 1, total_steps, self.base_momentum, self.momentum_schedule)
        ema_update_(self.target, self.online, self.momentum)

    def enqueue(self, global_keys: torch.Tensor, dense_output: torch.Tensor) -> None:
        """Push one view's normalised global keys and pooled dense keys (all workers') into the queues."""
        self.global_queue.enqueue(global_keys)
        self.dense_queue.enqueue(pooled_dense_key(dense_output))

    def segmentation_model(self) -> SegmentationModel:
        """The online backbone under a freshly initialised decoder of ``arch`` (only the backbone is trained)."""
        model = build_model(**self.arch, num_classes=1)
        model.backbone = self.online.backbone
        return model

    def export(self, directory: str | os.PathLike, meta: dict[str, Any]) -> dict[str, str]:
        """``backbone.pt`` (the online backbone) only: there is no trained decoder to export."""
        path = export_weights(self.segmentation_model(), Path(directory) / "backbone.pt", part="backbone", meta=meta)
        return {"backbone": str(path)}
