"""Two augmented views of one image and where they overlap (PixCon / DenseCL pre-training, methods.md §4.2).

Geometry. View 1 is a ``RandomResizedCrop`` of the image; view 2 is drawn by the same sampler until its
intersection with view 1 covers at least ``min_overlap`` of view 2's area (``overlap_tries`` draws). When no
draw qualifies, *both* views become the same centre crop (the sampler's own fallback: the whole image, or its
largest centred crop inside the aspect-ratio range). Both crops are resized to ``S x S``; each view is then
flipped horizontally with probability ``hflip`` on its own.

Overlap box. The intersection of the two crops, in each view's normalised coordinates (0..1 across the
view): ``box = (x_left, y_top, x_right, y_bottom)`` where ``x_left`` / ``x_right`` are the view coordinates of the
intersection's *left / right edge in the original image*. A flip mirrors them (``x -> 1 - x``) without
re-sorting, so in a flipped view ``x_left > x_right``. The in-box cell mask only needs the box's extent
(:func:`box_cell_mask`); keeping the orientation also lets coordinate matching map any point of one view
into the other with one affine formula (``rayseg.methods.pixcon.coordinate_match``).

Photometry (BYOL's asymmetric recipe by default, torchvision transforms v2, per view): colour jitter with
probability ``jitter_prob``, grayscale, Gaussian blur (probability ``blur_prob[v]``), solarisation
(``solarize_prob[v]``), ImageNet normalisation.

:class:`TwoViewDataset` wraps any image dataset (its masks and labels are ignored: unlabeled scenes) and yields
``{"image": view 1, "view2": view 2, "box1", "box2"}``: view 1 is stored under ``"image"`` because the training
engine counts and checks a batch by that key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from rayseg.config import DataSection, ViewsSection
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_float_image

__all__ = [
    "TwoViewDataset",
    "TwoViewTransform",
    "box_cell_mask",
    "build_two_view_dataset",
    "centre_crop",
    "intersection_area",
    "overlap_box",
]

Crop = tuple[int, int, int, int]  # (top, left, height, width) in image pixels, as torchvision's resized_crop


def centre_crop(height: int, width: int, ratio: tuple[float, float]) -> Crop:
    """RandomResizedCrop's fallback crop: the whole image if its aspect ratio is in ``ratio``, else the largest
    centred crop at the nearest allowed ratio."""
    in_ratio = width / height
    w, h = width, height
    if in_ratio < min(ratio):
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        w = round(h * max(ratio))
    return (height - h) // 2, (width - w) // 2, h, w


def intersection_area(a: Crop, b: Crop) -> int:
    """Pixel area shared by two crops ``(top, left, height, width)``."""
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0) * max(dy, 0)


def overlap_box(crop: Crop, other: Crop, flipped: bool) -> torch.Tensor:
    """The intersection of ``crop`` and ``other`` in ``crop``'s normalised coordinates, mirrored when ``crop`` is
    flipped: float32 ``(x_left, y_top, x_right, y_bottom)`` (see the module docstring; zero width if disjoint)."""
    top, left, h, w = crop
    x0, x1 = max(left, other[1]), min(left + w, other[1] + other[3])
    y0, y1 = max(top, other[0]), min(top + h, other[0] + other[2])
    x1, y1 = max(x1, x0), max(y1, y0)
    box = torch.tensor([(x0 - left) / w, (y0 - top) / h, (x1 - left) / w, (y1 - top) / h], dtype=torch.float32)
    if flipped:
        box[0], box[2] = 1.0 - box[0], 1.0 - box[2]
    return box


def box_cell_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """In-box cells of an ``h x w`` feature grid: bool ``B x h x w`` for boxes ``B x 4`` (any orientation).

    The official rule [CODE]: with the box extent ``[x0, x1] x [y0, y1]`` (sorted), cell ``(r, c)`` is in-box iff
    ``floor(y0 h) <= r < floor(y1 h)`` and ``floor(x0 w) <= c < floor(x1 w)``.
    """
    x0 = torch.minimum(boxes[:, 0], boxes[:, 2])
    x1 = torch.maximum(boxes[:, 0], boxes[:, 2])
    y0 = torch.minimum(boxes[:, 1], boxes[:, 3])
    y1 = torch.maximum(boxes[:, 1], boxes[:, 3])
    rows = torch.arange(h, device=boxes.device)
    cols = torch.arange(w, device=boxes.device)
    in_rows = (rows >= (y0 * h).floor()[:, None]) & (rows < (y1 * h).floor()[:, None])  # B x h
    in_cols = (cols >= (x0 * w).floor()[:, None]) & (cols < (x1 * w).floor()[:, None])  # B x w
    return in_rows[:, :, None] & in_cols[:, None, :]


def _photometric(cfg: ViewsSection, view: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    b, c, s, hue = cfg.jitter
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=hue)], p=cfg.jitter_prob),
        v2.RandomGrayscale(p=cfg.grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel, sigma=tuple(cfg.blur_sigma))], p=cfg.blur_prob[view]),
        v2.RandomSolarize(threshold=cfg.solarize_threshold, p=cfg.solarize_prob[view]),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


class TwoViewTransform:
    """float ``3 x H x W`` image in [0, 1] -> ``{"image": view 1, "view2": view 2, "box1", "box2"}``.

    Views are float32 ``3 x S x S`` (normalised), boxes float32 ``(4,)``; see the module docstring. Randomness
    comes from torch's global generator (seeded per epoch and worker by the engine and the DataLoader).
    """

    def __init__(self, cfg: ViewsSection, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.cfg = cfg
        self.size = [cfg.crop_size, cfg.crop_size]
        self.ratio = (cfg.ratio_min, cfg.ratio_max)
        self.sampler = v2.RandomResizedCrop(cfg.crop_size, scale=(cfg.scale_min, cfg.scale_max), ratio=self.ratio)
        self.photometric = [_photometric(cfg, 0, mean, std), _photometric(cfg, 1, mean, std)]

    def _draw(self, image: torch.Tensor) -> Crop:
        p = self.sampler.make_params([image])
        return p["top"], p["left"], p["height"], p["width"]

    def sample_crops(self, image: torch.Tensor) -> tuple[Crop, Crop, bool]:
        """``(crop1, crop2, overlapped)``: crop 2 overlaps crop 1 by >= ``min_overlap`` of its own area, or both
        are the centre crop and ``overlapped`` is False."""
        crop1 = self._draw(image)
        for _ in range(self.cfg.overlap_tries):
            crop2 = self._draw(image)
            shared = intersection_area(crop1, crop2)
            if shared > 0 and shared >= self.cfg.min_overlap * crop2[2] * crop2[3]:  # disjoint crops never pass
                return crop1, crop2, True
        centre = centre_crop(image.shape[-2], image.shape[-1], self.ratio)
        return centre, centre, False

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        image = to_float_image(image)
        crop1, crop2, _ = self.sample_crops(image)
        flips = (torch.rand(2) < self.cfg.hflip).tolist()
        out = {}
        for v, (crop, other, flipped) in enumerate(((crop1, crop2, flips[0]), (crop2, crop1, flips[1]))):
            view = TF.resized_crop(image, *crop, self.size, antialias=True)
            if flipped:
                view = TF.horizontal_flip(view)
            out["image" if v == 0 else "view2"] = self.photometric[v](view).contiguous()
            out[f"box{v + 1}"] = overlap_box(crop, other, flipped)
        return out


class TwoViewDataset(Dataset):
    """Two views (:class:`TwoViewTransform`) of each image of ``base`` (items with an ``"image"``; masks and labels
    are ignored). Bad-sample markers of a ``skip_bad`` dataset pass through for ``collate_skip_bad``."""

    def __init__(self, base: Dataset, transform: TwoViewTransform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if item.get("bad"):
            return item
        return self.transform(item["image"])


def build_two_view_dataset(data: DataSection, views: ViewsSection) -> TwoViewDataset:
    """Unlabeled training images of the ``data`` section (its training split; every image under ``data.root`` for
    ``images``) as two-view samples; the masks of labelled kinds are not used."""
    from rayseg.data import read_segmentation_split
    from rayseg.data.folders import ImageFiles

    if data.kind == "images":
        base = ImageFiles(data.root, skip_bad=data.skip_bad)
    else:
        base = read_segmentation_split(data, train=True, transform=None)
    return TwoViewDataset(base, TwoViewTransform(views))
