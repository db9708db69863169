"""Build a segmentation model from the ``model`` config section, loading ``init_weights`` when set."""

from __future__ import annotations

from rayseg.config import ModelSection
from rayseg.models import SegmentationModel, build_model
from rayseg.models.weights import load_weights


def build_model_from_config(model_cfg: ModelSection, num_classes: int) -> SegmentationModel:
    """The model, its backbone frozen with ``model.freeze_backbone``; when weights were loaded,
    ``model.init_report`` is their :class:`LoadReport`."""
    model = build_model(backbone=model_cfg.backbone, head=model_cfg.head, num_classes=num_classes,
                        output_stride=model_cfg.output_stride, channels=model_cfg.channels,
                        dropout=model_cfg.dropout, classifier=model_cfg.classifier)
    model.init_report = load_weights(model, model_cfg.init_weights) if model_cfg.init_weights else None
    if model_cfg.freeze_backbone:
        model.freeze_backbone()
    return model
