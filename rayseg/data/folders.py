"""Readers for on-disk datasets: VOC-style segmentation folders and ImageFolder classification trees.

Every sample is validated when it is loaded (decodable image, single-channel mask of the image's size,
label values in range). A bad sample raises ``BadSampleError`` (message = file path + reason), or, with
``skip_bad=True``, comes back as a *marker* ``{"bad": True, "id": ..., "reason": ...}`` that
``collate_skip_bad`` drops from the batch while reporting it under ``batch["skipped"]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.datasets.folder import find_classes, make_dataset

from rayseg.data.errors import BadSampleError
from rayseg.data.transforms import to_float_image, to_float_pair
from rayseg.ignore import FILE_IGNORE, FILE_IGNORE_16, IGNORE_INDEX

__all__ = [
    "IMAGE_EXTENSIONS",
    "PairedSegmentation",
    "ImageFolderClassification",
    "VOCSegmentationFolder",
    "collate_skip_bad",
    "load_mask",
    "load_rgb",
    "voc_palette",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
# What PIL raises on corrupt / truncated / hostile files (SyntaxError: broken PNG chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map as an ``(n, 3)`` uint8 array (label 255 -> (224, 224, 192))."""
    ids = np.arange(n)
    cmap = np.zeros((n, 3), np.uint8)
    for bit in range(8):
        for ch in range(3):
            cmap[:, ch] |= (((ids >> (3 * bit + ch)) & 1) << (7 - bit)).astype(np.uint8)
    return cmap


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Fully decode an image as uint8 HxWx3; raise ``BadSampleError`` if it is missing or corrupt."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # convert() forces the decode of the whole file
    except FileNotFoundError:
        raise BadSampleError(path, "file not found") from None
    except _DECODE_ERRORS as exc:
        raise BadSampleError(path, f"cannot decode image ({_reason(exc)})") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Decode a single-channel label PNG as HxW raw pixel values: uint8 for "P" (palette indices) and "L", uint16 for
    16-bit files ("I;16", or "I" with values in 0..65535: label spaces beyond 255 classes)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            mask = np.array(img) if mode in ("P", "L", *SIXTEEN_BIT_MODES) else None
    except FileNotFoundError:
        raise BadSampleError(path, "file not found") from None
    except _DECODE_ERRORS as exc:
        raise BadSampleError(path, f"cannot decode mask ({_reason(exc)})") from None
    if mask is None:
        raise BadSampleError(path, f"mask must be a single-channel 'P', 'L' or 16-bit image, got mode {mode!r}")
    if mode in SIXTEEN_BIT_MODES:
        if mask.size and (mask.min() < 0 or mask.max() > 65535):
            raise BadSampleError(path, f"mask values {int(mask.min())}..{int(mask.max())} outside 0..65535")
        mask = mask.astype(np.uint16)
    return mask


def _warn_if_truncation_allowed() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images will load silently", stacklevel=3
        )


def collate_skip_bad(batch: Sequence[dict | None]) -> dict:
    """``DataLoader`` collate_fn for datasets built with ``skip_bad=True``.

    Drops bad-sample markers (``{"bad": True, "id", "reason"}``) and stacks the good samples with
    ``default_collate``; the batch dict gets ``"skipped": [(id, reason), ...]`` (empty if none). When every
    sample of the batch was bad the result holds only ``"skipped"`` (no ``"image"``), so the training loop
    skips the step but still counts the bad samples.
    """
    good, skipped = [], []
    for sample in batch:
        if sample is None:
            skipped.append(("<unknown>", "dataset returned None"))
        elif sample.get("bad"):
            skipped.append((sample["id"], sample["reason"]))
        else:
            good.append(sample)
    if not good:
        return {"skipped": skipped}
    out = default_collate(good)
    out["skipped"] = skipped
    return out


class SkipBadMixin:
    """Shared ``skip_bad`` handling: turn a ``BadSampleError`` into a marker and remember it."""

    skip_bad: bool
    bad_samples: dict[str, str]

    def _load_or_mark(self, sample_id: str, load: Callable[[], dict]) -> dict:
        try:
            return load()
        except BadSampleError as exc:
            if not self.skip_bad:
                raise
            self.bad_samples[sample_id] = str(exc)
            return {"bad": True, "id": sample_id, "reason": str(exc)}


