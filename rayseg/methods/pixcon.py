"""PixCon: pixel-level contrastive pre-training with similarity matching and semantic reweighting (methods.md §4).

MoCo-v2+ / BYOL layout (§4.1): an online encoder (backbone + global head + dense head) with a global and a dense
predictor, and a momentum target (backbone + heads, no predictors) whose momentum rises from 0.99 to 1 by cosine.
For a query view ``a`` (online) and a key view ``b`` (target), summed over both directions ``(1,2), (2,1)``::

    L = Σ_(a,b) [ (1 − λ) L_g(a→b) + λ L_d(a→b) ]          λ = pixcon.loss_lambda = 0.5

``L_g`` is :class:`~rayseg.methods.contrastive.GlobalInfoNCE` on ``q^a = n(pred_g(head_g(f^a)))`` and
``k^b = n(head_g^t(f^b))``; ``L_d`` is the weighted :class:`~rayseg.methods.contrastive.DenseInfoNCE` on
``u^a_i = n(pred_d(head_d(f^a))_i)`` and ``v^b_j = n(head_d^t(f^b)_j)``. The variant (``pixcon.variant``) picks the
positive ``j*(i)`` of each query cell and its weight ``w_i``:

* ``coord``: ``j*(i)`` = the key cell at the same image location (:func:`coordinate_match`); ``w_i = 1`` for
  in-box queries, 0 otherwise (out-of-box queries are dropped).
* ``sim``: ``j*(i) = argmax_j cos(f^a_i, f^b_j)`` on the backbone features (:func:`similarity_match`); ``w_i = 1``.
* ``sr``: the ``sim`` positives with the semantic weights of :class:`SemanticReweighting`.

After the losses, the keys of one view chosen at random (p = 0.5) go into the queues (all workers' keys): its
global keys ``k`` and its pooled dense keys ``n(mean_j head_d^t(f)_j)``. The loss terms are returned as
``{"global": (1 − λ) Σ L_g, "dense": λ Σ L_d}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayseg.config import Config
from rayseg.data.views import TwoViewDataset, box_cell_mask
from rayseg.methods.contrastive import (
    ContrastiveEncoder,
    DenseInfoNCE,
    GlobalInfoNCE,
    MomentumContrast,
    cells,
    similarity_match,
)
from rayseg.models.projection import DenseHead, MLPHead

__all__ = ["PixCon", "SemanticReweighting", "coordinate_match"]

VARIANTS = ("coord", "sim", "sr")


class SemanticReweighting(nn.Module):
    """PixCon-SR's per-query weights (paper Eq. 7, as reconstructed from the official code, methods.md §4.3).

    For one image with matching confidences ``s_i = max_j Σ_ij`` and in-box cells ``B``::

        w_i = 1                                                            i ∈ B
        w_i = ( (s_i − min_{i'} s_{i'}) / (max_{i' ∉ B} s_{i'} − min_{i'} s_{i'} + ε) )^γ        i ∉ B

    The min runs over *all* queries of the image (in-box ones included), the max over the out-of-box ones only;
    γ = 2. An image without out-of-box cells gets ``w = 1`` everywhere. ε (``pixcon.sr_eps``) and an explicit guard
    make a zero denominator (every out-of-box ``s_i`` equal to the minimum) give ``w_i = 0`` instead of 0/0.
    The weights carry no gradient; :class:`DenseInfoNCE` normalises ``Σ w_i l_i`` by ``Σ w_i`` over the batch.
    """

    def __init__(self, gamma: float = 2.0, eps: float = 1e-6):
        super().__init__()
        self.gamma, self.eps = float(gamma), float(eps)

    @torch.no_grad()
    def forward(self, confidence: torch.Tensor, in_box: torch.Tensor) -> torch.Tensor:
        """``confidence`` ``s`` and bool ``in_box``, both ``B x N`` -> weights ``B x N``."""
        s = confidence.float()
        s_min = s.min(dim=1, keepdim=True).values
        s_max_out = s.masked_fill(in_box, float("-inf")).max(dim=1, keepdim=True).values  # -inf: no out-of-box cell
        denominator = s_max_out - s_min + self.eps
        ratio = torch.where(denominator > 0, (s - s_min) / denominator.clamp_min(torch.finfo(s.dtype).tiny),
                            torch.zeros_like(s))
        out_of_box = ratio.clamp(0.0, 1.0) ** self.gamma
        return torch.where(in_box, torch.ones_like(s), out_of_box)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, eps={self.eps}"


@torch.no_grad()
def coordinate_match(box_query: torch.Tensor, box_key: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PixCon-Coord's positives: for every cell of the query view's ``h x w`` grid, the index (``r·w + c``) of the
    key-view cell that contains the same image point; ``B x N`` long.

    Boxes ``B x 4`` are the overlap boxes of :mod:`rayseg.data.views` (``x_left, y_top, x_right, y_bottom`` of the
    intersection in each view, mirrored by a flip). The cell centre ``(x_q, y_q)`` maps affinely from the query box
    to the key box, ``x_k = x^k_left + (x_q − x^q_left) (x^k_right − x^k_left) / (x^q_right − x^q_left)`` (same for
    y), which also undoes and applies flips; the key cell is ``(floor(y_k h), floor(x_k w))``, clamped to the grid
    (the nearest key cell) [PROPOSED]. Only in-box queries have a true correspondence; the caller weights the rest 0.
    """
    cols = (torch.arange(w, device=box_query.device, dtype=torch.float32) + 0.5) / w
    rows = (torch.arange(h, device=box_query.device, dtype=torch.float32) + 0.5) / h

    def to_key(centres: torch.Tensor, lo: int, hi: int, size: int) -> torch.Tensor:  # B x size key indices
        q0, q1 = box_query[:, lo, None].float(), box_query[:, hi, None].float()
        k0, k1 = box_key[:, lo, None].float(), box_key[:, hi, None].float()
        span = q1 - q0
        scale = torch.where(span.abs() > 1e-12, (k1 - k0) / torch.where(span.abs() > 1e-12, span, 1.0), 0.0)
        mapped = k0 + (centres[None] - q0) * scale
        return (mapped * size).floor().clamp(0, size - 1).long()

    col_key = to_key(cols, 0, 2, w)  # B x w
    row_key = to_key(rows, 1, 3, h)  # B x h
    return (row_key[:, :, None] * w + col_key[:, None, :]).flatten(1)


