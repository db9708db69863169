"""PSSL labeling math: per-model explanations (SmoothGrad by default; IntegratedGradients, GradCAM via captum),
min-max normalisation, the ensemble mean, deciles and pseudo-labels. Plain PyTorch; importing this package
does not import Ray (the Ray Data pipeline lives in its own module).

The names below are loaded on first use, so that the torch-free submodules (``shards``, ``stages``) can be
imported by Ray Data's task workers without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "deciles": "ensemble",
    "ensemble_mean": "ensemble",
    "minmax_normalize": "ensemble",
    "pseudo_label": "ensemble",
    "top_decile_mask": "ensemble",
    "default_gradcam_layer": "explainers",
    "explain": "explainers",
    "explain_ensemble": "explainers",
    "gradcam": "explainers",
    "integrated_gradients": "explainers",
    "prepare_for_explanation": "explainers",
    "smoothgrad": "explainers",
    "targets_for": "explainers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"rayseg.labeling.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rayseg.labeling' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
