"""Where an image is explained: the ``label.geometry`` that turns an image of any size into the ``S x S`` input of
the explainers (``S = label.input_size``), and back from the ``S x S`` decile map to the image's pixels.

- ``square``: the whole image resized to ``S x S`` (aspect ratio not kept);
- ``crop``: the shorter side resized to ``S`` (aspect kept), then the centre ``S x S`` crop (the ImageNet
  evaluation view); pixels outside the crop have no decile;
- ``pad``: the longer side resized to ``S`` (aspect kept), centred on an ``S x S`` canvas of the mean colour;
  the padding is dropped on the way back.

Back on the image (:func:`deciles_on_image`), a pixel without a decile is :data:`NO_DECILE`; the PSSL reader makes it
ignore. Numpy and Pillow only: Ray Data's CPU tasks use it without importing torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GEOMETRIES = ("square", "crop", "pad")
NO_DECILE = 255  # a pixel of the image outside the explained region (deciles are 0..9)

__all__ = ["GEOMETRIES", "NO_DECILE", "deciles_on_image", "fit_image", "placement"]


def placement(height: int, width: int, size: int, geometry: str) -> tuple[int, int, int, int]:
    """``(resized height, resized width, top, left)``: the image is resized to ``resized`` and its pixel (0, 0) lands
    at ``(top, left)`` of the ``size x size`` input (negative offsets: cropped away)."""
    if geometry == "square":
        return size, size, 0, 0
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    scale = size / (min(height, width) if geometry == "crop" else max(height, width))
    rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    return rh, rw, (size - rh) // 2, (size - rw) // 2


def fit_image(rgb: Image.Image, size: int, geometry: str, fill: tuple[int, int, int] = (124, 116, 104)) -> Image.Image:
    """The ``size x size`` RGB input of ``rgb`` (bilinear); ``pad`` fills with ``fill`` (the ImageNet mean colour,
    0 after normalisation)."""
    rh, rw, top, left = placement(rgb.height, rgb.width, size, geometry)
    resized = rgb.resize((rw, rh), Image.BILINEAR)
    if geometry == "square":
        return resized
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, (left, top))  # negative offsets crop
    return canvas


def deciles_on_image(deciles: np.ndarray, height: int, width: int, geometry: str) -> np.ndarray:
    """The ``size x size`` decile map laid back onto the ``height x width`` image (nearest); pixels that were not
    explained are :data:`NO_DECILE`."""
    size = deciles.shape[0]
    rh, rw, top, left = placement(height, width, size, geometry)
    on_resized = np.full((rh, rw), NO_DECILE, np.uint8)
    src_top, src_left = max(top, 0), max(left, 0)          # the part of the input that shows the image
    dst_top, dst_left = max(-top, 0), max(-left, 0)
    h, w = min(rh - dst_top, size - src_top), min(rw - dst_left, size - src_left)
    on_resized[dst_top:dst_top + h, dst_left:dst_left + w] = deciles[src_top:src_top + h, src_left:src_left + w]
    if (rh, rw) == (height, width):
        return on_resized
    return np.array(Image.fromarray(on_resized).resize((width, height), Image.NEAREST))  # a writable copy
