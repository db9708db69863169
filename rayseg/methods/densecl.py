"""DenseCL (Wang et al., CVPR 2021) as the PixCon paper's baseline (methods.md §4.7).

MoCo-v2 with a dense branch: an online encoder (backbone + global head + dense head, *no predictors*) and a
momentum target (fixed momentum 0.999). Query view 1 (online), key view 2 (target)::

    L = (1 − λ_t) L_g + λ_t L_d,        λ_t = 0 for the first ``dense_warmup_steps`` steps, then λ (0.5)

``L_g`` is :class:`~rayseg.methods.contrastive.GlobalInfoNCE` on ``q = n(head_g(f^1))`` and ``k = n(head_g^t(f^2))``;
``L_d`` is :class:`~rayseg.methods.contrastive.DenseInfoNCE` with unit weights on ``u_i = n(head_d(f^1)_i)`` and
``v_j = n(head_d^t(f^2)_j)``, the positive of query ``i`` being ``argmax_j cos(f^1_i, f^2_j)`` on the backbone
features (exactly PixCon-Sim's matching, without reweighting). With ``densecl.symmetric`` the swapped direction is
added (PixCon's symmetric loss). The key view's global keys and pooled dense keys are enqueued (all workers').
The loss terms are ``{"global": (1 − λ_t) Σ L_g, "dense": λ_t Σ L_d}``; during the warm-up the dense term is
``0 · L_d`` so that every parameter still gets a (zero) gradient, as DDP requires.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayseg.config import Config
from rayseg.data.views import TwoViewDataset
from rayseg.methods.contrastive import (
    ContrastiveEncoder,
    DenseInfoNCE,
    GlobalInfoNCE,
    MomentumContrast,
    cells,
    similarity_match,
)

__all__ = ["DenseCL"]


class DenseCL(MomentumContrast):
    """DenseCL; see the module docstring. ``steps_done`` (a buffer, so it resumes) drives the dense warm-up."""

    def __init__(self, encoder: ContrastiveEncoder, arch: dict, temperature: float = 0.2, loss_lambda: float = 0.5,
                 dense_warmup_steps: int = 1000, symmetric: bool = False, queue_size: int = 65536,
                 momentum: float = 0.999, momentum_schedule: str = "constant"):
        super().__init__(encoder, arch, queue_size, momentum, momentum_schedule)
        self.global_loss = GlobalInfoNCE(temperature)
        self.dense_loss = DenseInfoNCE(temperature)
        self.loss_lambda, self.dense_warmup_steps = float(loss_lambda), int(dense_warmup_steps)
        self.symmetric = bool(symmetric)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg: Config, train_set: TwoViewDataset) -> DenseCL:
        d = cfg.densecl
        encoder, arch = cls.encoder_from_config(cfg, d.proj_hidden_dim, d.proj_dim, d.head_batch_norm)
        return cls(encoder, arch, temperature=d.temperature, loss_lambda=d.loss_lambda,
                   dense_warmup_steps=d.dense_warmup_steps, symmetric=d.symmetric, queue_size=d.queue_size,
                   momentum=d.momentum, momentum_schedule=d.momentum_schedule)

    def current_lambda(self) -> float:
        """λ_t: 0 during the dense-loss warm-up, then ``loss_lambda``."""
        return self.loss_lambda if int(self.steps_done) >= self.dense_warmup_steps else 0.0

    def on_step_end(self, step: int, total_steps: int) -> None:
        super().on_step_end(step, total_steps)
        self.steps_done.fill_(step)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = (batch["image"], batch["view2"])
        directions = ((0, 1), (1, 0)) if self.symmetric else ((0, 1),)
        queried = sorted({a for a, _ in directions})
        online = {a: self.online(views[a]) for a in queried}
        with torch.no_grad():
            target = {b: self.target(views[b]) for _, b in directions}
        global_queue, dense_queue = self.global_queue.snapshot(), self.dense_queue.snapshot()

        loss_global = loss_dense = 0.0
        for a, b in directions:
            q, k = F.normalize(online[a].global_.float(), dim=1), F.normalize(target[b].global_.float(), dim=1)
            loss_global = loss_global + self.global_loss(q, k, global_queue)
            match, _ = similarity_match(online[a].features, target[b].features)
            loss_dense = loss_dense + self.dense_loss(cells(online[a].dense), cells(target[b].dense), match,
                                                      dense_queue)

        keyed = list(target)
        chosen = keyed[int(torch.randint(len(keyed), ()))] if len(keyed) > 1 else keyed[0]
        self.enqueue(F.normalize(target[chosen].global_.float(), dim=1), target[chosen].dense)
        lam = self.current_lambda()
        return {"global": (1.0 - lam) * loss_global, "dense": lam * loss_dense}

    def export_meta(self) -> dict:
        return {"pretrain": "densecl"}