class PairedSegmentation(SkipBadMixin, Dataset):
    """Images with label PNGs: ``pairs`` of ``(id, image file, mask file)`` and ``lut``, int64 entries (256 for 8-bit
    mask files, 65536 for 16-bit ones) that map each raw mask value to a train id in ``0..num_classes-1`` or
    :data:`rayseg.ignore.IGNORE_INDEX`.

    Samples: ``{"image": float 3xHxW, "mask": int64 HxW, "id": str}``. A missing or corrupt file, a mask of another
    size than its image, or a raw value whose train id is out of range raises ``BadSampleError`` naming the file;
    with ``skip_bad`` the sample is returned as a marker (see ``collate_skip_bad``) and recorded in
    ``self.bad_samples`` (id -> reason; per process, so DataLoader workers keep their own)."""

    def __init__(self, pairs: Sequence[tuple[str, Path, Path]], lut: np.ndarray, class_names: Sequence[str],
                 transform: Callable | None = None, skip_bad: bool = False):
        if lut.shape not in ((256,), (65536,)):
            raise ValueError(f"lut must have 256 or 65536 entries (one per raw 8- or 16-bit value), got shape "
                             f"{lut.shape}")
        self.pairs, self.lut = list(pairs), lut.astype(np.int64)
        self.class_names, self.num_classes = list(class_names), len(class_names)
        self.transform, self.skip_bad, self.bad_samples = transform, bool(skip_bad), {}
        _warn_if_truncation_allowed()

    def __len__(self) -> int:
        return len(self.pairs)

    def paths(self, i: int) -> tuple[Path, Path]:
        """The image and mask files of sample ``i``."""
        return self.pairs[i][1], self.pairs[i][2]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Load and validate sample ``i``: (uint8 HxWx3 image, int64 HxW train ids, ``IGNORE_INDEX`` = ignore).
        Raises BadSampleError."""
        image_path, mask_path = self.paths(i)
        image, raw = load_rgb(image_path), load_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise BadSampleError(mask_path, f"mask size {raw.shape[0]}x{raw.shape[1]} (HxW) does not match image "
                                            f"size {image.shape[0]}x{image.shape[1]} of {image_path}")
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))  # raw values
        if present[-1] >= len(self.lut):
            raise BadSampleError(mask_path, f"raw mask value {int(present[-1])} does not fit this dataset's "
                                            f"{len(self.lut).bit_length() - 1}-bit label ids")
        bad = self.lut[present][self.lut[present] >= self.num_classes]
        if bad.size:
            raise BadSampleError(mask_path, f"label values {bad.tolist()} out of range for "
                                            f"num_classes={self.num_classes}")
        return image, self.lut[raw]

    def __getitem__(self, i: int) -> dict:
        return self._load_or_mark(self.pairs[i][0], lambda: self._sample(i))

    def _sample(self, i: int) -> dict:
        image, mask = self.load(i)
        image_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        image_t, mask_t = (self.transform or to_float_pair)(image_t, tv_tensors.Mask(torch.from_numpy(mask)))
        return {"image": image_t, "mask": mask_t, "id": self.pairs[i][0]}


class VOCSegmentationFolder(PairedSegmentation):
    """Segmentation dataset in PASCAL VOC layout.

    ``root/JPEGImages/<id>.(jpg|jpeg|png)``, ``root/SegmentationClass/<id>.png`` ("P" or "L" PNG whose pixel
    values are label ids), ``root/ImageSets/Segmentation/<split>.txt`` (one id per line). With the SBD
    augmentation installed as usual (``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt``),
    ``split="train_aug"`` reads it; an id without a ``SegmentationClass`` mask takes its ``SegmentationClassAug``
    one. Files are found when a sample is read.

    The raw value ``file_ignore`` (255, as VOC writes it) becomes :data:`rayseg.ignore.IGNORE_INDEX`. More than 255
    classes need 16-bit mask files; their ignore value defaults to 65535 (:data:`rayseg.ignore.FILE_IGNORE_16`).
    ``label_map`` remaps raw mask values Cityscapes-style (raw -> train id); raw values missing from it become
    ignore.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        num_classes: int | None = None,
        transform: Callable | None = None,
        label_map: Mapping[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        skip_bad: bool = False,
        file_ignore: int | None = None,
    ):
        if num_classes is None:
            if class_names is None:
                raise ValueError("VOCSegmentationFolder needs num_classes (or class_names)")
            num_classes = len(class_names)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes={num_classes}")
        if file_ignore is None:
            file_ignore = FILE_IGNORE if num_classes <= FILE_IGNORE else FILE_IGNORE_16
        if not 0 < num_classes <= FILE_IGNORE_16 or not num_classes <= file_ignore <= FILE_IGNORE_16:
            raise ValueError(f"need 0 < num_classes <= 65535 and num_classes <= file_ignore <= 65535, got "
                             f"num_classes={num_classes}, file_ignore={file_ignore}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset root not found")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file}: split file not found")
        self.split, self.file_ignore = split, file_ignore
        self.ids = split_file.read_text().split()
        if not skip_bad:  # a list naming files that are not there fails now, not at the first epoch that reads them
            missing = [i for i in self.ids if not (self.image_path(i).is_file() and self.mask_path(i).is_file())]
            if missing:
                raise FileNotFoundError(f"{split_file}: {len(missing)} listed id(s) have no image in JPEGImages or "
                                        f"no mask (first: {missing[0]}); fix the list, or set data.skip_bad: true "
                                        f"to skip and count them")
        self.label_map = dict(label_map) if label_map is not None else None
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        super().__init__([(i, None, None) for i in self.ids], self._build_lut(num_classes, self.label_map), names,
                         transform, skip_bad)

    def _build_lut(self, num_classes: int, label_map: dict[int, int] | None) -> np.ndarray:
        """65536-entry raw value -> int64 label lookup table (8- and 16-bit mask files): identity with
        ``file_ignore`` -> ``IGNORE_INDEX``, or ``label_map`` with every other raw value -> ``IGNORE_INDEX``."""
        if label_map is None:
            lut = np.arange(65536, dtype=np.int64)
            lut[self.file_ignore] = IGNORE_INDEX
            return lut
        lut = np.full(65536, IGNORE_INDEX, np.int64)
        for raw, label in label_map.items():
            if not 0 <= raw <= 65535:
                raise ValueError(f"label_map key {raw} is not a 8- or 16-bit mask value")
            if not (0 <= label < num_classes or label in (IGNORE_INDEX, self.file_ignore)):
                raise ValueError(f"label_map maps {raw} -> {label}, out of range for num_classes={num_classes}")
            lut[raw] = IGNORE_INDEX if label == self.file_ignore else label
        return lut

    def paths(self, i: int) -> tuple[Path, Path]:
        sample_id = self.ids[i]
        return self.image_path(sample_id), self.mask_path(sample_id)

    def image_path(self, sample_id: str) -> Path:
        """The image file of ``sample_id`` (first existing of .jpg/.jpeg/.png; the .jpg path if none exist)."""
        candidates = [self.root / "JPEGImages" / f"{sample_id}{ext}" for ext in IMAGE_EXTENSIONS]
        return next((p for p in candidates if p.is_file()), candidates[0])

    def mask_path(self, sample_id: str) -> Path:
        """``SegmentationClass/<id>.png``, else the SBD-augmented ``SegmentationClassAug/<id>.png`` (the
        ``train_aug`` split of 10,582 images lists ids that only SBD annotates)."""
        voc = self.root / "SegmentationClass" / f"{sample_id}.png"
        aug = self.root / "SegmentationClassAug" / f"{sample_id}.png"
        return aug if not voc.is_file() and aug.is_file() else voc


