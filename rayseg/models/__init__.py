"""Models: torchvision backbones, decoders, the segmentation model, image classifiers, weight files."""

from rayseg.models.backbones import BACKBONES, Backbone, build_backbone
from rayseg.models.heads import HEADS, build_head
from rayseg.models.segmentation import CLASSIFIERS, SegmentationModel, build_classifier, build_model
from rayseg.models.ssa import SSAClassifier
from rayseg.models.weights import LoadReport, WeightsError, export_weights, load_weights, read_weights

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "HEADS",
    "Backbone",
    "LoadReport",
    "SSAClassifier",
    "SegmentationModel",
    "WeightsError",
    "build_backbone",
    "build_classifier",
    "build_head",
    "build_model",
    "export_weights",
    "load_weights",
    "read_weights",
]
