"""The pure-PyTorch ops against independent, explicit formulations (numpy loops, per-sample conv2d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekeys.models.ops import fused_leaky_relu, make_blur_kernel, upfirdn2d
from facekeys.models.stylegan2 import ModulatedConv2d, ToRGB

BLUR4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * 4.0  # K * 4, the generator's two uses


def ref_upfirdn_1ch(x: np.ndarray, k: np.ndarray, up: int, down: int, p0: int, p1: int) -> np.ndarray:
    """Explicit loops: zero-stuff, pad (negative = crop), true convolution ('valid'), keep every down-th."""
    h, w = x.shape
    kh, kw = k.shape
    n_h, n_w = h * up + p0 + p1, w * up + p0 + p1
    s = np.zeros((n_h, n_w))
    for i in range(h):
        for j in range(w):
            a, b = i * up + p0, j * up + p0
            if 0 <= a < n_h and 0 <= b < n_w:
                s[a, b] = x[i, j]
    out = np.zeros((n_h - kh + 1, n_w - kw + 1))
    for o1 in range(out.shape[0]):
        for o2 in range(out.shape[1]):
            acc = 0.0
            for u in range(kh):
                for v in range(kw):
                    acc += s[o1 + u, o2 + v] * k[kh - 1 - u, kw - 1 - v]
            out[o1, o2] = acc
    return out[::down, ::down]


def ref_upfirdn(x: torch.Tensor, k: np.ndarray, up: int, down: int, pad) -> torch.Tensor:
    xs = x.detach().double().numpy()
    out = [[ref_upfirdn_1ch(xs[b, c], k, up, down, *pad) for c in range(xs.shape[1])] for b in range(xs.shape[0])]
    return torch.from_numpy(np.array(out))


@pytest.mark.parametrize(
    "up,down,pad,kernel",
    [
        (2, 1, (2, 1), "blur"),  # ToRGB skip upsample
        (1, 1, (1, 1), "blur"),  # blur after the transposed conv
        (2, 1, (2, 1), "random"),  # asymmetric kernel: catches a missing flip
        (1, 1, (1, 1), "random"),
        (1, 2, (1, 1), "random"),
        (2, 1, (-1, 2), "random"),  # negative pad crops
    ],
)
def test_upfirdn2d_matches_explicit_loops(up, down, pad, kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g)
    k = BLUR4 if kernel == "blur" else torch.randn(4, 4, generator=g).double().numpy()
    got = upfirdn2d(x, torch.tensor(k, dtype=torch.float32), up=up, down=down, pad=pad)
    want = ref_upfirdn(x, k, up, down, pad)
    assert got.shape == want.shape
    assert got.shape[2] == (5 * up + pad[0] + pad[1] - 4) // down + 1  # output size formula of spec §5
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_blur_kernel_constant():
    k = make_blur_kernel((1, 3, 3, 1), 4.0)
    want = torch.tensor([[1, 3, 3, 1], [3, 9, 9, 3], [3, 9, 9, 3], [1, 3, 3, 1]], dtype=torch.float32) / 16
    assert torch.equal(k, want)


@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3, 3), (1, 5, 2, 2, 2)])
def test_fused_leaky_relu_definition(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    b = torch.randn(5, generator=g)
    y = x + b.view((1, 5) + (1,) * (x.ndim - 2))
    want = torch.where(y > 0, y, 0.2 * y) * math.sqrt(2.0)
    assert torch.equal(fused_leaky_relu(x, b), want)


def test_fused_leaky_relu_rejects_wrong_bias():
    with pytest.raises(ValueError):
        fused_leaky_relu(torch.zeros(2, 4, 3, 3), torch.zeros(5))


def _randomise_(m: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) + (1.0 if name.endswith("modulation.bias") else 0.0))


def _hand_weight(conv: ModulatedConv2d, style_b: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """Per-sample weight (out, in, k, k) from the raw parameters, following spec §3.2 and §3.6 literally."""
    mod_w, mod_b = conv.modulation.weight, conv.modulation.bias
    s = style_b @ (mod_w / math.sqrt(mod_w.shape[1])).T + mod_b  # (in,)
    weight = conv.weight[0]  # (out, in, k, k)
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    w = weight / math.sqrt(fan_in) * s[None, :, None, None]
    if demodulate:
        w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3)) + 1e-8)[:, None, None, None]
    return w


def test_modulated_conv_matches_per_sample_loop():
    conv = ModulatedConv2d(5, 4, 3, style_dim=8)
    _randomise_(conv, 2)
    g = torch.Generator().manual_seed(3)
    x, style = torch.randn(3, 5, 6, 6, generator=g), torch.randn(3, 8, generator=g)
    with torch.no_grad():
        got = conv(x, style)
        want = torch.cat([F.conv2d(x[b : b + 1], _hand_weight(conv, style[b], True), padding=1) for b in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_upsampling_modulated_conv_matches_transposed_conv_plus_blur():
    conv = ModulatedConv2d(5, 4, 3, style_dim=8, upsample=True)
    _randomise_(conv, 4)
    g = torch.Generator().manual_seed(5)
    x, style = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 8, generator=g)
    with torch.no_grad():
        got = conv(x, style)
        outs = []
        for b in range(2):
            w = _hand_weight(conv, style[b], True)  # (out, in, 3, 3), used as (in, out, 3, 3), no flip
            t = F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2)  # (1, out, 9, 9)
            outs.append(ref_upfirdn(t, BLUR4, 1, 1, (1, 1)))
        want = torch.cat(outs).float()
    assert got.shape == (2, 4, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_to_rgb_matches_hand_formula():
    rgb = ToRGB(6, style_dim=8, upsample=True)
    _randomise_(rgb, 6)
    g = torch.Generator().manual_seed(7)
    x, style, skip = torch.randn(2, 6, 8, 8, generator=g), torch.randn(2, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    with torch.no_grad():
        got = rgb(x, style, skip)
        want = []
        for b in range(2):
            w = _hand_weight(rgb.conv, style[b], demodulate=False)  # no demodulation for ToRGB
            y = F.conv2d(x[b : b + 1], w) + rgb.bias
            want.append(y + ref_upfirdn(skip[b : b + 1], BLUR4, 2, 1, (2, 1)).float())
        want = torch.cat(want)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
