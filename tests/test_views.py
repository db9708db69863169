"""Two-view crops (rayseg.data.views): overlap rule, centre-crop fallback, overlap boxes under flips, in-box cells."""

import dataclasses

import pytest
import torch

from rayseg.config import ConfigError, DataSection, ViewsSection, load_config
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rayseg.data.views import (
    TwoViewDataset,
    TwoViewTransform,
    box_cell_mask,
    build_two_view_dataset,
    centre_crop,
    intersection_area,
    overlap_box,
)

# photometric augmentations off: a view is exactly the resized (and flipped) crop, normalised
GEOMETRY_ONLY = {"jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": [0.0, 0.0], "solarize_prob": [0.0, 0.0]}


def _views(**kw) -> ViewsSection:
    return dataclasses.replace(ViewsSection(), **kw)


def _unnormalise(view: torch.Tensor) -> torch.Tensor:
    return view * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def test_centre_crop_is_the_whole_image_or_the_largest_centred_crop_in_the_ratio_range():
    assert centre_crop(64, 64, (0.75, 4 / 3)) == (0, 0, 64, 64)
    assert centre_crop(40, 100, (0.75, 4 / 3)) == (0, 23, 40, 53)  # too wide: width = round(40 * 4/3)
    assert centre_crop(100, 40, (0.75, 4 / 3)) == (23, 0, 53, 40)  # too tall: height = round(40 / 0.75)


def test_intersection_area_of_hand_crops():
    assert intersection_area((0, 0, 10, 10), (5, 6, 10, 10)) == 5 * 4
    assert intersection_area((0, 0, 10, 10), (10, 0, 5, 5)) == 0  # touching edges share nothing
    assert intersection_area((0, 0, 10, 10), (20, 20, 5, 5)) == 0


def test_overlap_box_in_each_view_and_mirrored_by_a_flip():
    # image 64 px; view 1 = left 40 px columns (all rows); view 2 = columns 24..63, rows 16..47
    crop1, crop2 = (0, 0, 64, 40), (16, 24, 32, 40)
    # intersection in image pixels: x 24..40, y 16..48
    torch.testing.assert_close(overlap_box(crop1, crop2, False), torch.tensor([24 / 40, 16 / 64, 1.0, 48 / 64]))
    torch.testing.assert_close(overlap_box(crop2, crop1, False), torch.tensor([0.0, 0.0, 16 / 40, 1.0]))
    # flipped: x -> 1 - x, not re-sorted (x_left is where the image's left edge of the box went)
    torch.testing.assert_close(overlap_box(crop2, crop1, True), torch.tensor([1.0, 0.0, 1 - 16 / 40, 1.0]))


def test_box_cell_mask_uses_the_floor_rule_on_the_grid():
    boxes = torch.tensor([[0.5, 0.25, 1.0, 0.75],     # cols floor(2)=2..3, rows 1..2
                          [1.0, 0.25, 0.5, 0.75],     # the same box mirrored-orientation: same cells
                          [0.3, 0.0, 0.6, 1.0],       # cols floor(1.2)=1 .. floor(2.4)=2 exclusive -> col 1
                          [0.0, 0.0, 0.2, 0.2]])      # smaller than a cell at the origin: no cell
    mask = box_cell_mask(boxes, 4, 4)
    expected = torch.zeros(4, 4, 4, dtype=torch.bool)
    expected[0, 1:3, 2:4] = True
    expected[1, 1:3, 2:4] = True
    expected[2, :, 1] = True
    assert torch.equal(mask, expected)
    assert box_cell_mask(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 3, 5).all()  # the full view: every cell


def test_sampled_views_overlap_at_least_the_minimum_or_are_the_same_centre_crop():
    torch.manual_seed(0)
    cfg = _views(scale_min=0.05, scale_max=0.3, min_overlap=0.3)  # small crops: overlap often fails
    transform = TwoViewTransform(cfg)
    image = torch.rand(3, 64, 80)
    fallbacks = 0
    for _ in range(300):
        crop1, crop2, overlapped = transform.sample_crops(image)
        if overlapped:
            assert intersection_area(crop1, crop2) >= 0.3 * crop2[2] * crop2[3] > 0
        else:
            fallbacks += 1
            assert crop1 == crop2 == centre_crop(64, 80, (cfg.ratio_min, cfg.ratio_max))
    assert 0 < fallbacks < 300  # both branches were exercised


