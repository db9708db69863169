"""VOC / ImageFolder readers: round trip with the synthetic writers, remapping, bad-sample handling."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rayseg.data.errors import BadSampleError
from rayseg.data.folders import ImageFolderClassification, VOCSegmentationFolder, collate_skip_bad, voc_palette
from rayseg.data.synthetic import (
    SyntheticClassification,
    SyntheticSegmentation,
    write_image_folder,
    write_voc_folder,
)
from rayseg.ignore import IGNORE_INDEX


@pytest.fixture()
def voc(tmp_path):
    """A 6-image VOC tree of synthetic domain A (7 classes) and the dataset it came from."""
    ds = SyntheticSegmentation("A", num_images=6, image_size=32, seed=1)
    root = tmp_path / "voc"
    assert write_voc_folder(ds, root) == 6
    return root, ds


def _ids(root: Path, split: str = "train") -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _save_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    img = Image.fromarray(array)
    if palette:
        img.putpalette(voc_palette().tobytes())
    img.save(path)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_voc_round_trip_equals_generated(voc):
    root, ds = voc
    ids = _ids(root)
    assert ids == [f"A-train-s1-{i:06d}" for i in range(6)]
    with Image.open(root / "SegmentationClass" / f"{ids[0]}.png") as m:
        assert m.mode == "P"
    folder = VOCSegmentationFolder(root, "train", num_classes=ds.num_classes, class_names=ds.class_names)
    assert len(folder) == 6 and folder.class_names == ds.class_names
    for i in range(6):
        got, want = folder[i], ds[i]
        assert got["id"] == ids[i]
        assert got["image"].dtype == torch.float32 and got["mask"].dtype == torch.int64
        assert torch.equal(got["image"], want["image"])  # PNG is lossless: bit-exact
        assert torch.equal(got["mask"], want["mask"])


def test_write_voc_folder_is_idempotent_and_appends(voc):
    root, ds = voc
    assert write_voc_folder(ds, root) == 0
    assert len(_ids(root)) == 6  # no duplicated ids
    more = SyntheticSegmentation("A", num_images=2, image_size=32, seed=2)
    assert write_voc_folder(more, root, split="train") == 2
    assert _ids(root)[-2:] == ["A-train-s2-000000", "A-train-s2-000001"] and len(_ids(root)) == 8


def test_label_map_remaps_and_ignores_unmapped(voc):
    root, ds = voc
    label_map = {0: 0, 1: 1, 2: 1, 3: 2}  # merge 1 and 2; 4, 5, 6 unmapped -> ignore
    folder = VOCSegmentationFolder(root, num_classes=3, label_map=label_map)
    lut = torch.tensor([0, 1, 1, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX])
    seen = set()
    for i in range(len(folder)):
        raw = ds[i]["mask"]
        assert torch.equal(folder[i]["mask"], lut[raw])
        seen |= set(raw.unique().tolist())
    assert seen & {4, 5, 6} and seen & {1, 2}  # both paths of the map were exercised
    with pytest.raises(ValueError, match="out of range"):
        VOCSegmentationFolder(root, num_classes=3, label_map={1: 5})


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_image_raises_with_path(voc, fmt):
    root, _ = voc
    sample = _ids(root)[2]
    path = root / "JPEGImages" / f"{sample}.{fmt}"
    if fmt == "jpg":  # replace the PNG by a JPEG (the reader tries .jpg first)
        png = root / "JPEGImages" / f"{sample}.png"
        Image.open(png).convert("RGB").save(path, quality=90)
        png.unlink()
    _truncate(path)
    folder = VOCSegmentationFolder(root, num_classes=7)
    with pytest.raises(BadSampleError) as err:
        folder[2]
    assert str(err.value).startswith(f"{path}: cannot decode image")
    folder[1]  # the others are fine


def test_bad_masks_raise_with_path_and_reason(voc):
    root, _ = voc
    ids = _ids(root)
    mask_dir = root / "SegmentationClass"
    _save_png(mask_dir / f"{ids[0]}.png", np.zeros((16, 16), np.uint8), palette=True)  # wrong size
    bad_labels = np.zeros((32, 32), np.uint8)
    bad_labels[0, :3], bad_labels[5, 5], bad_labels[9, 9] = 9, 7, 255  # 255 is ignore: allowed
    _save_png(mask_dir / f"{ids[1]}.png", bad_labels)  # "L" mode works too
    _save_png(mask_dir / f"{ids[2]}.png", np.zeros((32, 32, 3), np.uint8))  # RGB mask
    _truncate(mask_dir / f"{ids[3]}.png")
    folder = VOCSegmentationFolder(root, num_classes=7)
    expected = {
        0: "mask size 16x16 (HxW) does not match image size 32x32",
        1: "label values [7, 9] out of range for num_classes=7",
        2: "mask must be a single-channel 'P', 'L' or 16-bit image, got mode 'RGB'",
        3: "cannot decode mask",
    }
    for i, reason in expected.items():
        with pytest.raises(BadSampleError) as err:
            folder[i]
        assert str(err.value).startswith(f"{mask_dir / ids[i]}.png: {reason}")
        assert err.value.path == str(mask_dir / f"{ids[i]}.png")


def test_missing_files(voc, tmp_path):
    root, _ = voc
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'nope'}: dataset root not found$"):
        VOCSegmentationFolder(tmp_path / "nope", num_classes=7)
    with pytest.raises(FileNotFoundError, match="val.txt: split file not found"):
        VOCSegmentationFolder(root, "val", num_classes=7)
    missing = _ids(root)[4]
    (root / "JPEGImages" / f"{missing}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"train.txt: 1 listed id\\(s\\) have no image in JPEGImages or no "
                                                f"mask \\(first: {missing}\\)"):
        VOCSegmentationFolder(root, num_classes=7)  # at construction, before any epoch reads it
    marker = VOCSegmentationFolder(root, num_classes=7, skip_bad=True)[4]  # data.skip_bad: skipped when read
    assert marker["bad"] is True and "file not found" in marker["reason"]


def test_skip_bad_with_dataloader_reports_skipped_ids(voc):
    root, _ = voc
    ids = _ids(root)
    _truncate(root / "JPEGImages" / f"{ids[1]}.png")
    _save_png(root / "SegmentationClass" / f"{ids[4]}.png", np.full((32, 32), 9, np.uint8))
    folder = VOCSegmentationFolder(root, num_classes=7, skip_bad=True)
    marker = folder[1]
    assert marker["bad"] is True and marker["id"] == ids[1] and "cannot decode image" in marker["reason"]

    loader = DataLoader(folder, batch_size=4, collate_fn=collate_skip_bad)
    good, skipped = [], []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["mask"].dtype == torch.int64
        assert batch["image"].shape[0] == len(batch["id"]) == batch["mask"].shape[0]
        good += batch["id"]
        skipped += batch["skipped"]
    assert good == [ids[i] for i in (0, 2, 3, 5)]
    assert [sid for sid, _ in skipped] == [ids[1], ids[4]]
    mask = root / "SegmentationClass" / f"{ids[4]}.png"
    assert skipped[1][1] == f"{mask}: label values [9] out of range for num_classes=7"
    assert set(folder.bad_samples) == {ids[1], ids[4]}
    all_bad = collate_skip_bad([folder[1], folder[4]])  # no image, but the bad samples are still reported
    assert "image" not in all_bad and [sid for sid, _ in all_bad["skipped"]] == [ids[1], ids[4]]


def test_image_folder_over_written_tree(tmp_path):
    cls = SyntheticClassification(num_images=18, image_size=32, classes=[5, 0, 9])
    root = tmp_path / "imagenet"
    assert write_image_folder(cls, root) == 18
    assert write_image_folder(cls, root) == 0  # idempotent
    folder = ImageFolderClassification(root, mask_root=tmp_path / "imagenet_masks")
    assert folder.class_names == ["crescent", "disc", "ellipse"]  # sorted folder names
    assert folder.num_classes == 3 and len(folder) == len(folder.samples) == 18
    by_id = {f"{cls.class_names[cls[i]['label']]}/train-s0-{i:06d}.png": cls[i] for i in range(18)}
    for i in range(len(folder)):
        s = folder[i]
        want = by_id[s["id"]]
        assert folder.class_names[s["label"]] == cls.class_names[want["label"]]
        assert torch.equal(s["image"], want["image"])
        assert torch.equal(s["true_mask"], want["true_mask"])


def test_image_folder_bad_image_and_missing_root(tmp_path):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _save_png(root / "a" / "x.png", np.full((8, 8, 3), 10, np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buf, format="JPEG")
    (root / "b" / "y.jpg").write_bytes(buf.getvalue()[:300])  # truncated JPEG
    (root / "b" / "notes.txt").write_text("not an image")
    folder = ImageFolderClassification(root)
    assert folder.samples == [(str(root / "a" / "x.png"), 0), (str(root / "b" / "y.jpg"), 1)]
    assert folder[0]["image"].shape == (3, 8, 8) and folder[0]["label"] == 0 and folder[0]["id"] == "a/x.png"
    with pytest.raises(BadSampleError) as err:
        folder[1]
    assert str(err.value).startswith(f"{root / 'b' / 'y.jpg'}: cannot decode image")
    skipping = ImageFolderClassification(root, skip_bad=True)
    batch = collate_skip_bad([skipping[0], skipping[1]])
    assert batch["id"] == ["a/x.png"] and batch["label"].tolist() == [0]
    assert [sid for sid, _ in batch["skipped"]] == ["b/y.jpg"] and skipping.bad_samples.keys() == {"b/y.jpg"}
    with pytest.raises(FileNotFoundError, match="missing: image folder not found"):
        ImageFolderClassification(tmp_path / "missing")
