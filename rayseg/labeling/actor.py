"""The explainer actor of the labelling pipeline (:mod:`rayseg.labeling.pipeline`): the ensemble loaded once per
actor, each call explaining one batch on the actor's device.

Apart from the pipeline's driver code, so that each reads on its own; torch is imported in ``__init__``.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

import numpy as np

from rayseg.config import ExplainerSection

if TYPE_CHECKING:
    from rayseg.labeling.members import Member

__all__ = ["ExplainActor"]


class ExplainActor:
    """Actor stage: the ensemble is loaded once per actor; each call explains the ok rows of a batch.

    Output per row: ``deciles`` uint8 HxW (zeros for error rows) and ``member_top`` uint8 MxHxW, the top-decile
    mask of each member alone (for the ensemble-vs-member IoU check); ``explain_s``, the row's share of the call's
    seconds, and ``actor_ready_at``, the wall-clock time at which the actor had its members ready (first call's
    rows; 0 later), for the summary's stage timings. The ``image`` column is dropped."""

    def __init__(self, members: list[Member], num_classes: int, explainer: ExplainerSection, mean: tuple,
                 std: tuple, use_gpu: bool, seed: int, num_threads: int = 0, score_members: bool = True):
        import torch

        from rayseg.labeling.explainers import prepare_for_explanation
        from rayseg.labeling.members import load_members

        self.score_members = score_members  # per-member top-decile masks are only needed to score against true masks
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.cfg = explainer
        self.models = [prepare_for_explanation(m, explainer) for m in load_members(members, num_classes, self.device)]
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.seed = int(seed)
        self.ready_at = time.time()  # wall clock: the driver compares it with the pipeline's start

    def __call__(self, batch: dict) -> dict:
        import torch

        from rayseg.labeling.ensemble import deciles
        from rayseg.labeling.explainers import explain_ensemble

        started = time.perf_counter()
        images = batch.pop("image")
        n, _, h, w = images.shape
        ok = np.asarray([s == "ok" for s in batch["status"]], bool)
        out_deciles = np.zeros((n, h, w), np.uint8)
        out_members = np.zeros((n, len(self.models) if self.score_members else 0, h, w), np.uint8)
        if ok.any():
            ids = "\n".join(str(i) for i in batch["id"][ok])
            generator = torch.Generator(device=self.device)
            generator.manual_seed((self.seed * 1_000_003 + int(hashlib.sha256(ids.encode()).hexdigest()[:12], 16))
                                  % (2**63))
            x = torch.from_numpy(np.ascontiguousarray(images[ok])).to(self.device)  # uint8: normalised here
            x = (x.float() / 255.0 - self.mean) / self.std
            labels = torch.from_numpy(np.asarray(batch["class_index"][ok], np.int64)).to(self.device)
            with torch.enable_grad():
                per_model, _, dec = explain_ensemble(self.models, x, labels, self.cfg, generator=generator)
            out_deciles[ok] = dec.cpu().numpy()
            if self.score_members:
                member_top = deciles(per_model.float().flatten(0, 1)).view(per_model.shape) >= 9  # [M, B, H, W]
                out_members[ok] = member_top.transpose(0, 1).cpu().numpy().astype(np.uint8)
        batch["deciles"] = out_deciles
        batch["member_top"] = out_members
        # the stage timings of the summary, spread over the rows (the driver sums them)
        batch["explain_s"] = np.full(n, (time.perf_counter() - started) / max(n, 1), np.float64)
        batch["actor_ready_at"] = np.full(n, self.ready_at, np.float64)
        self.ready_at = 0.0  # reported once, with the first batch
        return batch
