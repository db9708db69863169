"""Build a segmentation model from the ``model`` config section, loading ``init_weights`` when set."""

from __future__ import annotations

from collections.abc import Callable

from rayseg.config import ModelSection
from rayseg.models import SegmentationModel, build_model
from rayseg.models.weights import load_weights


def build_model_from_config(model_cfg: ModelSection, num_classes: int,
                            log: Callable[[str], None] | None = None) -> SegmentationModel:
    model = build_model(backbone=model_cfg.backbone, head=model_cfg.head, num_classes=num_classes,
                        output_stride=model_cfg.output_stride, channels=model_cfg.channels,
                        dropout=model_cfg.dropout)
    if model_cfg.init_weights:
        report = load_weights(model, model_cfg.init_weights)
        if log is not None:
            log(report.summary())
    return model
