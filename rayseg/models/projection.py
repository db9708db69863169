"""Projection heads and predictors of the contrastive methods (MDP, PixCon, DenseCL).

``MLPHead`` maps a pooled vector (global branch, or a predictor); ``DenseHead`` applies the same two-layer MLP to
every position of a feature map with 1x1 convolutions. Both are ``Linear/Conv -> BN -> ReLU -> Linear/Conv``
(methods.md §1.3, §4.1), or without the BN (``batch_norm=False``: MoCo-v2's and DenseCL's neck). BatchNorm becomes
SyncBatchNorm under DDP when ``train.sync_bn`` converts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseHead", "MLPHead"]


class MLPHead(nn.Sequential):
    """``x -> W2 · ReLU(BN(W1 · x))`` for ``x`` of shape ``B x in_dim`` (``W2 · ReLU(W1 · x + b1)`` without
    ``batch_norm``); optional L2 normalisation of the output."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, normalize: bool = False, batch_norm: bool = True):
        norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=not batch_norm),
            *norm,
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.normalize(y, dim=1) if self.normalize else y


class DenseHead(nn.Sequential):
    """Per-position MLP ``B x in_dim x h x w -> B x out_dim x h x w`` (1x1 conv, BN, ReLU, 1x1 conv).

    With ``normalize=True`` every output vector ``z(x)`` is L2-normalised over channels (MDP's ``z``).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, normalize: bool = False, batch_norm: bool = True):
        norm = [nn.BatchNorm2d(hidden_dim)] if batch_norm else []
        super().__init__(
            nn.Conv2d(in_dim, hidden_dim, 1, bias=not batch_norm),
            *norm,
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, 1),
        )
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.normalize(y, dim=1) if self.normalize else y