class ImageFiles(SkipBadMixin, Dataset):
    """Every image file (``IMAGE_EXTENSIONS``) under ``root``, at any depth, in sorted order, without labels: a COCO
    ``train2017/`` folder or any other unlabelled collection (PixCon and DenseCL pre-training). Items:
    ``{"image": float 3xHxW in [0, 1], "id": path relative to root}``; a corrupt file raises ``BadSampleError``
    naming it, or with ``skip_bad`` is marked and counted."""

    def __init__(self, root: str | os.PathLike, skip_bad: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found")
        self.ids = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                          if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.ids:
            raise FileNotFoundError(f"{self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.skip_bad, self.bad_samples = bool(skip_bad), {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        def load() -> dict:
            image = torch.from_numpy(load_rgb(self.root / self.ids[i])).permute(2, 0, 1).contiguous()
            return {"image": to_float_image(image), "id": self.ids[i]}

        return self._load_or_mark(self.ids[i], load)


class ImageFolderClassification(SkipBadMixin, Dataset):
    """Classification tree ``root/<class_name>/*.(png|jpg|jpeg)`` with torchvision ImageFolder semantics.

    Classes are the sorted sub-folder names. Samples: ``{"image": float 3xHxW, "label": int, "id": relative
    path}``; with ``mask_root`` (e.g. the ``<root>_masks`` tree of ``write_image_folder``) also
    ``"true_mask"``: bool HxW from ``mask_root/<relative path with .png suffix>``. ``transform`` is image-only.
    Bad images: ``BadSampleError``, or markers with ``skip_bad`` (see ``collate_skip_bad``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        skip_bad: bool = False,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        mask_root: str | os.PathLike | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found")
        self.mask_root = Path(mask_root) if mask_root is not None else None
        if self.mask_root is not None and not self.mask_root.is_dir():
            raise FileNotFoundError(f"{self.mask_root}: mask folder not found")
        self.class_names, class_to_idx = find_classes(self.root)
        self.num_classes = len(self.class_names)
        self.samples: list[tuple[str, int]] = make_dataset(self.root, class_to_idx, extensions=extensions)
        self.transform, self.skip_bad = transform, skip_bad
        self.bad_samples = {}
        _warn_if_truncation_allowed()

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, i: int) -> str:
        return Path(self.samples[i][0]).relative_to(self.root).as_posix()

    def _sample(self, i: int) -> dict:
        path, label = self.samples[i]
        image = load_rgb(path)
        image_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        sample = {"label": label, "id": self.sample_id(i)}
        if self.mask_root is not None:
            mask_path = (self.mask_root / sample["id"]).with_suffix(".png")
            mask = load_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise BadSampleError(mask_path, f"mask size {mask.shape} does not match image size {image.shape[:2]}")
            sample["true_mask"] = torch.from_numpy(mask > 0)
        sample["image"] = self.transform(image_t) if self.transform is not None else to_float_image(image_t)
        return sample

    def __getitem__(self, i: int) -> dict:
        return self._load_or_mark(self.sample_id(i), lambda: self._sample(i))
