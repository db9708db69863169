"""Faster input gradients of frozen strided convolutions, for explaining (the stem of a CNN).

SmoothGrad needs ``∂f/∂x`` of the image. The last step of that backward pass is the input gradient of the stem,
a strided convolution from 3 channels (ResNet: 7×7, stride 2, 3 → 64). oneDNN computes that input gradient as a
"backward-data" convolution with only 3 output channels, which on CPU takes about 3.5x the forward pass of the
same layer and about 15% of a ResNet-18's whole SmoothGrad step at 64×64.

The same gradient is one ordinary stride-1 convolution followed by a pixel shuffle (polyphase decomposition).
In one dimension, for ``y[o] = Σ_k x[s·o + k − p] · W[k]`` and an input position ``i = s·m + a`` of phase
``a ∈ [0, s)``::

    ∂L/∂x[s·m + a] = Σ_t g[m + c_a − t] · W[s·t + r_a],      r_a = (a + p) mod s,  c_a = ⌊(a + p) / s⌋

with ``g = ∂L/∂y``: a correlation of ``g`` with the taps ``W[r_a], W[s + r_a], ...`` reversed. All ``s`` phases
(``s_h · s_w`` in 2-D) become output channels of one convolution with ``C_in · s_h · s_w`` outputs, whose
kernel is built once from ``W`` (:func:`polyphase_kernel`); a reshape interleaves the phases back into the
``H × W`` grid. Same arithmetic, summed in another order: equal to autograd within float tolerance.

:func:`use_polyphase_input_grad` swaps such modules into a model prepared for explanation. The weights are
frozen (parameter gradients are never computed), so only the input gradient is implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PolyphaseInputGradConv2d", "polyphase_kernel", "use_polyphase_input_grad"]


def _phase_taps(kernel: int, stride: int, padding: int) -> tuple[list[tuple[int, int, int]], int, int]:
    """One dimension: ``(taps, d_min, L)``. Each tap ``(a, q, k)`` says that output phase ``a`` reads weight tap
    ``k`` at position ``q`` of a length-``L`` correlation kernel applied to ``g`` shifted by ``d_min``:
    ``∂L/∂x[s·m + a] = Σ_q g[m + d_min + q] · W[k(a, q)]``."""
    t_len = math.ceil(kernel / stride)
    offsets = [(a + padding) // stride - t_len + 1 for a in range(stride)]  # d_a = c_a − T + 1
    d_min = min(offsets)
    length = t_len + max(offsets) - d_min
    taps = []
    for a in range(stride):
        r = (a + padding) % stride
        for t in range(t_len):
            k = stride * t + r
            if k < kernel:
                taps.append((a, t_len - 1 - t + offsets[a] - d_min, k))
    return taps, d_min, length


def polyphase_kernel(weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """The stride-1 kernel ``[C_in·s_h·s_w, C_out, L_h, L_w]`` whose correlation with ``∂L/∂y`` gives the input
    gradient of ``conv2d(x, weight, stride, padding)`` phase by phase (output channel ``c·s_h·s_w + a·s_w + b``
    holds phase ``(a, b)`` of input channel ``c``), and the shifts ``(d_min_h, d_min_w)``."""
    c_out, c_in, k_h, k_w = weight.shape
    taps_h, d_h, len_h = _phase_taps(k_h, stride[0], padding[0])
    taps_w, d_w, len_w = _phase_taps(k_w, stride[1], padding[1])
    kernel = weight.new_zeros((c_in, stride[0], stride[1], c_out, len_h, len_w))
    w = weight.detach().permute(1, 0, 2, 3)  # [C_in, C_out, k_h, k_w]
    for a, q_h, k_row in taps_h:
        for b, q_w, k_col in taps_w:
            kernel[:, a, b, :, q_h, q_w] = w[:, :, k_row, k_col]
    return kernel.reshape(c_in * stride[0] * stride[1], c_out, len_h, len_w), (d_h, d_w)


class _PolyphaseConv2dFunction(torch.autograd.Function):
    """``conv2d`` forward; backward: the input gradient only, as one stride-1 convolution plus interleaving."""

    @staticmethod
    def forward(ctx, x: Tensor, module: PolyphaseInputGradConv2d) -> Tensor:
        ctx.module = module
        ctx.input_hw = tuple(x.shape[-2:])
        return F.conv2d(x, module.weight, module.bias, module.stride, module.padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        m = ctx.module
        (s_h, s_w), (d_h, d_w) = m.stride, m.shifts
        len_h, len_w = m.grad_kernel.shape[-2:]
        n_h, n_w = ctx.input_hw
        m_h, m_w = math.ceil(n_h / s_h), math.ceil(n_w / s_w)  # positions per phase
        h_out, w_out = grad_out.shape[-2:]
        pad_top, pad_left = max(0, -d_h), max(0, -d_w)
        pad_bottom = max(0, m_h + d_h + len_h - 1 - h_out)
        pad_right = max(0, m_w + d_w + len_w - 1 - w_out)
        g = F.pad(grad_out, (pad_left, pad_right, pad_top, pad_bottom))
        phases = F.conv2d(g, m.grad_kernel.to(grad_out.dtype))
        top, left = d_h + pad_top, d_w + pad_left
        phases = phases[:, :, top:top + m_h, left:left + m_w]
        b, c_in = grad_out.shape[0], m.in_channels
        grad_x = phases.reshape(b, c_in, s_h, s_w, m_h, m_w).permute(0, 1, 4, 2, 5, 3)
        grad_x = grad_x.reshape(b, c_in, m_h * s_h, m_w * s_w)[:, :, :n_h, :n_w]
        return grad_x, None


class PolyphaseInputGradConv2d(nn.Module):
    """A frozen copy of a strided ``nn.Conv2d`` (groups 1, dilation 1, zero padding) whose input gradient is
    computed by polyphase decomposition (module docstring). The forward pass is the original convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not can_use_polyphase(conv, max_in_channels=conv.in_channels):
            raise ValueError(f"not a strided Conv2d with groups=1, dilation=1 and zero padding: {conv}")
        self.in_channels = conv.in_channels
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        kernel, self.shifts = polyphase_kernel(self.weight, self.stride, self.padding)
        self.register_buffer("grad_kernel", kernel)

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return _PolyphaseConv2dFunction.apply(x, self)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[-2:])}, " \
               f"stride={self.stride}, padding={self.padding}"


def can_use_polyphase(module: nn.Module, max_in_channels: int = 4) -> bool:
    """True for an ``nn.Conv2d`` with stride > 1, groups 1, dilation 1, zero padding given as numbers and at
    most ``max_in_channels`` input channels (image-facing stems, where the gain is)."""
    return (isinstance(module, nn.Conv2d) and max(module.stride) > 1 and module.groups == 1
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and module.in_channels <= max_in_channels)


def use_polyphase_input_grad(model: nn.Module, max_in_channels: int = 4) -> int:
    """Replace, in place, every strided ``Conv2d`` of ``model`` with at most ``max_in_channels`` input channels
    by a :class:`PolyphaseInputGradConv2d`. For frozen models only (no weight gradients). Returns the count."""
    targets = [name for name, m in model.named_modules() if can_use_polyphase(m, max_in_channels)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PolyphaseInputGradConv2d(getattr(parent, child)))
    return len(targets)
