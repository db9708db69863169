"""The polyphase input gradient of frozen strided convolutions (rayseg.labeling.input_grad)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from rayseg.config import ExplainerSection
from rayseg.labeling import prepare_for_explanation, smoothgrad
from rayseg.labeling.input_grad import PolyphaseInputGradConv2d, polyphase_kernel, use_polyphase_input_grad


def input_grad(module: nn.Module, x: torch.Tensor, grad_out_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    y = module(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_out_seed))
    (grad,) = torch.autograd.grad(y, x, g)
    return y.detach(), grad


def test_hand_case_one_row_kernel_three_stride_two():
    # y[o] = Σ_k x[2o + k − 1]·w[k], w = (1, 10, 100), 4 inputs -> 2 outputs:
    # y0 = 10·x0 + 100·x1, y1 = x1 + 10·x2 + 100·x3, so with g = (1, 2): ∂/∂x = (10, 100 + 2, 20, 200)
    conv = nn.Conv2d(1, 1, (1, 3), stride=(1, 2), padding=(0, 1), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 1, 3))
    x = torch.randn(1, 1, 1, 4, requires_grad=True)
    y = PolyphaseInputGradConv2d(conv)(x)
    (grad,) = torch.autograd.grad(y, x, torch.tensor([1.0, 2.0]).view(1, 1, 1, 2))
    assert grad.flatten().tolist() == [10.0, 102.0, 20.0, 200.0]


def test_polyphase_kernel_places_each_tap_once():
    weight = torch.arange(1.0, 1 + 2 * 3 * 7 * 7).view(2, 3, 7, 7)
    kernel, shifts = polyphase_kernel(weight, (2, 2), (3, 3))
    # phases 0 and 1 read the gradient from offsets -2 and -1: 4 taps each, aligned in a 5-tap kernel
    assert kernel.shape == (3 * 4, 2, 5, 5) and shifts == (-2, -2)
    # every weight appears exactly once: the four phase kernels hold 16 + 12 + 12 + 9 = 49 taps
    assert sorted(kernel[kernel != 0].tolist()) == sorted(weight.flatten().tolist())


@pytest.mark.parametrize("kernel,stride,padding,size", [
    (7, 2, 3, (64, 64)),    # ResNet stem
    (3, 2, 1, (63, 64)),    # MobileNet / ShuffleNet stem, odd height
    (4, 4, 0, (16, 16)),    # ConvNeXt patchify stem
    ((5, 3), (3, 2), (1, 0), (31, 20)),  # different strides and kernels per dimension
    (7, 4, 5, (20, 21)),    # padding larger than the stride
    (1, 2, 0, (8, 8)),      # 1x1 downsampling
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_input_gradient_equals_autograd(kernel, stride, padding, size, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel, stride=stride, padding=padding, bias=True)
    x = torch.randn(2, 3, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y_ref, g_ref = input_grad(conv, x)
    y, g = input_grad(PolyphaseInputGradConv2d(conv), x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_without_gradients_it_is_the_plain_convolution_and_weights_are_frozen_copies():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    fast = PolyphaseInputGradConv2d(conv)
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(fast(x), conv(x).detach(), rtol=0, atol=0)
    assert list(fast.parameters()) == [] and fast.weight.data_ptr() != conv.weight.data_ptr()


def test_only_strided_ungrouped_image_convolutions_are_replaced():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),               # replaced
        nn.Conv2d(8, 8, 3, stride=2, padding=1),               # too many input channels: kept
        nn.Sequential(nn.Conv2d(3, 3, 3, stride=1, padding=1),  # stride 1: kept
                      nn.Conv2d(3, 3, 3, stride=2, groups=3),   # grouped: kept
                      nn.Conv2d(3, 3, 3, stride=2, dilation=2),  # dilated: kept
                      nn.Conv2d(3, 3, 2, stride=2, padding_mode="reflect", padding=1)),  # not zero padding: kept
    )
    assert use_polyphase_input_grad(model) == 1
    assert isinstance(model[0], PolyphaseInputGradConv2d)
    assert all(type(m) is nn.Conv2d for m in [model[1], *model[2]])
    with pytest.raises(ValueError, match="strided Conv2d"):
        PolyphaseInputGradConv2d(model[2][0])


def test_prepared_torchvision_resnet_gives_the_same_smoothgrad_maps():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([0, 3])
    noise = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = ExplainerSection(channels_last=False, fold_batchnorm=False)
    prepared = prepare_for_explanation(model, cfg)
    assert isinstance(prepared.conv1, PolyphaseInputGradConv2d) and isinstance(model.conv1, nn.Conv2d)
    reference = smoothgrad(model, x, targets, cfg, noise=noise)
    torch.testing.assert_close(smoothgrad(prepared, x, targets, cfg, noise=noise), reference, rtol=1e-4, atol=1e-7)
    assert isinstance(prepare_for_explanation(model, dataclasses.replace(cfg, polyphase_stem=False)).conv1, nn.Conv2d)
    assert isinstance(prepare_for_explanation(model, dataclasses.replace(cfg, method="gradcam")).conv1, nn.Conv2d)
