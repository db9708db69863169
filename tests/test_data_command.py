"""`rayseg data synthetic`: the built-in benchmark on disk, read back by the readers users point rayseg at."""

from __future__ import annotations

import numpy as np

from rayseg.cli import main
from rayseg.config import load_config
from rayseg.data import read_segmentation_split
from rayseg.labeling.pipeline import list_images


def test_synthetic_data_is_an_image_folder_and_voc_trees(tmp_path, capsys):
    out = tmp_path / "synthetic"
    args = ["data", "synthetic", "--out", str(out), "--num-images", "24", "--num-val", "4", "--image-size", "32",
            "--domains", "A,C"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"rayseg finetune data.kind=voc data.root={out / 'voc_A'} data.num_classes=7" in printed

    ids, class_of = list_images(out / "classification")
    assert len(ids) == 24 and len(set(class_of.values())) > 1 and max(class_of.values()) < 12
    assert all((out / "classification_masks" / i).is_file() for i in ids)  # label.true_masks

    for domain, classes in (("A", 7), ("C", 9)):
        cfg = load_config(None, ["data.kind=voc", f"data.root={out / f'voc_{domain}'}", f"data.num_classes={classes}"])
        train = read_segmentation_split(cfg.data, train=True, transform=None)
        val = read_segmentation_split(cfg.data, train=False, transform=None)
        assert (len(train), len(val)) == (24, 4)
        mask = val[0]["mask"].numpy()
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= set(range(classes))
    assert not (out / "voc_B").exists()

    assert main(args) == 0  # idempotent: nothing listed twice
    assert len((out / "voc_A" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 24
    assert main([*args[:-1], "A,Z"]) == 2
    assert capsys.readouterr().err.startswith("error: --domains: unknown domain(s) Z")
