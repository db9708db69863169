"""PSSL labeling math: per-model explanations (SmoothGrad by default; IntegratedGradients, GradCAM via captum),
min-max normalisation, the ensemble mean, deciles and pseudo-labels. Plain PyTorch; importing this package
does not import Ray (the Ray Data pipeline lives in its own module)."""

from rayseg.labeling.ensemble import deciles, ensemble_mean, minmax_normalize, pseudo_label, top_decile_mask
from rayseg.labeling.explainers import (
    SmoothGradConfig,
    default_gradcam_layer,
    explain,
    explain_ensemble,
    gradcam,
    integrated_gradients,
    smoothgrad,
    targets_for,
)

__all__ = [
    "SmoothGradConfig",
    "deciles",
    "default_gradcam_layer",
    "ensemble_mean",
    "explain",
    "explain_ensemble",
    "gradcam",
    "integrated_gradients",
    "minmax_normalize",
    "pseudo_label",
    "smoothgrad",
    "targets_for",
    "top_decile_mask",
]
