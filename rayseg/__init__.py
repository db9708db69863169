"""rayseg: Ray-based pre-training and pseudo-labeling for semantic segmentation."""

__version__ = "0.1.0"
