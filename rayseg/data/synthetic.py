"""The embedded synthetic benchmark: small RGB scenes with exact masks, generated on the fly.

Every sample is a pure function of ``(seed, stream, split, index)``: it is drawn from its own
``np.random.default_rng([seed, stream, split, index])``, so any index can be generated on its own, in any
worker process, identically. Generation is vectorised numpy and works on each object's bounding box only.

* ``CLASS_VOCABULARY``: 12 object classes; each has its own shape, texture and base colour. Domains rotate
  the hue of all object colours and jitter them, so class identity has to be read from shape + texture.
* ``DOMAINS``: segmentation "datasets" with partly overlapping label sets and distinct styles
  (background texture, colour shift, contrast, noise).
* ``SyntheticSegmentation``: scenes of 1..4 possibly occluding objects on a textured background.
* ``SyntheticClassification``: one dominant object per image (ImageNet-like), its true mask kept aside.
* ``write_image_folder`` / ``write_voc_folder``: materialise them as ImageFolder / VOC trees on disk.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from rayseg import storage
from rayseg.data.folders import voc_palette
from rayseg.data.transforms import to_float_image, to_float_pair

__all__ = [
    "CLASS_SPECS",
    "CLASS_VOCABULARY",
    "DOMAINS",
    "ClassSpec",
    "DomainSpec",
    "SPLITS",
    "SyntheticClassification",
    "SyntheticSegmentation",
    "shape_mask",
    "write_image_folder",
    "write_voc_folder",
]

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_CLASSIFICATION_STREAM = 1000  # rng stream key of SyntheticClassification (domains use 0, 1, 2, ...)


# --------------------------------------------------------------------------------------------- shapes
# A shape is a boolean function of object-local coordinates (u, v), scaled so that the shape lies inside
# the unit disc: an object of radius R centred at (cx, cy) never leaves the box [cx - R, cx + R]^2.

def _disc(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _triangle(u, v):  # equilateral, inradius 0.5, circumradius 1
    return (v >= -0.5) & (0.866 * u + 0.5 * v <= 0.5) & (-0.866 * u + 0.5 * v <= 0.5)


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.3)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ellipse(u, v):
    return u * u + (v / 0.55) ** 2 <= 1.0


def _star(u, v):  # five rounded points
    r = np.sqrt(u * u + v * v)
    cos5 = np.cos(5.0 * np.arctan2(v, u))
    return r <= 0.55 + 0.45 * cos5


def _diamond(u, v):  # elongated rhombus
    return np.abs(u) + np.abs(v) / 0.55 <= 1.0


def _bar(u, v):
    return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.28)


def _crescent(u, v):
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.56)


def _hexagon(u, v):  # apothem 0.85
    au = np.abs(u)
    return np.maximum(au, np.abs(0.5 * u) + np.abs(0.866 * v)) <= 0.85


def _bowtie(u, v):  # two triangles meeting at the centre
    au = np.abs(u)
    return (au <= 0.78) & (np.abs(v) <= 0.05 + 0.7 * au)


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": _disc, "square": _square, "triangle": _triangle, "ring": _ring, "cross": _cross,
    "ellipse": _ellipse, "star": _star, "diamond": _diamond, "bar": _bar, "crescent": _crescent,
    "hexagon": _hexagon, "bowtie": _bowtie,
}
_ROTATION_FREE = {"disc", "ring"}  # rotation-invariant: skip the random angle


# ------------------------------------------------------------------------------------------- textures
# A texture maps image pixel coordinates (x, y; 1-D, broadcast) and object-local (u, v) to a weight t in
# [0, 1] between the object's primary colour (t=0) and its dark secondary colour (t=1). Periodic textures
# live in image coordinates (fixed orientation per class) with a random phase per object.

def _texture(kind: str, params: tuple, x, y, u, v, phase: float) -> np.ndarray | float:
    if kind == "solid":
        return 0.0
    if kind == "stripes":
        angle, period = params
        a = math.radians(angle)
        proj = x[None, :] * math.cos(a) + (y[:, None] * math.sin(a) + phase * period)
        return (np.mod(proj, period) < period / 2).astype(np.float32)
    if kind == "checker":  # |row parity - column parity|, from two 1-D parities
        (period,) = params
        off = phase * 2 * period
        px = np.floor((x + off) / period) % 2
        py = np.floor((y + off) / period) % 2
        return np.abs(px[None, :] - py[:, None])
    if kind == "dots":
        period, radius = params
        off = phase * period
        dx2 = (np.mod(x + off, period) - period / 2) ** 2
        dy2 = (np.mod(y + off, period) - period / 2) ** 2
        return (dx2[None, :] + dy2[:, None] <= radius * radius).astype(np.float32)
    if kind == "grid":
        period, width = params
        off = phase * period
        gx = (np.mod(x + off, period) < width).astype(np.float32)
        gy = (np.mod(y + off, period) < width).astype(np.float32)
        return np.maximum(gx[None, :], gy[:, None])
    if kind == "rings":  # concentric rings around the object centre, in units of its radius
        (count,) = params
        return (np.mod(np.sqrt(u * u + v * v) * count, 1.0) < 0.5).astype(np.float32)
    if kind == "gradient":  # along the object's own axis
        return np.clip((u + 1.0) * 0.5, 0.0, 1.0)
    raise ValueError(f"unknown texture kind {kind!r}")


# -------------------------------------------------------------------------------------------- classes

@dataclass(frozen=True)
class ClassSpec:
    """One object class of the vocabulary: shape, texture (kind, *params) and base RGB colour in [0, 1]."""

    name: str
    shape: str
    texture: tuple
    color: tuple[float, float, float]


CLASS_SPECS: tuple[ClassSpec, ...] = (
    ClassSpec("disc", "disc", ("stripes", 0.0, 6.0), (0.90, 0.20, 0.20)),
    ClassSpec("square", "square", ("checker", 4.0), (0.20, 0.70, 0.25)),
    ClassSpec("triangle", "triangle", ("dots", 5.0, 1.6), (0.20, 0.35, 0.90)),
    ClassSpec("ring", "ring", ("solid",), (0.95, 0.80, 0.15)),
    ClassSpec("cross", "cross", ("stripes", 90.0, 4.0), (0.80, 0.25, 0.85)),
    ClassSpec("ellipse", "ellipse", ("gradient",), (0.15, 0.80, 0.85)),
    ClassSpec("star", "star", ("grid", 4.0, 1.0), (0.95, 0.55, 0.10)),
    ClassSpec("diamond", "diamond", ("stripes", 45.0, 5.0), (0.55, 0.30, 0.15)),
    ClassSpec("bar", "bar", ("checker", 2.0), (0.60, 0.85, 0.30)),
    ClassSpec("crescent", "crescent", ("rings", 3.0), (0.95, 0.60, 0.70)),
    ClassSpec("hexagon", "hexagon", ("stripes", 135.0, 5.0), (0.45, 0.25, 0.75)),
    ClassSpec("bowtie", "bowtie", ("dots", 3.0, 0.9), (0.85, 0.85, 0.85)),
)
CLASS_VOCABULARY: tuple[str, ...] = tuple(c.name for c in CLASS_SPECS)
_SECONDARY = 0.35  # secondary texture colour = primary * _SECONDARY


def shape_mask(class_id: int, size: int = 64, angle: float = 0.0) -> np.ndarray:
    """Canonical boolean mask of a vocabulary class: centred, radius ``0.45 * size``, rotated by ``angle``."""
    radius = 0.45 * size
    c = (size - 1) / 2
    coords = np.arange(size, dtype=np.float32) - c
    u = (coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)) / radius
    v = (-coords[None, :] * math.sin(angle) + coords[:, None] * math.cos(angle)) / radius
    return _SHAPES[CLASS_SPECS[class_id].shape](u, v)


@functools.cache
def _unit_area(shape: str) -> float:
    """Area of a shape in units of R^2 (the disc has pi), measured on a fine grid once."""
    g = np.linspace(-1, 1, 801, dtype=np.float32)
    return float(_SHAPES[shape](g[None, :], g[:, None]).mean() * 4.0)


# -------------------------------------------------------------------------------------------- domains

@dataclass(frozen=True)
class DomainSpec:
    """A synthetic segmentation domain: its label set (vocabulary ids) and its visual style."""

    classes: tuple[int, ...]
    background: str  # "gradient" | "blotches" | "grain"
    background_colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    hue_shift_deg: float = 0.0  # rotation of all object colours around the grey axis
    palette_jitter: float = 0.05  # std of a per-object additive RGB jitter
    color_cast: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the whole image
    contrast: float = 1.0  # (img - 0.5) * contrast + 0.5
    noise_std: float = 0.02  # per-pixel, per-channel Gaussian noise

    @property
    def class_names(self) -> list[str]:
        return [CLASS_VOCABULARY[c] for c in self.classes]


DOMAINS: dict[str, DomainSpec] = {
    "A": DomainSpec(
        classes=(0, 1, 2, 3, 4, 5), background="gradient",
        background_colors=((0.62, 0.66, 0.70), (0.36, 0.40, 0.46)),
        hue_shift_deg=0.0, palette_jitter=0.04, color_cast=(0.0, 0.0, 0.0), contrast=1.0, noise_std=0.02,
    ),
    "B": DomainSpec(
        classes=(3, 4, 5, 6, 7, 8), background="blotches",
        background_colors=((0.28, 0.42, 0.22), (0.58, 0.52, 0.34)),
        hue_shift_deg=40.0, palette_jitter=0.07, color_cast=(0.06, 0.02, -0.06), contrast=0.85,
        noise_std=0.04,
    ),
    "C": DomainSpec(
        classes=(6, 7, 8, 9, 10, 11, 0, 1), background="grain",
        background_colors=((0.12, 0.12, 0.20), (0.30, 0.27, 0.42)),
        hue_shift_deg=-60.0, palette_jitter=0.10, color_cast=(-0.04, 0.0, 0.08), contrast=1.15,
        noise_std=0.07,
    ),
}


@functools.cache
def _hue_rotation(degrees: float) -> np.ndarray:
    """3x3 matrix rotating RGB vectors by ``degrees`` around the grey axis (1, 1, 1) (Rodrigues)."""
    a = math.radians(degrees)
    k = np.full(3, 1 / math.sqrt(3))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return (np.eye(3) * math.cos(a) + math.sin(a) * kx + (1 - math.cos(a)) * np.outer(k, k)).astype(np.float32)


@functools.cache
def _palette(hue_shift_deg: float) -> np.ndarray:
    """(12, 3) float32 base colours of the vocabulary, hue-rotated by ``hue_shift_deg``."""
    return np.asarray([c.color for c in CLASS_SPECS], np.float32) @ _hue_rotation(hue_shift_deg).T


@functools.cache
def _upsample_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) bilinear interpolation weights: ``W @ grid @ W.T`` upsamples a cells x cells grid."""
    pos = np.linspace(0, cells - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = (pos - lo).astype(np.float32)
    w = np.zeros((size, cells), np.float32)
    w[np.arange(size), lo] = 1 - frac
    w[np.arange(size), lo + 1] = frac
    return w


# ------------------------------------------------------------------------------------------ rendering

@functools.cache
def _noise_bank() -> np.ndarray:
    """A fixed table of N(0, 1) float32 values; each image adds a slice at a random offset of it.

    Slicing a shared table is ~20x cheaper than drawing fresh normals per image and just as deterministic.
    """
    return np.random.default_rng(0x5EED).standard_normal(1 << 21, dtype=np.float32)


class _Canvas:
    """Float RGB image (3xHxW) + uint8 label mask (HxW) of one scene; objects are painted in order, later
    ones occluding earlier ones. Channel-first so per-channel arithmetic runs over contiguous planes."""

    def __init__(self, size: int, rng: np.random.Generator, style: DomainSpec):
        self.size, self.rng, self.style = size, rng, style
        self.coords = np.arange(size, dtype=np.float32)
        self.image = self._background()
        self.mask = np.zeros((size, size), np.uint8)

    def _background(self) -> np.ndarray:
        s, rng, style = self.size, self.rng, self.style
        c0, c1 = (np.asarray(c, np.float32).reshape(3, 1, 1) for c in style.background_colors)
        if style.background == "gradient":
            a = rng.uniform(0, 2 * math.pi)
            c = self.coords - s / 2
            t = (c[None, :] * math.cos(a) + c[:, None] * math.sin(a)) / (s * 1.42) + 0.5
        elif style.background == "blotches":
            w = _upsample_matrix(s, 5)
            t = w @ rng.random((5, 5), dtype=np.float32) @ w.T
        elif style.background == "grain":
            cells = rng.random(((s + 1) // 2, (s + 1) // 2), dtype=np.float32)
            t = cells.repeat(2, 0).repeat(2, 1)[:s, :s]
        else:
            raise ValueError(f"unknown background kind {style.background!r}")
        return c0 + t * (c1 - c0)

    def paint(self, class_id: int, label: int, radius: float, cx: float, cy: float) -> None:
        """Paint one object of vocabulary class ``class_id`` with mask value ``label``."""
        spec, style = CLASS_SPECS[class_id], self.style
        draws = self.rng.random(5, dtype=np.float32)  # one call: rotation, texture phase, 3 x colour jitter
        angle = 0.0 if spec.shape in _ROTATION_FREE else 2 * math.pi * float(draws[0])
        phase = float(draws[1])
        jitter = (draws[2:] - 0.5) * np.float32(math.sqrt(12) * style.palette_jitter)  # uniform, std = palette_jitter
        color = _palette(style.hue_shift_deg)[class_id] + jitter
        x0, x1 = max(0, math.floor(cx - radius)), min(self.size, math.ceil(cx + radius) + 1)
        y0, y1 = max(0, math.floor(cy - radius)), min(self.size, math.ceil(cy + radius) + 1)
        if x0 >= x1 or y0 >= y1:
            return
        x, y = self.coords[x0:x1], self.coords[y0:y1]
        cos, sin = math.cos(angle) / radius, math.sin(angle) / radius
        dx, dy = x - cx, y - cy
        u = dx[None, :] * cos + dy[:, None] * sin
        v = dy[:, None] * cos - dx[None, :] * sin
        inside = _SHAPES[spec.shape](u, v)
        t = _texture(spec.texture[0], spec.texture[1:], x, y, u, v, phase)
        # primary colour where t=0, darker secondary (primary * _SECONDARY) where t=1
        pixels = color[:, None, None] * (1 - (1 - _SECONDARY) * t)
        np.copyto(self.image[:, y0:y1, x0:x1], pixels, where=inside)  # much cheaper than boolean indexing
        np.copyto(self.mask[y0:y1, x0:x1], label, where=inside)

    def finish(self) -> np.ndarray:
        """Apply the domain's contrast, colour cast and noise; return the uint8 3xHxW image."""
        style, img = self.style, self.image
        shift = np.asarray(style.color_cast, np.float32) + 0.5 * (1 - style.contrast)
        img *= np.float32(255 * style.contrast)
        img += (shift * 255 + 0.5).reshape(3, 1, 1)  # +0.5: round to nearest in astype below
        if style.noise_std > 0:
            bank, n = _noise_bank(), img.size
            start = int(self.rng.integers(bank.size - n))
            img += bank[start : start + n].reshape(img.shape) * np.float32(255 * style.noise_std)
        return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _check_common(num_images: int, image_size: int, seed: int, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _check_index(i: int, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for {n} images")
    return i


# --------------------------------------------------------------------------------------- segmentation

class SyntheticSegmentation(Dataset):
    """Synthetic scenes of one domain: a textured background and 1..4 objects with exact masks.

    Local label ids: 0 = "background", 1..k = the domain's classes in the order of ``DomainSpec.classes``.
    Samples follow the rayseg contract ``{"image": float 3xHxW, "mask": int64 HxW, "id": str}``.
    """

    def __init__(
        self,
        domain: str = "A",
        split: str = "train",
        num_images: int = 256,
        image_size: int = 64,
        seed: int = 0,
        transform: Callable | None = None,
        objects_per_image: tuple[int, int] = (1, 4),
    ):
        if domain not in DOMAINS:
            raise ValueError(f"unknown synthetic domain {domain!r}; known: {sorted(DOMAINS)}")
        _check_common(num_images, image_size, seed, split)
        lo, hi = objects_per_image
        if not 0 <= lo <= hi:
            raise ValueError(f"objects_per_image must be (min, max) with 0 <= min <= max, got {objects_per_image}")
        self.domain, self.split, self.num_images = domain, split, num_images
        self.image_size, self.seed, self.transform = image_size, seed, transform
        self.objects_per_image = (lo, hi)
        self.spec = DOMAINS[domain]
        self.class_names = ["background", *self.spec.class_names]
        self.num_classes = len(self.class_names)
        self._key = (seed, list(DOMAINS).index(domain), SPLITS[split])

    def __len__(self) -> int:
        return self.num_images

    def vocabulary_ids(self) -> list[int]:
        """Map local label id -> global ``CLASS_VOCABULARY`` id (background -> -1)."""
        return [-1, *self.spec.classes]

    def sample_id(self, i: int) -> str:
        return f"synthetic/{self.domain}/{self.split}/{i:06d}"

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Generate sample ``i``: (uint8 3xHxW image, uint8 HxW mask of local label ids)."""
        i = _check_index(i, self.num_images)
        rng = np.random.default_rng([*self._key, i])
        s, classes = self.image_size, self.spec.classes
        canvas = _Canvas(s, rng, self.spec)
        num_objects = rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1)
        for k, r, x, y in rng.random((num_objects, 4)).tolist():  # class, radius, centre
            k = int(k * len(classes))
            canvas.paint(classes[k], k + 1, (0.14 + 0.16 * r) * s, (0.1 + 0.8 * x) * s, (0.1 + 0.8 * y) * s)
        return canvas.finish(), canvas.mask

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, self.num_images)
        image, mask = self.render(i)
        image_t, mask_t = torch.from_numpy(image), torch.from_numpy(mask)
        if self.transform is None:
            image_t, mask_t = to_float_pair(image_t, mask_t)
        else:
            image_t, mask_t = self.transform(tv_tensors.Image(image_t), tv_tensors.Mask(mask_t.long()))
        return {"image": image_t, "mask": mask_t, "id": self.sample_id(i)}


# ------------------------------------------------------------------------------------- classification

class SyntheticClassification(Dataset):
    """One dominant object per image (10-40% of the area), sometimes with a small distractor behind it.

    ``__getitem__`` returns ``{"image", "label", "true_mask", "id"}``: ``label`` indexes ``self.classes``
    (vocabulary ids, default all 12), ``true_mask`` is the bool HxW mask of the dominant object only (the
    distractor is background there). ``style`` picks the look: a ``DOMAINS`` key, or None for a random
    domain style per image (a diverse, ImageNet-like source). ``transform`` is image-only.
    """

    area_range = (0.12, 0.35)  # target area fraction of the dominant object (clipped per shape to fit)
    distractor_prob = 0.5

    def __init__(
        self,
        num_images: int = 512,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        classes: Sequence[int] | None = None,
        transform: Callable | None = None,
        style: str | None = None,
    ):
        _check_common(num_images, image_size, seed, split)
        classes = tuple(range(len(CLASS_VOCABULARY))) if classes is None else tuple(int(c) for c in classes)
        if not classes or len(set(classes)) != len(classes) or not all(0 <= c < len(CLASS_SPECS) for c in classes):
            raise ValueError(f"classes must be distinct vocabulary ids in [0, {len(CLASS_SPECS)}), got {classes}")
        if style is not None and style not in DOMAINS:
            raise ValueError(f"unknown style {style!r}; known: {sorted(DOMAINS)} or None")
        self.num_images, self.image_size, self.seed, self.split = num_images, image_size, seed, split
        self.classes, self.transform, self.style = classes, transform, style
        self.class_names = [CLASS_VOCABULARY[c] for c in classes]
        self.num_classes = len(classes)
        self._key = (seed, _CLASSIFICATION_STREAM, SPLITS[split])

    def __len__(self) -> int:
        return self.num_images

    def sample_id(self, i: int) -> str:
        return f"synthetic/cls/{self.split}/{i:06d}"

    def render(self, i: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Generate sample ``i``: (uint8 3xHxW image, label, bool HxW true mask of the dominant object)."""
        i = _check_index(i, self.num_images)
        rng = np.random.default_rng([*self._key, i])
        s = self.image_size
        style = DOMAINS[self.style] if self.style else list(DOMAINS.values())[rng.integers(len(DOMAINS))]
        label = int(rng.integers(self.num_classes))
        canvas = _Canvas(s, rng, style)
        if self.num_classes > 1 and rng.random() < self.distractor_prob:
            other = self.classes[(label + 1 + rng.integers(self.num_classes - 1)) % self.num_classes]
            radius = s * math.sqrt(rng.uniform(0.02, 0.05) / _unit_area(CLASS_SPECS[other].shape))
            canvas.paint(other, 2, radius, *rng.uniform(0.1 * s, 0.9 * s, 2))
        # dominant object: area fraction f -> radius; fully inside the frame (radius <= 0.48 s)
        unit_area = _unit_area(CLASS_SPECS[self.classes[label]].shape)
        f_hi = min(self.area_range[1], unit_area * 0.48**2)
        f = rng.uniform(min(self.area_range[0], f_hi), f_hi)
        radius = s * math.sqrt(f / unit_area)
        cx, cy = rng.uniform(radius, s - 1 - radius, 2)
        canvas.paint(self.classes[label], 1, radius, cx, cy)
        return canvas.finish(), label, canvas.mask == 1

    def __getitem__(self, i: int) -> dict:
        i = _check_index(i, self.num_images)
        image, label, true_mask = self.render(i)
        image_t = torch.from_numpy(image)
        image_t = self.transform(tv_tensors.Image(image_t)) if self.transform is not None else to_float_image(image_t)
        return {"image": image_t, "label": label, "true_mask": torch.from_numpy(true_mask), "id": self.sample_id(i)}


# ---------------------------------------------------------------------------------------------- writers

def _png_bytes(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    img = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        img.putpalette(palette.tobytes())  # "L" -> "P", pixel values unchanged
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless an identical file is already there; return whether it wrote."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    storage.write_bytes(path, data)  # atomic, parent folders created
    return True


def write_image_folder(dataset: SyntheticClassification, root: str | os.PathLike) -> int:
    """Write ``dataset`` as an ImageFolder tree ``root/<class_name>/<split>-s<seed>-<i:06d>.png`` (RGB PNG).

    The dominant objects' true masks go to the sibling tree ``<root>_masks/<class_name>/<same name>.png``
    (uint8, 0 / 255). Idempotent: identical existing files are left alone. Returns the number of images
    written (0 when the tree was already complete).
    """
    root = Path(root)
    mask_root = root.with_name(root.name + "_masks")
    written = 0
    for i in range(len(dataset)):
        image, label, true_mask = dataset.render(i)
        rel = Path(dataset.class_names[label]) / f"{dataset.split}-s{dataset.seed}-{i:06d}.png"
        written += _write_if_changed(root / rel, _png_bytes(image.transpose(1, 2, 0)))
        _write_if_changed(mask_root / rel, _png_bytes(true_mask.astype(np.uint8) * 255))
    return written


def write_voc_folder(dataset: SyntheticSegmentation, root: str | os.PathLike, split: str | None = None) -> int:
    """Write ``dataset`` in VOC layout under ``root`` and append its ids to ``ImageSets/Segmentation/<split>.txt``.

    Images: ``JPEGImages/<id>.png`` (RGB PNG, lossless); masks: ``SegmentationClass/<id>.png`` (palette "P" PNG
    with the VOC colour map, pixel value = local label id); ``<id>`` = ``<domain>-<split>-s<seed>-<i:06d>``.
    ``split`` defaults to the dataset's split. Idempotent: identical files are skipped and ids already
    listed are not repeated. Returns the number of images written.
    """
    root, split = Path(root), split or dataset.split
    palette = voc_palette()
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    listed = split_file.read_text().split() if split_file.is_file() else []
    new_ids, written = [], 0
    for i in range(len(dataset)):
        image, mask = dataset.render(i)
        sample = f"{dataset.domain}-{dataset.split}-s{dataset.seed}-{i:06d}"
        written += _write_if_changed(root / "JPEGImages" / f"{sample}.png", _png_bytes(image.transpose(1, 2, 0)))
        _write_if_changed(root / "SegmentationClass" / f"{sample}.png", _png_bytes(mask, palette))
        new_ids.append(sample)
    seen = set(listed)
    new_ids = [s for s in new_ids if s not in seen]
    if new_ids or not split_file.is_file():
        _write_if_changed(split_file, "".join(f"{s}\n" for s in [*listed, *new_ids]).encode())
    return written
