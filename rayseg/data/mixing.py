"""Cross-dataset mixing of a batch (MDP, methods.md §1.6): region-level (CutMix-like boxes) and pixel-level class
mixing (ClassMix-like), on batched tensors, with every random draw taken from a ``torch.Generator`` argument.

Both pair an image ``x_a`` with a partner ``x_b`` of a *different* dataset of the same batch. The label maps are
mixed with exactly the same binary mask as the images, and hold global ids (``rayseg.data.multi``), so every mixed
pixel keeps its own dataset's class.

* Region mixing: ``λ ~ U(λ_min, λ_max)``; start corner ``r_x ~ U(0, W)``, ``r_y ~ U(0, H)``; size
  ``r_w = W √(1−λ)``, ``r_h = H √(1−λ)`` (nominal area ratio ``1−λ``), clipped at the right and bottom borders.
  ``M`` = the box; ``x̃ = M⊙x_b + (1−M)⊙x_a``, ``ỹ = M⊙y_b + (1−M)⊙y_a``.
* Class mixing: half of the classes present in ``y_a`` (ignore excluded), rounded up, chosen at random;
  ``M = 1[y_a ∈ selected]``; ``x̃ = M⊙x_a + (1−M)⊙x_b``, ``ỹ = M⊙y_a + (1−M)⊙y_b`` (A's objects pasted onto B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rayseg.ignore import IGNORE_INDEX

__all__ = [
    "CLASS_MIX",
    "CLEAN",
    "REGION_MIX",
    "CrossDatasetMix",
    "MixedBatch",
    "choose_partners",
    "class_mix_mask",
    "region_box",
    "region_mask",
]

CLEAN, REGION_MIX, CLASS_MIX = 0, 1, 2


def _uniform(generator: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def region_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)``, half-open, of the region-mixing box for ratio ``lam``.

    Start corner ``(r_x, r_y)`` uniform in ``[0, W) x [0, H)`` (floored to a pixel), size ``(W √(1−λ), H √(1−λ))``
    rounded to pixels, clipped at the right and bottom borders (so the area is at most ``(1−λ)·H·W``).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    x0 = min(width - 1, int(_uniform(generator) * width))
    y0 = min(height - 1, int(_uniform(generator) * height))
    side = math.sqrt(1.0 - lam)
    x1 = min(width, x0 + round(width * side))
    y1 = min(height, y0 + round(height * side))
    return y0, x0, y1, x1


def region_mask(height: int, width: int, box: tuple[int, int, int, int], device=None) -> torch.Tensor:
    """Boolean ``H x W`` indicator of ``box`` = ``(y0, x0, y1, x1)``."""
    y0, x0, y1, x1 = box
    m = torch.zeros(height, width, dtype=torch.bool, device=device)
    m[y0:y1, x0:x1] = True
    return m


def class_mix_mask(label: torch.Tensor, generator: torch.Generator, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``M = 1[y_a ∈ S]`` where ``S`` is ``ceil(n/2)`` of the ``n`` classes present in ``label`` (ignore excluded)."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    if classes.numel() == 0:
        return torch.zeros_like(label, dtype=torch.bool)
    keep = math.ceil(classes.numel() / 2)
    order = torch.randperm(classes.numel(), generator=generator)[:keep].to(classes.device)
    return torch.isin(label, classes[order])


def choose_partners(dataset_ids: torch.Tensor, generator: torch.Generator,
                    same_dataset_fallback: bool = True) -> torch.Tensor:
    """For every image, a partner index of the batch from another dataset (uniformly among them).

    An image without any image of another dataset in the batch gets a partner of its own dataset (another image)
    when ``same_dataset_fallback``, else ``-1`` (no partner: stays clean).
    """
    ids = dataset_ids.detach().cpu().view(-1)
    n = ids.numel()
    partners = torch.full((n,), -1, dtype=torch.int64)
    for i in range(n):
        candidates = torch.nonzero(ids != ids[i]).view(-1)
        if candidates.numel() == 0 and same_dataset_fallback:
            candidates = torch.tensor([j for j in range(n) if j != i], dtype=torch.int64)
        if candidates.numel():
            partners[i] = candidates[int(torch.randint(candidates.numel(), (), generator=generator))]
    return partners


@dataclass
class MixedBatch:
    """The mixed batch. ``kind[b]`` is CLEAN / REGION_MIX / CLASS_MIX, ``partner[b]`` the partner index (-1 when
    clean), ``from_partner`` the boolean ``B x H x W`` map of pixels taken from the partner image."""

    images: torch.Tensor
    masks: torch.Tensor
    kind: torch.Tensor
    partner: torch.Tensor
    from_partner: torch.Tensor


class CrossDatasetMix:
    """Mix a fraction of a batch with region-level and a fraction with pixel-level class mixing.

    ``round(B · region_fraction)`` images (chosen at random) are region-mixed, the next
    ``min(round(B · class_fraction), rest)`` class-mixed, the others stay clean; partners are the *clean* images of
    the input batch (from another dataset, see :func:`choose_partners`).
    """

    def __init__(self, region_fraction: float = 1 / 3, class_fraction: float = 1 / 3,
                 lambda_range: tuple[float, float] = (0.0, 1.0), same_dataset_fallback: bool = True,
                 ignore_index: int = IGNORE_INDEX):
        lo, hi = lambda_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"lambda_range must satisfy 0 <= min <= max <= 1, got {lambda_range}")
        if not (0.0 <= region_fraction <= 1.0 and 0.0 <= class_fraction <= 1.0):
            raise ValueError(f"mix fractions must be in [0, 1], got {region_fraction}, {class_fraction}")
        if region_fraction + class_fraction > 1.0 + 1e-9:
            raise ValueError(f"region_fraction + class_fraction must be <= 1, got {region_fraction + class_fraction}")
        self.region_fraction, self.class_fraction = float(region_fraction), float(class_fraction)
        self.lambda_range = (float(lo), float(hi))
        self.same_dataset_fallback, self.ignore_index = bool(same_dataset_fallback), int(ignore_index)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, dataset_ids: torch.Tensor,
                 generator: torch.Generator) -> MixedBatch:
        b, _, h, w = images.shape
        device = images.device
        n_region = min(b, round(b * self.region_fraction))
        n_class = min(b - n_region, round(b * self.class_fraction))
        order = torch.randperm(b, generator=generator).tolist()
        kind = torch.full((b,), CLEAN, dtype=torch.int64)
        kind[order[:n_region]] = REGION_MIX
        kind[order[n_region:n_region + n_class]] = CLASS_MIX
        partner = choose_partners(dataset_ids, generator, self.same_dataset_fallback)
        partner[kind == CLEAN] = -1
        kind[partner < 0] = CLEAN

        from_partner = torch.zeros(b, h, w, dtype=torch.bool, device=device)
        for i in range(b):
            if kind[i] == REGION_MIX:
                lam = _uniform(generator, *self.lambda_range)
                from_partner[i] = region_mask(h, w, region_box(h, w, lam, generator), device)
            elif kind[i] == CLASS_MIX:
                from_partner[i] = ~class_mix_mask(masks[i], generator, self.ignore_index)
        source = torch.where(partner >= 0, partner, torch.arange(b)).to(device)
        m = from_partner
        mixed_images = torch.where(m[:, None], images[source], images)
        mixed_masks = torch.where(m, masks[source], masks)
        return MixedBatch(mixed_images, mixed_masks, kind, partner, from_partner)
