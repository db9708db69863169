"""A VOC tree whose images differ in size and aspect ratio (as VOC ships them) trains and evaluates, in each
inference mode (whole image, sliding windows with flip, shorter-side resize): metrics are at the labels' own
size, metrics.json keeps the confusion matrix and the run folder has its PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayseg.config import load_config
from rayseg.data.folders import voc_palette
from rayseg.engine.runner import train
from rayseg.methods import METHODS

SIZES = [(40, 56), (64, 48), (50, 50), (72, 40), (36, 60)]  # (height, width)


def write_mixed_voc(root: Path) -> int:
    """3 classes; JPEG images of five sizes; 'P' masks with a 255 (ignore) border. Returns the val pixels that
    are not ignored."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    counted = 0
    for split, count in (("train", 6), ("val", 5)):
        ids = []
        for i in range(count):
            h, w = SIZES[i % len(SIZES)]
            sample = f"2007_{split}_{i:04d}"
            mask = np.zeros((h, w), np.uint8)
            mask[: h // 2, : w // 2] = 1
            mask[h // 2:, w // 2:] = 2
            mask[:2, :] = 255
            image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8) + (mask[..., None] % 255 * 80).astype(np.uint8)
            Image.fromarray(image).save(root / "JPEGImages" / f"{sample}.jpg", quality=95)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette().flatten().tolist())
            png.save(root / "SegmentationClass" / f"{sample}.png")
            ids.append(sample)
            if split == "val":
                counted += int((mask != 255).sum())
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return counted


@pytest.mark.parametrize("inference", [[], ["eval.mode=slide", "eval.crop=32", "eval.stride=20", "eval.flip=true"],
                                       ["eval.short_side=48"]], ids=["whole", "slide-flip", "short-side"])
def test_finetune_on_images_of_different_sizes_evaluates_each_at_its_own_size(tmp_path, inference):
    val_pixels = write_mixed_voc(tmp_path / "voc")
    cfg = load_config(None, [*inference,
        f"run.storage={tmp_path / 'runs'}", "run.name=mixed", "data.kind=voc", f"data.root={tmp_path / 'voc'}",
        "data.num_classes=3", "data.crop_size=32", "model.output_stride=16", "model.channels=16",
        "train.epochs=1", "train.batch_size=2", "train.num_workers=0", "train.log_every=1"])
    summary = train(cfg, "finetune", METHODS["supervised"])
    metrics = json.loads((Path(cfg.run_dir("finetune")) / "metrics.json").read_text())
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and int(matrix.sum()) == metrics["num_pixels"] == val_pixels
    masks = [_val_mask(tmp_path, i) for i in range(5)]
    assert {m.shape for m in masks} == set(SIZES)  # five sizes and aspect ratios in one val split
    assert matrix.sum(1).tolist() == [sum(int((m == c).sum()) for m in masks) for c in range(3)]  # true pixels
    assert summary["miou"] == metrics["miou"] and 0.0 <= metrics["miou"] <= 1.0
    png = Image.open(Path(cfg.run_dir("finetune")) / "confusion_matrix.png")
    assert png.format == "PNG" and min(png.size) >= 300


def _val_mask(root: Path, i: int) -> np.ndarray:
    return np.asarray(Image.open(root / "voc" / "SegmentationClass" / f"2007_val_{i:04d}.png"))
