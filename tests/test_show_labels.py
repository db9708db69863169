"""`show_labels`: a PNG grid (image, decile heat map, pseudo-mask) from committed shards; no Ray needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayseg.commands.show_labels import show_labels
from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from rayseg.labeling import shards

SIZE = 24


def write_labels(version_dir: Path, images_root: Path, shard_size: int = 4) -> list[str]:
    """Committed shards for every image of ``images_root``: deciles = a horizontal gradient (top decile on the
    right). Returns the sorted ids."""
    classes = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    ids = sorted(p.relative_to(images_root).as_posix() for p in images_root.rglob("*.png"))
    png = shards.encode_deciles(np.tile((np.arange(SIZE) * 10 // SIZE).astype(np.uint8), (SIZE, 1)))
    for index in range(0, len(ids), shard_size):
        chunk = ids[index:index + shard_size]
        rows = [{"id": i, "status": "ok", "content_hash": hashlib.sha256((images_root / i).read_bytes()).hexdigest(),
                 "class_index": classes.index(i.split("/")[0]), "height": SIZE, "width": SIZE,
                 "deciles_png": png} for i in chunk]
        shards.commit_shard(str(version_dir), index // shard_size, chunk, rows, "v", [], False)
    return ids


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    write_image_folder(SyntheticClassification(num_images=10, image_size=32, classes=[0, 1]), root / "images")
    ids = write_labels(root / "labels" / "v", root / "images")
    return root, ids


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def test_grid_png_has_one_row_per_image(labelled, tmp_path):
    root, ids = labelled
    out = show_labels(root / "labels" / "v", root / "images", tmp_path / "grid.png", count=3)
    assert out == tmp_path / "grid.png" and out.is_file()
    assert not list(tmp_path.glob("*.tmp"))
    w3, h3 = png_size(out)
    assert w3 > 300 and h3 > 300
    four = show_labels(root / "labels" / "v", root / "images", tmp_path / "sub" / "grid4.png", count=4)
    w4, h4 = png_size(four)
    assert w4 == w3 and h4 - h3 == pytest.approx(h3 / 3, abs=2)  # height scales with the number of rows
    # count above the number of labels: every label once
    all_rows = show_labels(root / "labels" / "v", root / "images", tmp_path / "all.png", count=50)
    assert png_size(all_rows)[1] == pytest.approx(h3 / 3 * len(ids), abs=2)


def test_grid_pixels_show_heat_map_and_red_overlay(labelled, tmp_path):
    root, _ = labelled
    out = show_labels(root / "labels" / "v", root / "images", tmp_path / "g.png", count=1)
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    w = pixels.shape[1]
    right = pixels[:, 2 * w // 3:]  # the pseudo-mask column: a strong red overlay somewhere
    assert ((right[..., 0] - right[..., 1] > 100) & (right[..., 0] - right[..., 2] > 100)).any()
    middle = pixels[:, w // 3: 2 * w // 3]  # viridis: yellow (top decile) and dark purple (decile 0) present
    assert ((middle[..., 0] > 200) & (middle[..., 1] > 200) & (middle[..., 2] < 80)).any()
    assert ((middle[..., 0] < 90) & (middle[..., 1] < 30) & (middle[..., 2] > 60)).any()


def test_true_masks_outline_and_iou(labelled, tmp_path):
    """With the true object masks the pseudo-mask column gets the true mask's green outline; the IoU in the title
    is top_decile_iou, checked here on a hand case."""
    from rayseg.labeling.stages import top_decile_iou

    root, _ = labelled
    plain = show_labels(root / "labels" / "v", root / "images", tmp_path / "plain.png", count=2)
    scored = show_labels(root / "labels" / "v", root / "images", tmp_path / "scored.png", count=2,
                         true_masks=root / "images_masks")

    def green(path):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        right = pixels[:, 2 * pixels.shape[1] // 3:]
        return int(((right[..., 1] - right[..., 0] > 150) & (right[..., 1] - right[..., 2] > 150)).sum())

    assert green(plain) == 0 and green(scored) > 20

    deciles = np.tile((np.arange(10) * 10 // 10).astype(np.uint8), (10, 1))  # column c has decile c
    true = np.zeros((10, 10), bool)
    true[:, 8:] = True  # columns 8, 9; the top decile is column 9 only
    assert top_decile_iou(deciles, true, "square") == pytest.approx(0.5)
    assert top_decile_iou(deciles, true, "square", threshold=8) == pytest.approx(1.0)


def test_seeded_sample_and_source_from_summary_and_parquet(labelled, tmp_path):
    root, ids = labelled
    version_dir = tmp_path / "labels" / "v"
    import shutil

    shutil.copytree(root / "labels" / "v", version_dir)
    # no images_root: the source recorded in summary.json (as run_labeling writes it)
    with pytest.raises(ValueError, match="no image source"):
        show_labels(version_dir, None, tmp_path / "x.png")
    (version_dir / "summary.json").write_text(json.dumps({"images_root": str(root / "images")}))
    a = show_labels(version_dir, None, tmp_path / "a.png", count=2, seed=1)
    b = show_labels(version_dir, None, tmp_path / "b.png", count=2, seed=1)
    assert a.read_bytes() == b.read_bytes()  # deterministic
    # Parquet image table instead of the folder (given as images_root or as parquet=)
    table = pa.table({"id": ids, "image": [(root / "images" / i).read_bytes() for i in ids],
                      "label": [0] * len(ids)})
    pq.write_table(table, tmp_path / "images.parquet")
    c = show_labels(version_dir, tmp_path / "images.parquet", tmp_path / "c.png", count=2)
    d = show_labels(version_dir, None, tmp_path / "d.png", count=2, parquet=tmp_path / "images.parquet")
    assert png_size(c) == png_size(d) and png_size(c)[1] > 300


def test_errors(labelled, tmp_path):
    root, _ = labelled
    with pytest.raises(FileNotFoundError, match="label version folder not found"):
        show_labels(tmp_path / "nope", root / "images", tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no committed label shards"):
        show_labels(tmp_path / "empty", root / "images", tmp_path / "x.png")
    with pytest.raises(ValueError, match="count must be >= 1"):
        show_labels(root / "labels" / "v", root / "images", tmp_path / "x.png", count=0)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        show_labels(root / "labels" / "v", tmp_path / "noimages", tmp_path / "x.png")
