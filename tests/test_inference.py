"""Inference modes of the evaluation: sliding windows, shorter-side resize and flip averaging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayseg.config import ConfigError, EvalSection, load_config
from rayseg.engine.inference import infer, slide, window_starts


def pointwise_model(k: int = 5) -> nn.Module:
    """A 1x1 convolution: each pixel's output depends on that pixel only, so every mode must agree exactly."""
    torch.manual_seed(0)
    return nn.Conv2d(3, k, 1).eval()


@pytest.mark.parametrize("size, crop, stride, expected", [
    (100, 40, 30, [0, 30, 60]),    # the last window ends at 100
    (100, 40, 40, [0, 40, 60]),
    (40, 40, 20, [0]),
    (25, 40, 20, [0]),             # smaller than the window: one window, the whole side
    (1024, 512, 341, [0, 341, 512]),
])
def test_window_starts_cover_every_pixel_without_leaving_the_image(size, crop, stride, expected):
    starts = window_starts(size, crop, stride)
    assert starts == expected
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s:s + crop] = True
    assert covered.all() and max(starts) + min(crop, size) <= size


def test_slide_equals_whole_image_for_a_pointwise_model():
    model, image = pointwise_model(), torch.randn(2, 3, 37, 53)
    whole = infer(model, image, EvalSection())
    windows = infer(model, image, EvalSection(mode="slide", crop=16, stride=11))
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-6)
    assert whole.shape == (2, 5, 37, 53)
    torch.testing.assert_close(whole.sum(1), torch.ones(2, 37, 53))


def test_slide_averages_the_overlaps():
    """A model that outputs its window's mean intensity: each pixel gets the mean over the windows covering it."""

    class WindowMean(nn.Module):
        def forward(self, x):
            logit = x.mean(dim=(1, 2, 3), keepdim=True).log()  # softmax over [log m, 0] = m / (m + 1)
            return torch.cat([logit, torch.zeros_like(logit)], 1).expand(-1, -1, *x.shape[-2:])

    image = torch.ones(1, 3, 1, 6)
    image[..., 3:] = 3.0  # windows of 4 every 2: [0:4] = 1 1 1 3 (mean 1.5), [2:6] = 1 3 3 3 (mean 2.5)
    probs = slide(WindowMean(), image, crop=4, stride=2)[0, 0, 0]
    p = [1.5 / 2.5, 2.5 / 3.5]
    torch.testing.assert_close(probs, torch.tensor([p[0], p[0], (p[0] + p[1]) / 2, (p[0] + p[1]) / 2, p[1], p[1]]))


def test_flip_and_shorter_side_resize_return_probabilities_at_the_image_size():
    model, image = pointwise_model(), torch.randn(1, 3, 30, 45)
    whole = infer(model, image, EvalSection())
    torch.testing.assert_close(infer(model, image, EvalSection(flip=True)), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(infer(model, image, EvalSection(short_side=30)), whole)  # its own size: unchanged
    resized = infer(model, image, EvalSection(short_side=60, flip=True))
    assert resized.shape == (1, 5, 30, 45) and not torch.allclose(resized, whole)
    torch.testing.assert_close(resized.sum(1), torch.ones(1, 30, 45))


def test_eval_section_rules():
    with pytest.raises(ConfigError, match=r"eval.stride: must be <= eval.crop \(64\), got 65"):
        load_config(None, ["eval.crop=64", "eval.stride=65"])
    with pytest.raises(ConfigError, match="eval.mode: 'tiles' is not one of whole, slide"):
        load_config(None, ["eval.mode=tiles"])
