"""label.geometry: how an image of any size becomes the S x S explainer input, and how the decile map goes back
onto the image (crop: unexplained margins are ignore; pad: the padding is dropped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rayseg.data.pseudo_labels import PSSLDataset
from rayseg.ignore import IGNORE_INDEX
from rayseg.labeling import shards
from rayseg.labeling.geometry import NO_DECILE, deciles_on_image, fit_image, placement


def test_placement_of_a_landscape_image():
    assert placement(30, 60, 10, "square") == (10, 10, 0, 0)
    assert placement(30, 60, 10, "crop") == (10, 20, 0, -5)    # shorter side to 10, 5 columns cut each side
    assert placement(30, 60, 10, "pad") == (5, 10, 2, 0)       # longer side to 10, centred: rows 2..6
    assert placement(60, 30, 10, "crop") == (20, 10, -5, 0)    # portrait
    with pytest.raises(ValueError, match="geometry must be one of"):
        placement(30, 60, 10, "stretch")


def test_fit_image_keeps_the_aspect_and_fills_the_padding_with_the_mean_colour():
    rgb = Image.fromarray(np.full((30, 60, 3), 200, np.uint8))
    for geometry in ("square", "crop", "pad"):
        assert fit_image(rgb, 10, geometry).size == (10, 10)
    padded = np.asarray(fit_image(rgb, 10, "pad"))
    assert (padded[2:7] == 200).all() and (padded[:2] == [124, 116, 104]).all() and (padded[7:] == [124, 116,
                                                                                                    104]).all()


def test_deciles_go_back_onto_the_image():
    deciles = np.arange(100, dtype=np.uint8).reshape(10, 10) % 10
    crop = deciles_on_image(deciles, 30, 60, "crop")             # the 10 x 20 resized image, then x3
    assert crop.shape == (30, 60)
    assert (crop[:, :15] == NO_DECILE).all() and (crop[:, 45:] == NO_DECILE).all()  # the cut-off columns
    np.testing.assert_array_equal(crop[::3, 15:45:3], deciles)
    pad = deciles_on_image(deciles, 30, 60, "pad")               # rows 2..6 of the input hold the image
    assert pad.shape == (30, 60) and NO_DECILE not in pad
    np.testing.assert_array_equal(pad[::6, ::6], deciles[2:7])
    square = deciles_on_image(deciles, 20, 20, "square")
    np.testing.assert_array_equal(square[::2, ::2], deciles)


def test_the_pssl_reader_ignores_what_a_crop_did_not_explain(tmp_path):
    """A 20 x 40 image explained with the crop geometry at 10 x 10: its left and right quarters get no label."""
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(images / "a.png")
    deciles = np.full((10, 10), 9, np.uint8)
    deciles[:, 5:] = 0
    row = {"id": "cat/a.png", "content_hash": "x", "class_index": 0, "height": 10, "width": 10, "status": "ok",
           "deciles_png": shards.encode_deciles(deciles)}
    version = tmp_path / "labels" / "v"
    shards.commit_shard(str(version), 0, ["cat/a.png"], [row], "v", [], False, geometry="crop")
    ds = PSSLDataset(version, tmp_path / "images", num_classes=3)
    assert ds.geometry == "crop"
    mask = ds[0]["mask"]
    assert mask.shape == (20, 40)
    assert (mask[:, :10] == IGNORE_INDEX).all() and (mask[:, 30:] == IGNORE_INDEX).all()
    assert (mask[:, 10:20] == 0).all() and (mask[:, 20:30] == 3).all()  # class 0 | background K = 3
    assert torch.equal(mask.unique(), torch.tensor([IGNORE_INDEX, 0, 3]))
