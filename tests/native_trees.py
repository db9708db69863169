"""Small datasets written in each dataset's own on-disk layout, with images of different sizes and aspect ratios
(tests and ``bench/paper_configs.py``). Masks are vertical stripes cycling through given raw ids. Each writer takes
``sizes`` (validation images; also training unless ``train_sizes`` is given)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from rayseg.data.folders import voc_palette
from rayseg.labeling import shards

SIZES = [(30, 44), (48, 36), (40, 40)]  # (height, width): landscape, portrait, square


def striped_mask(size: tuple[int, int], raw_values: list[int], stripe: int = 1) -> np.ndarray:
    h, w = size
    columns = np.asarray(raw_values, np.uint8)[(np.arange(w) // stripe) % len(raw_values)]
    return np.broadcast_to(columns, (h, w)).copy()


def write_pair(image_path: Path, mask_path: Path, size: tuple[int, int], raw_values: list[int], jpeg: bool,
               stripe: int = 1, palette: np.ndarray | None = None) -> None:
    """A random image and a mask PNG (``L``, or ``P`` with ``palette``) whose columns cycle through ``raw_values``."""
    h, w = size
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_path, **({"quality": 95} if jpeg else {}))
    mask = Image.fromarray(striped_mask(size, raw_values, stripe), mode="L")
    if palette is not None:
        mask = mask.convert("P")
        mask.putpalette(palette.reshape(-1).tolist())
    mask.save(mask_path)


def _split_sizes(split: str, sizes, train_sizes):
    """Image sizes of one split: ``sizes`` for validation, ``train_sizes`` (default ``sizes``) for training."""
    return sizes if train_sizes is None or split.startswith("val") else train_sizes


def _write_splits(splits: tuple[str, str], files, raw: list[int], sizes, train_sizes, stripe: int, jpeg: bool) -> None:
    """Write the pairs of the (train, val) ``splits``; ``files(split, i)`` gives the image and mask paths of one."""
    for split in splits:
        for i, size in enumerate(_split_sizes(split, sizes, train_sizes)):
            write_pair(*files(split, i), size, raw, jpeg=jpeg, stripe=stripe)


def write_ade20k(root: Path, raw: list[int], sizes=SIZES, stripe: int = 1, train_sizes=None) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}``."""
    root = root / "ADEChallengeData2016"

    def files(folder: str, i: int) -> tuple[Path, Path]:
        name = f"ADE_{folder[:5]}_{i:08d}"
        return root / "images" / folder / f"{name}.jpg", root / "annotations" / folder / f"{name}.png"

    _write_splits(("training", "validation"), files, raw, sizes, train_sizes, stripe, jpeg=True)
    return root


def write_cityscapes(root: Path, raw: list[int], sizes=SIZES, stripe: int = 1, train_sizes=None) -> Path:
    """``cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/.../*_gtFine_labelIds.png``."""
    root = root / "cityscapes"

    def files(split: str, i: int) -> tuple[Path, Path]:
        city = ("aachen", "bochum")[i % 2]
        name = f"{city}_{i:06d}_000019"
        return (root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")

    _write_splits(("train", "val"), files, raw, sizes, train_sizes, stripe, jpeg=False)
    return root


def write_coco_stuff(root: Path, raw: list[int], sizes=SIZES, stripe: int = 1, train_sizes=None) -> Path:
    """``coco_stuff164k/{images,annotations}/{train2017,val2017}/<12 digits>.{jpg,png}``."""
    root = root / "coco_stuff164k"

    def files(split: str, i: int) -> tuple[Path, Path]:
        return root / "images" / split / f"{i:012d}.jpg", root / "annotations" / split / f"{i:012d}.png"

    _write_splits(("train2017", "val2017"), files, raw, sizes, train_sizes, stripe, jpeg=True)
    return root


def write_voc_aug(root: Path, raw: list[int], sizes=SIZES, stripe: int = 1, train_sizes=None) -> Path:
    """``VOCdevkit/VOC2012`` with JPEG images, palette masks, ``train``/``val`` lists and the SBD-augmented
    ``train_aug`` list whose extra ids have masks only in ``SegmentationClassAug``."""
    root = root / "VOCdevkit" / "VOC2012"
    palette = voc_palette()
    lists: dict[str, list[str]] = {"train": [], "val": [], "train_aug": []}
    for split in ("train", "val", "sbd"):
        for i, size in enumerate(_split_sizes(split, sizes, train_sizes)):
            sample = f"{2007 + ('train', 'val', 'sbd').index(split)}_{i:06d}"
            folder = "SegmentationClassAug" if split == "sbd" else "SegmentationClass"
            write_pair(root / "JPEGImages" / f"{sample}.jpg", root / folder / f"{sample}.png", size, raw, jpeg=True,
                       stripe=stripe, palette=palette)
            lists["val" if split == "val" else "train_aug"].append(sample)
            if split == "train":
                lists["train"].append(sample)
    for split, ids in lists.items():
        path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{s}\n" for s in ids))
    return root


def write_imagenet(root: Path, images_per_class: dict[int, int], sizes=SIZES, num_classes: int = 1000) -> Path:
    """``train/<wnid>/<wnid>_<n>.JPEG``: ``num_classes`` class folders (sorted wnid order = class index), images only
    in the classes of ``images_per_class``, cycling through ``sizes``."""
    root = root / "imagenet" / "train"
    k = 0
    for index in range(num_classes):
        folder = root / f"n{index:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class.get(index, 0)):
            h, w = sizes[k % len(sizes)]
            rgb = np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(folder / f"n{index:08d}_{n}.JPEG", quality=90)
            k += 1
    return root


# ------------------------------------------------------------------------------------------ PSSL pseudo labels


def gradient_deciles(height: int, width: int) -> np.ndarray:
    """D(y, x) = floor(10 x / width): the rightmost columns are the top decile."""
    cols = (10 * np.arange(width)) // width
    return np.broadcast_to(cols, (height, width)).astype(np.uint8).copy()


def write_labels(version_dir: Path, images_root: Path, decile_size: tuple[int, int] = (32, 32),
                 per_shard: int = 4) -> list[tuple[str, int]]:
    """Label every image of an ImageFolder tree with the gradient decile map; returns (id, class index) rows."""
    classes = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    items = [(f"{c}/{f.name}", i) for i, c in enumerate(classes) for f in sorted((images_root / c).iterdir())]
    png = shards.encode_deciles(gradient_deciles(*decile_size))
    for index, start in enumerate(range(0, len(items), per_shard)):
        chunk = items[start:start + per_shard]
        rows = [{"id": image_id, "status": "ok", "content_hash": "0" * 64, "class_index": cls,
                 "height": decile_size[0], "width": decile_size[1], "deciles_png": png} for image_id, cls in chunk]
        shards.commit_shard(str(version_dir), index, [image_id for image_id, _ in chunk], rows, "v-test", [], False)
    return items
