"""The method interface: what the shared training engine needs from a training objective.

A method is an ``nn.Module`` that owns its model and any state of its own (prototypes, queues, momentum
encoders, as buffers or parameters, so they travel in checkpoints and DDP). The engine wraps the whole method
in DDP, calls ``forward(batch)`` to get a dict of named loss terms and minimises their sum; it logs each term.
The engine knows no method by name and a method knows nothing of Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from rayseg.config import Config
from rayseg.models import SegmentationModel
from rayseg.models.weights import export_weights


class Method(nn.Module):
    #: True when ``segmentation_model()`` predicts the classes of ``data`` so the engine can evaluate mIoU.
    evaluates: ClassVar[bool] = False
    #: Forwarded to DDP; set when some parameters get no gradient on some steps.
    find_unused_parameters: ClassVar[bool] = False
    #: Which weights ``rayseg finetune`` should start from: "model" (backbone + head) or "backbone".
    export_part: ClassVar[str] = "model"

    @classmethod
    def train_dataset(cls, cfg: Config) -> Dataset:
        """The dataset this method trains on (each item a dict of tensors)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: Config, train_set: Dataset) -> "Method":
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; the engine minimises their sum."""
        raise NotImplementedError

    def segmentation_model(self) -> SegmentationModel:
        """The network to evaluate and export."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step (momentum encoders, schedules); default: nothing."""

    def export_meta(self) -> dict[str, Any]:
        """Plain values stored with exported weights (class names, label tables)."""
        return {}

    def export(self, directory: str | os.PathLike, meta: dict[str, Any]) -> dict[str, str]:
        """Write the weight files other commands read; returns ``{name: path}``.

        Default: ``model.pt`` (backbone + head + classifier) and ``backbone.pt`` of ``segmentation_model()``.
        """
        model = self.segmentation_model()
        directory = Path(directory)
        return {part: str(export_weights(model, directory / f"{part}.pt", part=part, meta=meta))
                for part in ("model", "backbone")}