def test_fallback_gives_identical_views_with_full_boxes():
    cfg = _views(hflip=0.0, **GEOMETRY_ONLY)
    transform = TwoViewTransform(cfg)
    draws = iter([(0, 0, 20, 20), (40, 40, 20, 20)] * cfg.overlap_tries)  # view 2 never touches view 1
    transform._draw = lambda image: next(draws)
    out = transform(torch.rand(3, 64, 64))
    assert torch.equal(out["image"], out["view2"])
    torch.testing.assert_close(out["box1"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(out["box2"], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_boxes_cover_the_same_image_content_in_both_views_under_crops_and_flips():
    """Encode each pixel's image coordinates in its colour; the same relative point of the two boxes (in the
    boxes' own orientation) must show the same image coordinates in both views."""
    torch.manual_seed(1)
    size = 64
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    image = torch.stack([xs / size, ys / size, torch.zeros(size, size)])  # channel 0 = x, channel 1 = y
    transform = TwoViewTransform(_views(crop_size=32, scale_min=0.3, hflip=0.5, **GEOMETRY_ONLY))
    checked, flips = 0, 0
    for _ in range(40):
        out = transform(image)
        views = [_unnormalise(out["image"]), _unnormalise(out["view2"])]
        boxes = [out["box1"], out["box2"]]
        flips += int(boxes[0][0] > boxes[0][2]) + int(boxes[1][0] > boxes[1][2])
        for alpha, beta in ((0.25, 0.25), (0.5, 0.5), (0.75, 0.4)):
            seen = []
            for view, box in zip(views, boxes):
                x = box[0] + alpha * (box[2] - box[0])  # relative point of the box, in the view
                y = box[1] + beta * (box[3] - box[1])
                col = min(int(x * 32), 31)
                row = min(int(y * 32), 31)
                seen.append(view[:2, row, col])
            # one view pixel spans at most 64/32 * (1 / scale) image pixels: allow two of them
            torch.testing.assert_close(seen[0], seen[1], atol=2 * 2 / (size * 0.3**0.5), rtol=0)
            checked += 1
    assert checked == 120 and flips > 10


def test_two_view_dataset_items_batch_and_pass_bad_markers_through():
    ds = build_two_view_dataset(DataSection(num_train=4, image_size=64), _views(crop_size=48))
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert set(batch) == {"image", "view2", "box1", "box2"}
    assert batch["image"].shape == batch["view2"].shape == (4, 3, 48, 48)
    assert batch["box1"].shape == (4, 4) and batch["box1"].dtype == torch.float32
    bad = {"bad": True, "id": "x", "reason": "corrupt"}
    assert TwoViewDataset([bad], TwoViewTransform(_views()))[0] is bad


def test_views_are_photometrically_augmented_per_view():
    # identical geometry (no flip); only the photometric pipelines differ
    cfg = _views(hflip=0.0, solarize_prob=[0.0, 1.0], blur_prob=[0.0, 0.0], jitter_prob=0.0, grayscale_prob=0.0)
    transform = TwoViewTransform(cfg)
    transform._draw = lambda image: (0, 0, 64, 64)  # both views: the whole image
    image = torch.rand(3, 64, 64)
    out = transform(image)
    v1, v2 = _unnormalise(out["image"]), _unnormalise(out["view2"])
    # view 2 is solarised (x -> 1 - x above the 0.5 threshold), view 1 untouched
    torch.testing.assert_close(v2, torch.where(v1 >= 0.5, 1 - v1, v1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("override, key", [
    ("views.min_overlap=1.5", "views.min_overlap"),
    ("views.blur_prob=[0.5]", "views.blur_prob"),
    ("views.jitter=[0.4, 0.4, 0.2]", "views.jitter"),
    ("views.scale_max=1.5", "views.scale_max: must be <= 1"),
    ("views.ratio_min=2.0", "views.ratio_min/ratio_max"),
])
def test_views_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
