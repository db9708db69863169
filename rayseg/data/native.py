"""Segmentation datasets in the layouts they ship in: ADE20K (SceneParsing), Cityscapes and COCO-Stuff 164k.

Each reader lists ``(id, image file, mask file)`` pairs from the dataset's own folders and maps the raw values
of its 8-bit mask PNGs to train ids with the dataset's official convention; every raw value without a train id
becomes :data:`rayseg.ignore.IGNORE_INDEX`. Items are the segmentation sample contract
``{"image": float 3xHxW, "mask": int64 HxW, "id": str}``; images keep their own size and aspect ratio.

=============  ===============================================================  =======================
kind           layout under ``root``                                              raw value -> train id
=============  ===============================================================  =======================
``ade20k``     ``ADEChallengeData2016``: ``images/{training,validation}/*.jpg``,  0 ("other") -> ignore,
               ``annotations/{training,validation}/*.png``                        k -> k - 1 (150 classes)
``cityscapes`` ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``,            the official labelIds ->
               ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``                trainIds (19 classes)
``coco_stuff`` ``images/{train2017,val2017}/*.jpg``, the stuffthingmaps PNGs in    the 182 used-or-unused
               ``annotations/<split>`` (or ``stuffthingmaps_trainval2017/``)      ids -> 171 classes;
                                                                                  255 -> ignore
=============  ===============================================================  =======================

Split names: ``train``/``val`` (the config's) or the dataset's own (``training``, ``val2017``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rayseg.data.folders import PairedSegmentation
from rayseg.ignore import IGNORE_INDEX

__all__ = ["CITYSCAPES_CLASSES", "NATIVE_KINDS", "ade20k", "build_native", "cityscapes",
           "coco_stuff"]

# cityscapesscripts' labels.py: labelId -> trainId of the 19 evaluated classes
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
# stuffthingmaps hold COCO category id - 1; these 11 ids are unused (10 gaps among COCO's thing ids and id 91)
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
ADE20K_SPLITS = {"train": "training", "val": "validation"}
COCO_SPLITS = {"train": "train2017", "val": "val2017"}


def _lut(train_ids: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.int64)
    for raw, train_id in train_ids.items():
        lut[raw] = train_id
    return lut


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found")
    return path


def _pairs(images: Path, masks: Path, mask_name: Callable[[Path], str], pattern: str) -> list[tuple[str, Path, Path]]:
    """Every image under ``images`` matching ``pattern`` with its mask ``masks/<relative folder>/<mask_name>``; the
    id is the image's path relative to ``images`` without suffix. An empty split is an error."""
    pairs = []
    for image in sorted(images.rglob(pattern)):
        rel = image.relative_to(images)
        pairs.append((rel.with_suffix("").as_posix(), image, masks / rel.parent / mask_name(image)))
    if not pairs:
        raise FileNotFoundError(f"{images}: no {pattern} images")
    return pairs


def ade20k(root: str | os.PathLike, split: str, transform: Callable | None = None,
           skip_bad: bool = False) -> PairedSegmentation:
    """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes, raw 0 ("other") ignored."""
    root, folder = Path(root), ADE20K_SPLITS.get(split, split)
    images = _folder(root / "images" / folder, f"ADE20K {split} images")
    masks = _folder(root / "annotations" / folder, f"ADE20K {split} annotations")
    pairs = _pairs(images, masks, lambda image: f"{image.stem}.png", "*.jpg")
    return PairedSegmentation(pairs, _lut({k: k - 1 for k in range(1, 151)}),
                              [f"ade_{k}" for k in range(150)], transform, skip_bad)


def cityscapes(root: str | os.PathLike, split: str, transform: Callable | None = None,
               skip_bad: bool = False) -> PairedSegmentation:
    """Cityscapes fine annotations: labelIds -> the 19 trainIds, everything else ignored."""
    root = Path(root)
    images = _folder(root / "leftImg8bit" / split, f"Cityscapes {split} leftImg8bit")
    masks = _folder(root / "gtFine" / split, f"Cityscapes {split} gtFine")
    pairs = _pairs(images, masks, lambda image: image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"),
                   "*_leftImg8bit.png")
    pairs = [(sample_id.removesuffix("_leftImg8bit"), image, mask) for sample_id, image, mask in pairs]
    return PairedSegmentation(pairs, _lut(CITYSCAPES_TRAIN_IDS), CITYSCAPES_CLASSES, transform, skip_bad)


def coco_stuff(root: str | os.PathLike, split: str, transform: Callable | None = None,
               skip_bad: bool = False) -> PairedSegmentation:
    """COCO-Stuff 164k: the stuffthingmaps' 182 ids (11 unused) -> 171 classes, 255 ignored."""
    root, folder = Path(root), COCO_SPLITS.get(split, split)
    images = _folder(root / "images" / folder, f"COCO-Stuff {split} images")
    candidates = [root / "annotations" / folder, root / "stuffthingmaps_trainval2017" / folder]
    masks = next((c for c in candidates if c.is_dir()), candidates[0])
    _folder(masks, f"COCO-Stuff {split} stuffthingmaps")
    used = [raw for raw in range(182) if raw not in COCO_STUFF_UNUSED]
    pairs = _pairs(images, masks, lambda image: f"{image.stem}.png", "*.jpg")
    return PairedSegmentation(pairs, _lut({raw: k for k, raw in enumerate(used)}),
                              [f"coco_stuff_{k}" for k in range(len(used))], transform, skip_bad)


NATIVE_KINDS = {"ade20k": ade20k, "cityscapes": cityscapes, "coco_stuff": coco_stuff}


def build_native(kind: str, root: str | os.PathLike, split: str, transform: Callable | None = None,
                 skip_bad: bool = False, class_names: Sequence[str] = ()) -> PairedSegmentation:
    """The reader of ``kind`` (a key of :data:`NATIVE_KINDS`); ``class_names`` (as many as the dataset's classes)
    replace the generic names."""
    dataset = NATIVE_KINDS[kind](root, split, transform, skip_bad)
    if class_names:
        if len(class_names) != dataset.num_classes:
            raise ValueError(f"data.class_names: {len(class_names)} names for the {dataset.num_classes} classes of "
                             f"{kind}")
        dataset.class_names = list(class_names)
    return dataset
