"""Ensemble math of PSSL label generation (methods.md §3.1 steps 3-6): pure tensor functions, no model.

Pipeline for one image and ``M`` saliency maps ``E_m`` (``H×W`` each)::

    Ẽ_m  = (E_m − min E_m) / (max E_m − min E_m)          minmax_normalize
    S    = (1/M) Σ_m Ẽ_m                                   ensemble_mean        (PSSL Eq. 1)
    D(x) = ⌊10·Z(x)/N⌋,  Z(x) = #{y : S(y) < S(x)}         deciles              (PSSL Eq. 2)
    label(x) = c if D(x) ≥ 9 else background               pseudo_label

Every function works on a batch of images and treats each image (and each model) independently.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rayseg.ignore import IGNORE_INDEX

__all__ = ["deciles", "ensemble_mean", "minmax_normalize", "pseudo_label", "top_decile_mask"]


def minmax_normalize(maps: Tensor) -> Tensor:
    """Min-max normalise every ``H×W`` map (the last two dimensions) to ``[0, 1]`` on its own.

    ``Ẽ = (E − min E) / (max E − min E)``, with min and max taken over the ``H×W`` pixels of that map only.

    A constant map (``max E = min E``) would be ``0/0``; it becomes all zeros instead: such a map carries
    no ranking of pixels, so it must not outweigh the other models in the ensemble mean. Integer input is
    converted to float32; a floating input keeps its dtype.
    """
    if maps.ndim < 2:
        raise ValueError(f"minmax_normalize expects maps of shape [..., H, W], got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.float()
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    # For a constant map E − min E is exactly 0 everywhere, so dividing by 1 instead of 0 gives zeros.
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    return (maps - lo) / safe_span


def ensemble_mean(per_model: Tensor) -> Tensor:
    """Ensemble score of each image: the mean over models of the min-max normalised maps.

    ``S = (1/M) Σ_{m=1..M} Ẽ_m`` (PSSL Eq. 1), where ``Ẽ_m`` is :func:`minmax_normalize` of model ``m``'s
    map of that image. ``per_model`` has shape ``[M, B, H, W]``; the result has shape ``[B, H, W]`` with
    values in ``[0, 1]``.
    """
    if per_model.ndim != 4:
        raise ValueError(f"ensemble_mean expects per-model maps of shape [M, B, H, W], got shape {tuple(per_model.shape)}")
    return minmax_normalize(per_model).mean(dim=0)


def deciles(scores: Tensor) -> Tensor:
    """Decile of every pixel within its own image (PSSL Eq. 2), as uint8 in ``0..9``.

    ``D(x) = ⌊10·Z(x) / N⌋`` with ``Z(x)`` the number of pixels of the same image whose score is strictly
    smaller than ``S(x)`` and ``N = H·W``. Equal scores get the same ``Z`` and so share a decile; the top
    decile can therefore hold more or fewer than 10 % of the pixels (all pixels equal → all in decile 0).

    ``scores`` is ``[H, W]`` or ``[B, H, W]``; the result has the same shape. Computed per image by sorting
    and ``searchsorted(sorted, S, right=False)``, which returns exactly ``Z(x)`` (the index of the first
    sorted value ``>= S(x)``). NaN scores have no rank and raise ``ValueError``.
    """
    if scores.ndim not in (2, 3):
        raise ValueError(f"deciles expects scores of shape [H, W] or [B, H, W], got shape {tuple(scores.shape)}")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError("deciles: scores contain NaN")
    flat = scores.reshape(-1, scores.shape[-2] * scores.shape[-1]).contiguous()  # [B, N]
    n = flat.shape[1]
    sorted_scores = torch.sort(flat, dim=1).values
    z = torch.searchsorted(sorted_scores, flat, right=False)  # int64, Z(x) = #{y : S(y) < S(x)}
    d = torch.div(10 * z, n, rounding_mode="floor")
    return d.to(torch.uint8).reshape(scores.shape)


def _check_threshold(threshold: int) -> None:
    if not 1 <= int(threshold) <= 9:
        raise ValueError(f"decile threshold must be in 1..9, got {threshold}")


def top_decile_mask(deciles: Tensor, threshold: int = 9) -> Tensor:
    """Foreground mask ``D(x) ≥ threshold`` (bool, same shape). The paper uses ``threshold = 9``: the top decile."""
    _check_threshold(threshold)
    return deciles >= threshold


def pseudo_label(
    deciles: Tensor,
    class_id: int | Tensor,
    background_index: int,
    threshold: int = 9,
    ignore_d8: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Pixel label map (int64, same shape as ``deciles``) of PSSL §3.1 step 6::

        label(x) = class_id          if D(x) ≥ threshold
                   ignore_index      if ignore_d8 and D(x) = threshold − 1
                   background_index  otherwise

    ``class_id`` is one int, or for ``[B, H, W]`` deciles a tensor of ``B`` class ids (one per image).
    The paper's choice is ``threshold = 9`` and ``ignore_d8 = False`` (ignoring ``D_8`` hurt in its ablation).
    """
    _check_threshold(threshold)
    d = deciles.long()
    label = torch.full_like(d, int(background_index))
    fg = d >= threshold
    if isinstance(class_id, Tensor) and class_id.ndim > 0:
        if d.ndim != 3 or class_id.shape != (d.shape[0],):
            raise ValueError(
                f"pseudo_label: class_id of shape {tuple(class_id.shape)} needs deciles of shape [B, H, W] with "
                f"B = {class_id.shape[0]}, got {tuple(d.shape)}"
            )
        cls = class_id.to(device=d.device, dtype=torch.int64).view(-1, 1, 1).expand_as(d)
        label = torch.where(fg, cls, label)
    else:
        label[fg] = int(class_id)
    if ignore_d8:
        label[d == threshold - 1] = int(ignore_index)
    return label
