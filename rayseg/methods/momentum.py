"""Momentum (target) encoders and key queues of the contrastive methods (PixCon, DenseCL; methods.md §4.1, §4.7).

* :func:`momentum_at`: the EMA momentum at a step (BYOL's cosine rise ``0.99 -> 1``, or constant for MoCo-v2).
* :func:`make_target` / :func:`ema_update_`: a frozen copy of the online encoder and its EMA update
  ``θ_t <- m θ_t + (1 - m) θ_o`` (parameters only; the target's BatchNorm statistics follow its own forwards).
* :class:`KeyQueue`: a FIFO ring of L2-normalised keys, filled with the keys of *all* workers.

Distributed training. The engine wraps the whole method in DDP:

* DDP builds its gradient buckets only from parameters with ``requires_grad=True``, so the target (all
  ``requires_grad=False``) is never all-reduced; every worker applies the same EMA to identical online weights,
  so the targets stay identical without communication.
* With ``broadcast_buffers`` (DDP's default) rank 0's buffers — BatchNorm statistics, the queues and their
  pointers — are broadcast to every rank at the start of each forward. The queues are filled with the same
  all-gathered keys in the same order on every rank, so they are already identical and the broadcast changes
  nothing (it costs one copy of each queue per step). ``tests/test_pixcon.py`` checks both under real DDP.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["KeyQueue", "all_gather_rows", "ema_update_", "make_target", "momentum_at"]


def momentum_at(step: int, total_steps: int, base: float, schedule: str = "cosine") -> float:
    """EMA momentum after ``step`` of ``total_steps`` optimizer steps.

    ``cosine`` (BYOL, PixCon): ``m_t = 1 − (1 − m_0) (cos(π t / T) + 1) / 2``: ``m_0`` at ``t = 0``, ``(1 + m_0) / 2``
    at ``t = T / 2``, 1 at ``t = T``. ``constant`` (MoCo-v2, DenseCL): ``m_0``.
    """
    if schedule == "constant":
        return float(base)
    if schedule != "cosine":
        raise ValueError(f"unknown momentum schedule {schedule!r}")
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def make_target(online: nn.Module) -> nn.Module:
    """A copy of ``online`` that receives no gradients (``requires_grad=False`` on every parameter)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``θ_t <- m θ_t + (1 − m) θ_o`` for every parameter pair, in place."""
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.lerp_(p_o.detach(), 1.0 - momentum)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (``n x D``, the same shape on every rank) of all ranks in rank order; ``x`` itself when
    not distributed. No gradient flows through the gathered rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


class KeyQueue(nn.Module):
    """FIFO ring of ``size`` keys of width ``dim`` (buffers ``keys``: ``size x dim``, ``ptr``: next write index).

    Starts as random unit vectors. :meth:`enqueue` all-gathers the new keys of every worker (rank order) and writes
    them at ``ptr`` with wrap-around, overwriting the oldest entries; any batch size works.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def snapshot(self) -> torch.Tensor:
        """The current keys as a detached copy: logits computed from it stay valid after the next enqueue."""
        return self.keys.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = all_gather_rows(keys).to(self.keys.dtype)
        n, ptr = keys.shape[0], int(self.ptr)
        kept = keys[-self.size:]  # more new keys than slots: only the newest survive, where a row-by-row
        start = ptr + n - kept.shape[0]  # FIFO write would have left them
        index = (start + torch.arange(kept.shape[0], device=self.keys.device)) % self.size
        self.keys[index] = kept
        self.ptr.fill_((ptr + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.keys.shape[0]}, dim={self.keys.shape[1]}"
