"""Pure-PyTorch versions of StyleGAN2's custom ops (spec models.md §5).

Nothing is compiled: these run on any device PyTorch supports. They evaluate the same formulas
as the official CUDA kernels (fused_bias_act, upfirdn2d), so results match up to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["fused_leaky_relu", "upfirdn2d", "make_blur_kernel"]

_SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2, scale: float = _SQRT2
) -> torch.Tensor:
    """leaky_relu(x + bias, negative_slope) * scale, with `bias` (C,) added along dim 1."""
    if bias.ndim != 1 or x.ndim < 2 or x.shape[1] != bias.shape[0]:
        raise ValueError(f"bias {tuple(bias.shape)} does not fit input {tuple(x.shape)} on dim 1")
    shape = (1, bias.shape[0]) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope=negative_slope) * scale


def make_blur_kernel(taps=(1, 3, 3, 1), gain: float = 1.0) -> torch.Tensor:
    """Separable FIR kernel outer(taps, taps) normalised to sum 1, times `gain`.  # (k, k)"""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = k[:, None] * k[None, :]
    return k2 / k2.sum() * gain


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """Upsample (zero-stuff), pad, FIR-filter (true convolution), downsample; per channel.

    x: (B, C, H, W); kernel: (kh, kw). The same up/down/pad apply to both axes; a negative pad crops.
    Output size per axis: (H * up + p0 + p1 - kh) // down + 1.
    """
    if x.ndim != 4 or kernel.ndim != 2:
        raise ValueError(f"upfirdn2d wants x (B,C,H,W) and a 2-D kernel, got {tuple(x.shape)}, {tuple(kernel.shape)}")
    if up < 1 or down < 1:
        raise ValueError("up and down must be >= 1")
    b, c, h, w = x.shape
    p0, p1 = pad
    y = x.reshape(b * c, 1, h, w)
    if up > 1:
        # sample i -> position i*up, zeros in between, length H*up
        y = y.reshape(b * c, 1, h, 1, w, 1)
        y = F.pad(y, (0, up - 1, 0, 0, 0, up - 1))
        y = y.reshape(b * c, 1, h * up, w * up)
    # F.pad treats negative amounts as cropping
    y = F.pad(y, (p0, p1, p0, p1))
    # true convolution == cross-correlation with the flipped kernel
    weight = torch.flip(kernel, (0, 1)).to(dtype=y.dtype, device=y.device)[None, None]  # (1, 1, kh, kw)
    y = F.conv2d(y, weight)
    if down > 1:
        y = y[:, :, ::down, ::down]
    return y.reshape(b, c, y.shape[2], y.shape[3])
