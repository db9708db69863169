"""Joint image/mask transforms: geometric alignment, padding, nearest masks, normalisation."""

import pytest
import torch
from torchvision import tv_tensors

from rayseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    RandomScale,
    SegEvalTransform,
    SegTrainTransform,
    to_float_pair,
)
from rayseg.ignore import IGNORE_INDEX

H, W, BLOCK = 96, 80, 8  # non-square, so a swapped H/W would show


def coordinate_pair() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """8x8 blocks; the mask holds the block id by * 10 + bx, the image encodes (bx, by) in its R and G channels."""
    by = torch.arange(H)[:, None].expand(H, W) // BLOCK
    bx = torch.arange(W)[None, :].expand(H, W) // BLOCK
    image = torch.stack([bx * 20 + 10, by * 20 + 10, torch.full_like(bx, 128)]).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(by * 10 + bx)


def decode_block_ids(image: torch.Tensor) -> torch.Tensor:
    """Inverse of coordinate_pair's colour code, for a float image in [0, 1]."""
    rgb = image * 255
    return ((rgb[1] - 10) / 20).round().long() * 10 + ((rgb[0] - 10) / 20).round().long()


def misaligned_fraction(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of block-interior labelled pixels whose mask id differs from the id decoded from the image.

    Interior = the 3x3 neighbourhood has one label, so bilinear blur at block edges does not count.
    """
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1), value=-1)
    window = torch.nn.functional.unfold(padded, 3).view(9, *mask.shape)
    interior = (window == mask.float()).all(0) & (mask != IGNORE_INDEX)
    assert interior.sum() > 100
    return (decode_block_ids(image)[interior] != mask[interior]).float().mean().item()


def geometry_only(**kw) -> SegTrainTransform:
    return SegTrainTransform(crop_size=64, color_jitter=0.0, mean=None, std=None, **kw)


def test_image_and_mask_stay_aligned_over_random_seeds():
    transform = geometry_only(scale_range=(0.75, 1.5))
    image, mask = coordinate_pair()
    flipped, padded = 0, 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
        assert misaligned_fraction(out_image, out_mask) == 0.0
        valid = out_mask != IGNORE_INDEX
        cols = torch.where(valid.any(0))[0]
        row = out_mask[valid.any(1).nonzero()[0, 0]]  # first labelled row
        flipped += int(row[cols[0]] % 10 > row[cols[-1]] % 10)
        padded += int((~valid).any())
    assert 4 <= flipped <= 16 and padded > 0  # both flip states and padding were exercised


def test_alignment_check_detects_a_misaligned_pipeline():
    torch.manual_seed(0)
    out_image, out_mask = geometry_only(scale_range=(1.0, 1.0), hflip_prob=0.0)(*coordinate_pair())
    assert misaligned_fraction(out_image, out_mask) == 0.0
    assert misaligned_fraction(out_image.flip(-1), out_mask) > 0.5  # image flipped, mask not


def test_padding_fills_ignore_in_mask_and_zero_in_image():
    image = tv_tensors.Image(torch.randint(1, 256, (3, 20, 30), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 5, (20, 30)))
    transform = geometry_only(scale_range=(1.0, 1.0))
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        pad = out_mask == IGNORE_INDEX
        assert pad.sum() == 64 * 64 - 20 * 30  # scale 1: every input pixel is kept once
        assert (out_image[:, pad] == 0).all() and (out_image[:, ~pad] > 0).all()


def test_masks_are_resized_nearest_without_new_labels():
    values = torch.tensor([0, 3, 17, 42])
    mask = tv_tensors.Mask(values[torch.randint(0, 4, (50, 70))])
    image = tv_tensors.Image(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))
    transform = SegTrainTransform(crop_size=48)  # defaults: scale 0.5-2, jitter, normalise
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
        assert out_image.dtype == torch.float32 and out_image.shape == (3, 48, 48)
        assert out_mask.dtype == torch.int64 and out_mask.shape == (48, 48)
        assert set(out_mask.unique().tolist()) <= {0, 3, 17, 42, IGNORE_INDEX}


def test_random_scale_relative_to_input_or_base_size():
    image, mask = coordinate_pair()  # 96 x 80
    for _ in range(5):
        out_image, out_mask = RandomScale((0.5, 2.0))(image, mask)
        h, w = out_image.shape[-2:]
        assert out_mask.shape == (h, w) and 48 <= h <= 192 and abs(h / w - 96 / 80) < 0.05
    out_image, out_mask = RandomScale((0.5, 0.5), base_size=40)(image, mask)
    assert out_image.shape[-2:] == out_mask.shape == (24, 20)  # shorter side -> 0.5 * 40


def test_color_jitter_changes_the_image_only():
    image, mask = coordinate_pair()
    transform = SegTrainTransform(crop_size=64, scale_range=(1.0, 1.0), hflip_prob=0.0, color_jitter=0.4, mean=None, std=None)
    torch.manual_seed(0)
    out_image, out_mask = transform(image[:, :64, :64], mask[:64, :64])
    assert torch.equal(out_mask, mask[:64, :64].as_subclass(torch.Tensor))
    assert (out_image - image[:, :64, :64] / 255).abs().mean() > 0.01


def test_normalisation_and_eval_transforms():
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    image = tv_tensors.Image(torch.full((3, 64, 96), 128, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 3, (64, 96)))
    out_image, out_mask = SegEvalTransform()(image, mask)
    assert torch.allclose(out_image, (128 / 255 - mean) / std * torch.ones(3, 64, 96), atol=1e-6)
    assert torch.equal(out_mask, mask.as_subclass(torch.Tensor))

    out_image, out_mask = SegEvalTransform(size=32)(image, mask)  # shorter side -> 32
    assert out_image.shape == (3, 32, 48) and out_mask.shape == (32, 48)
    assert set(out_mask.unique().tolist()) <= {0, 1, 2}

    out = ImageTransform(size=24)(image)
    assert type(out) is torch.Tensor and out.shape == (3, 24, 24)
    assert torch.allclose(out[:, 0, 0], ((128 / 255 - mean) / std).flatten(), atol=1e-5)
    assert ImageTransform(mean=None)(image).max().item() == pytest.approx(128 / 255)


def test_to_float_pair():
    image = torch.tensor([[[0, 51, 255]]], dtype=torch.uint8).expand(3, 1, 3)
    out_image, out_mask = to_float_pair(tv_tensors.Image(image), tv_tensors.Mask(torch.tensor([[1, 2, IGNORE_INDEX]])))
    assert type(out_image) is torch.Tensor and out_image.dtype == torch.float32
    assert torch.allclose(out_image[0, 0], torch.tensor([0.0, 0.2, 1.0]))
    assert type(out_mask) is torch.Tensor and out_mask.dtype == torch.int64
    assert out_mask.tolist() == [[1, 2, IGNORE_INDEX]]
