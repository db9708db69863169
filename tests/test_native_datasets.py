"""ADE20K, Cityscapes and COCO-Stuff read from small trees written in each dataset's own layout, with images of
different sizes and aspect ratios; the official raw-id conventions; the config kinds; the paper's 4-dataset union
(VOC + COCO-Stuff + ADE20K + Cityscapes) as one MDP config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayseg.config import ConfigError, load_config
from rayseg.data import build_segmentation_dataset
from rayseg.data.errors import BadSampleError
from rayseg.data.multi import build_multi_dataset
from rayseg.data.native import ade20k, cityscapes, coco_stuff
from rayseg.data.synthetic import SyntheticSegmentation, write_voc_folder
from rayseg.ignore import IGNORE_INDEX
from tests.native_trees import SIZES, write_ade20k, write_cityscapes, write_coco_stuff


def _mask_values(dataset) -> set[int]:
    return set().union(*(set(dataset[i]["mask"].unique().tolist()) for i in range(len(dataset))))


def test_ade20k_other_is_ignored_and_ids_shift_down(tmp_path):
    root = write_ade20k(tmp_path, [0, 1, 150, 7])
    for split in ("train", "validation"):
        ds = ade20k(root, split)
        assert len(ds) == 3 and ds.num_classes == 150
        assert {tuple(ds[i]["mask"].shape) for i in range(3)} == set(SIZES)
        assert {tuple(ds[i]["image"].shape[1:]) for i in range(3)} == set(SIZES)
        assert _mask_values(ds) == {IGNORE_INDEX, 0, 149, 6}
    assert ade20k(root, "val")[0]["id"] == "ADE_valid_00000000"


def test_cityscapes_label_ids_to_the_19_train_ids(tmp_path):
    root = write_cityscapes(tmp_path, [0, 1, 7, 26, 33, 255, 6])  # unlabeled, ego vehicle, road, car, bicycle, ...
    ds = cityscapes(root, "train")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.class_names[13] == "car"
    assert ds[0]["id"] == "aachen/aachen_000000_000019"
    assert _mask_values(ds) == {IGNORE_INDEX, 0, 13, 18}
    assert {tuple(ds[i]["mask"].shape) for i in range(3)} == set(SIZES)


def test_coco_stuff_182_raw_ids_to_171_classes(tmp_path):
    root = write_coco_stuff(tmp_path, [0, 10, 12, 91, 181, 255, 11])  # 11 is an unused id: ignored
    ds = coco_stuff(root, "val")
    assert len(ds) == 3 and ds.num_classes == 171
    assert _mask_values(ds) == {IGNORE_INDEX, 0, 10, 11, 80, 170}  # raw 12 -> 11, 91 -> 80 (first stuff), 181 -> 170


def test_config_kinds_build_the_readers_and_check_the_root(tmp_path):
    root = write_cityscapes(tmp_path, [7, 8])
    cfg = load_config(None, ["data.kind=cityscapes", f"data.root={root}"])
    train = build_segmentation_dataset(cfg.data, train=True)
    assert len(train) == 3 and train[0]["mask"].shape == (cfg.data.crop_size, cfg.data.crop_size)
    val = build_segmentation_dataset(cfg.data, train=False)
    assert {tuple(val[i]["mask"].shape) for i in range(3)} == set(SIZES)  # evaluation keeps each image's size
    with pytest.raises(ConfigError, match="data.root: required when data.kind is ade20k"):
        load_config(None, ["data.kind=ade20k"])
    with pytest.raises(ConfigError, match="data.root: folder not found"):
        load_config(None, ["data.kind=coco_stuff", f"data.root={tmp_path / 'nope'}"])


def test_missing_mask_is_a_bad_sample_naming_the_file(tmp_path):
    root = write_ade20k(tmp_path, [1, 2])
    missing = root / "annotations" / "training" / "ADE_train_00000001.png"
    missing.unlink()
    ds = ade20k(root, "train")
    with pytest.raises(BadSampleError, match=str(missing)):
        ds[1]
    skipping = ade20k(root, "train", skip_bad=True)
    assert skipping[1]["bad"] and str(missing) in skipping.bad_samples["ADE_train_00000001"]


def test_the_papers_four_dataset_union_is_one_config(tmp_path):
    voc = tmp_path / "VOC2012"
    write_voc_folder(SyntheticSegmentation("A", num_images=3, image_size=32, seed=0), voc, split="val")
    (voc / "class_names.txt").write_text("\n".join(f"voc_{k}" for k in range(21)) + "\n")
    ade, city, coco = write_ade20k(tmp_path, [0, 150]), write_cityscapes(tmp_path, [33]), write_coco_stuff(tmp_path,
                                                                                                           [181])
    specs = [f"voc:{voc}", f"coco_stuff:{coco}", f"ade20k:{ade}", f"cityscapes:{city}"]
    cfg = load_config(None, ["method=mdp", f"mdp.datasets=[{', '.join(specs)}]", "data.crop_size=32"])
    union = build_multi_dataset(cfg.mdp.datasets, cfg.data, train=False)
    space = union.label_space
    assert space.sizes == (21, 171, 150, 19) and space.num_classes == 361  # hundreds of classes, one config
    assert space.offsets == (0, 21, 192, 342)
    last = {int(union.locate(i)[0]): union[i]["mask"] for i in range(len(union))}
    assert set(last[1].unique().tolist()) == {21 + 170}                       # COCO-Stuff raw 181
    assert set(last[2].unique().tolist()) == {IGNORE_INDEX, 192 + 149}        # ADE20K "other" and class 150
    assert set(last[3].unique().tolist()) == {342 + 18}                       # Cityscapes bicycle


# ------------------------------------------------------------------------------------------ unlabelled images


def write_image_tree(root: Path) -> Path:
    """COCO-like: ``train2017/*.jpg`` of three sizes, one in a sub-folder, a PNG, and a corrupt JPEG."""
    folder = root / "train2017"
    (folder / "more").mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        rgb = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:012d}.jpg", quality=90)
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(folder / "more" / "extra.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_folder_of_unlabelled_images_feeds_two_view_pretraining(tmp_path):
    from rayseg.data.views import build_two_view_dataset

    folder = write_image_tree(tmp_path)
    cfg = load_config(None, ["method=pixcon", "data.kind=images", f"data.root={folder}", "data.skip_bad=true",
                             "views.crop_size=32"])
    two_view = build_two_view_dataset(cfg.data, cfg.views)
    assert two_view.base.ids == ["000000000000.jpg", "000000000001.jpg", "000000000002.jpg", "broken.jpg",
                                 "more/extra.png"]
    for i in (0, 1, 2, 4):
        item = two_view[i]
        assert item["image"].shape == item["view2"].shape == (3, 32, 32)  # view 1 is "image"
    assert two_view[3]["bad"] and "broken.jpg" in two_view.base.bad_samples["broken.jpg"]
    with pytest.raises(ValueError, match="data.kind: images has no masks"):
        build_segmentation_dataset(load_config(None, ["data.kind=images", f"data.root={folder}"]).data, train=True)


def test_voc_with_the_sbd_augmented_train_list(tmp_path):
    """VOC2012 + SBD as DeepLab installs it: ``SegmentationClassAug/`` and ``train_aug.txt``; ids that only SBD
    annotates read their mask from SegmentationClassAug."""
    from rayseg.data.folders import VOCSegmentationFolder

    voc = tmp_path / "VOC2012"
    write_voc_folder(SyntheticSegmentation("A", num_images=2, image_size=32, seed=0), voc)
    sbd_only = ["2008_000001", "2008_000002"]
    for i, sample in enumerate(sbd_only):
        h, w = SIZES[i]
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(voc / "JPEGImages" / f"{sample}.jpg")
        (voc / "SegmentationClassAug").mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w), 5 + i, np.uint8), mode="L").save(voc / "SegmentationClassAug" / f"{sample}.png")
    listed = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(listed + sbd_only) + "\n")
    ds = VOCSegmentationFolder(voc, split="train_aug", num_classes=21)
    assert len(ds) == 4 and ds.mask_path(sbd_only[0]).parent.name == "SegmentationClassAug"
    assert ds.mask_path(listed[0]).parent.name == "SegmentationClass"
    assert [set(ds[i]["mask"].unique().tolist()) for i in (2, 3)] == [{5}, {6}]
    assert [tuple(ds[i]["mask"].shape) for i in (2, 3)] == SIZES[:2]
