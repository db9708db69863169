"""Segmentation inference as the papers evaluate: whole images or sliding windows, at the image's own size or
resized by its shorter side, optionally averaged with the horizontal flip (the ``eval`` config section).

:func:`infer` returns class probabilities ``B x K x H x W`` at the size of the input image, whatever the size it
was inferred at, so metrics are computed at the label's own resolution. Sliding windows (``eval.mode: slide``)
cover the image with ``crop x crop`` windows whose top-left corners are ``stride`` apart, the last one flush
with the border; a window never exceeds the image (a smaller image is one window), and overlapping
probabilities are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayseg.config import EvalSection

__all__ = ["infer", "slide", "window_starts"]


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side: ``0, stride, 2·stride, ...`` and a last one at
    ``size - crop``, so that every pixel is covered and no window leaves the image."""
    if size <= crop:
        return [0]
    count = (size - crop + stride - 1) // stride + 1
    return [min(i * stride, size - crop) for i in range(count)]


def slide(model: nn.Module, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Softmax probabilities of ``model`` over ``crop x crop`` windows ``stride`` apart, averaged where they
    overlap; ``B x K x H x W`` for a ``B x 3 x H x W`` image."""
    h, w = image.shape[-2:]
    total, count = None, torch.zeros(1, 1, h, w, device=image.device)
    for top in window_starts(h, crop, stride):
        for left in window_starts(w, crop, stride):
            window = image[..., top:top + crop, left:left + crop]
            probs = model(window).float().softmax(1)
            if total is None:
                total = torch.zeros(image.shape[0], probs.shape[1], h, w, device=image.device)
            total[..., top:top + window.shape[-2], left:left + window.shape[-1]] += probs
            count[..., top:top + window.shape[-2], left:left + window.shape[-1]] += 1
    return total / count


def _probabilities(model: nn.Module, image: torch.Tensor, settings: EvalSection) -> torch.Tensor:
    if settings.mode == "slide":
        return slide(model, image, settings.crop, settings.stride)
    return model(image).float().softmax(1)


@torch.no_grad()
def infer(model: nn.Module, image: torch.Tensor, settings: EvalSection) -> torch.Tensor:
    """Class probabilities ``B x K x H x W`` of ``model`` (in eval mode) for ``image`` (``B x 3 x H x W``) under
    ``settings`` (the ``eval`` section)."""
    size = image.shape[-2:]
    x = image
    if settings.short_side:
        scale = settings.short_side / min(size)
        x = F.interpolate(image, size=(round(size[0] * scale), round(size[1] * scale)), mode="bilinear",
                          align_corners=False)
    probs = _probabilities(model, x, settings)
    if settings.flip:
        probs = (probs + _probabilities(model, x.flip(-1), settings).flip(-1)) / 2
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
    return probs
