"""Joint image/mask transforms built from ``torchvision.transforms.v2``.

Datasets call a segmentation transform as ``transform(image, mask)`` with a ``tv_tensors.Image`` (uint8
3xHxW) and a ``tv_tensors.Mask`` (int64 HxW); it returns plain tensors ``(float 3xHxW, int64 HxW)``.
v2 dispatches on the tv_tensor type: geometric ops move image and mask together (the mask with NEAREST
interpolation, padded with the ignore index), photometric ops and normalisation touch the image only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from rayseg.ignore import IGNORE_INDEX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "RandomScale",
    "SegEvalTransform",
    "SegTrainTransform",
    "to_float_image",
    "to_float_pair",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_float_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 image -> plain float32 tensor in [0, 1] (float images are returned as plain float32)."""
    image = torch.as_tensor(image).as_subclass(torch.Tensor)
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255)
    return image.to(torch.float32)


def to_float_pair(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``transform=None`` behaviour: image as float32 in [0, 1], mask as a plain int64 tensor."""
    mask = torch.as_tensor(mask).as_subclass(torch.Tensor)
    return to_float_image(image), mask if mask.dtype == torch.int64 else mask.to(torch.int64)


def _as_pair(image: torch.Tensor, mask: torch.Tensor) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Wrap plain tensors so that v2 knows which one is the mask."""
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    if not isinstance(mask, tv_tensors.Mask):
        mask = tv_tensors.Mask(mask)
    return image, mask.to(torch.int64)


def _plain(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _to_float_and_normalize(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[v2.Transform]:
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]  # images only; masks pass through
    if mean is not None and std is not None:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return steps


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range``.

    With ``base_size`` the shorter side becomes ``round(base_size * factor)`` (aspect kept); without it both
    sides are multiplied by the factor. Images use antialiased bilinear, masks NEAREST (v2's Mask kernel).
    """

    def __init__(self, scale_range: tuple[float, float], base_size: int | None = None, antialias: bool = True):
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range}")
        self.scale_range, self.base_size, self.antialias = (float(lo), float(hi)), base_size, antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        factor = lo + float(torch.rand(())) * (hi - lo)
        if self.base_size is not None:
            factor *= self.base_size / min(h, w)
        return {"size": [max(1, round(h * factor)), max(1, round(w * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=self.antialias)


class SegTrainTransform:
    """Training augmentation: random scale, random crop (padded), h-flip, colour jitter, float, normalise.

    The crop pads images with 0 and masks with ``ignore_index``. ``color_jitter`` is the brightness /
    contrast / saturation strength (0 disables it); ``mean=None`` or ``std=None`` skips normalisation.
    Returns plain tensors ``(float32 3 x crop x crop, int64 crop x crop)``.
    """

    def __init__(
        self,
        crop_size: int,
        base_size: int | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        color_jitter: float = 0.2,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.crop_size, self.ignore_index = crop_size, ignore_index
        steps: list[v2.Transform] = [
            RandomScale(scale_range, base_size),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
            v2.RandomHorizontalFlip(hflip_prob),
        ]
        if color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        self.pipeline = v2.Compose(steps + _to_float_and_normalize(mean, std))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _plain(*self.pipeline(*_as_pair(image, mask)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


class SegEvalTransform:
    """Evaluation transform: optional resize of the shorter side to ``size`` (mask NEAREST), float, normalise."""

    def __init__(
        self,
        size: int | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ):
        steps: list[v2.Transform] = [v2.Resize(size)] if size is not None else []
        self.pipeline = v2.Compose(steps + _to_float_and_normalize(mean, std))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _plain(*self.pipeline(*_as_pair(image, mask)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


class ImageTransform:
    """Image-only eval transform for classification: resize to ``size x size`` (if given), float, normalise."""

    def __init__(
        self,
        size: int | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ):
        steps: list[v2.Transform] = [v2.Resize((size, size))] if size is not None else []
        self.pipeline = v2.Compose(steps + _to_float_and_normalize(mean, std))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        return self.pipeline(image).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"