class PixCon(MomentumContrast):
    """PixCon-Coord / -Sim / -SR (``pixcon.variant``); see the module docstring for the objective."""

    def __init__(self, encoder: ContrastiveEncoder, arch: dict, variant: str = "sr", temperature: float = 0.2,
                 loss_lambda: float = 0.5, gamma: float = 2.0, sr_eps: float = 1e-6, queue_size: int = 65536,
                 pred_hidden_dim: int = 2048, momentum: float = 0.99, momentum_schedule: str = "cosine"):
        super().__init__(encoder, arch, queue_size, momentum, momentum_schedule)
        if variant not in VARIANTS:
            raise ValueError(f"pixcon.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        dim = encoder.global_head[-1].out_features
        self.global_predictor = MLPHead(dim, pred_hidden_dim, dim)
        self.dense_predictor = DenseHead(dim, pred_hidden_dim, dim)  # the same MLP on every cell (BN over B·N)
        self.global_loss = GlobalInfoNCE(temperature)
        self.dense_loss = DenseInfoNCE(temperature)
        self.reweighting = SemanticReweighting(gamma, sr_eps)
        self.variant, self.loss_lambda = variant, float(loss_lambda)

    @classmethod
    def from_config(cls, cfg: Config, train_set: TwoViewDataset) -> PixCon:
        p = cfg.pixcon
        encoder, arch = cls.encoder_from_config(cfg, p.proj_hidden_dim, p.proj_dim)
        return cls(encoder, arch, variant=p.variant, temperature=p.temperature, loss_lambda=p.loss_lambda,
                   gamma=p.gamma, sr_eps=p.sr_eps, queue_size=p.queue_size, pred_hidden_dim=p.pred_hidden_dim,
                   momentum=p.momentum, momentum_schedule=p.momentum_schedule)

    def positives(self, f_query: torch.Tensor, f_key: torch.Tensor, box_query: torch.Tensor,
                  box_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(j*, w)`` of the variant for query-view backbone features ``f_query`` and key-view ``f_key``."""
        h, w = f_query.shape[-2:]
        in_box = box_cell_mask(box_query, h, w).flatten(1)
        if self.variant == "coord":
            return coordinate_match(box_query, box_key, h, w), in_box.float()
        match, confidence = similarity_match(f_query, f_key)
        if self.variant == "sim":
            return match, None
        return match, self.reweighting(confidence, in_box)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views, boxes = (batch["image"], batch["view2"]), (batch["box1"], batch["box2"])
        online = [self.online(x) for x in views]
        with torch.no_grad():
            target = [self.target(x) for x in views]
        q = [F.normalize(self.global_predictor(o.global_).float(), dim=1) for o in online]
        u = [cells(self.dense_predictor(o.dense)) for o in online]
        k = [F.normalize(t.global_.float(), dim=1) for t in target]
        v = [cells(t.dense) for t in target]
        global_queue, dense_queue = self.global_queue.snapshot(), self.dense_queue.snapshot()

        loss_global = loss_dense = 0.0
        for a, b in ((0, 1), (1, 0)):
            loss_global = loss_global + self.global_loss(q[a], k[b], global_queue)
            match, weights = self.positives(online[a].features, target[b].features, boxes[a], boxes[b])
            loss_dense = loss_dense + self.dense_loss(u[a], v[b], match, dense_queue, weights)

        chosen = int(torch.randint(2, ()))  # the view whose keys are enqueued
        self.enqueue(k[chosen], target[chosen].dense)
        return {"global": (1.0 - self.loss_lambda) * loss_global, "dense": self.loss_lambda * loss_dense}

    def export_meta(self) -> dict:
        return {"pretrain": f"pixcon-{self.variant}"}
