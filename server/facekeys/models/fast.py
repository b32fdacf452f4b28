"""Fast inference paths: the StyleGAN2 generator and the pSp encoder (same parameters, other order of operations).

`FastSynthesis(generator)` computes what `Generator.forward` computes with the stored noise, re-arranged for
speed. It keeps derived constants (each modulated conv's `scale * W` in the layout its conv reads, `sum_k W^2`, the
noise addends expanded per channel), rebuilt whenever a parameter or buffer of the generator changes. Differences
from the reference are float32 rounding only, every step exact in real arithmetic:

- per sample, the modulation and the demodulation are folded into one ordinary conv weight
  (`scale * W * s[in] * d[out]`, d from `sum_k W^2` and `s^2`), so every conv is a plain (groups=1) conv; the
  activation's bias rides in the conv's bias, the noise in oneDNN's fused add (CPU);
- activations are channels_last (oneDNN's fast layout on CPU);
- the leaky ReLU's gain sqrt(2) is not applied to the activations but to the next weights that read them;
- the upsampling conv's blur (outer([1,3,3,1],[1,3,3,1]) / 64 x 4, the constant FIR of every official checkpoint) is
  a depthwise conv with the noise add fused; its gain 4 goes into the conv weight. A generator whose blur kernels
  are not that binomial is refused (`supports`);
- the ToRGB skip upsampling (upfirdn2d up=2, pad (2, 1)) is a depthwise stride-2 transposed conv.

A batch runs sample by sample through the synthesis layers: the per-sample weights are ordinary convs, and the
activations of one 1024x1024 face are what the memory holds at a time. Off CPU (or without oneDNN) the same maths
runs on plain `F.conv2d` / `F.conv_transpose2d`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import make_blur_kernel
from .psp import BottleneckIRSE, GradualStyleEncoder
from .stylegan2 import Generator, ModulatedConv2d, StyledConv, ToRGB

__all__ = ["FastEncoder", "FastSynthesis", "supports"]

_SQRT2 = math.sqrt(2.0)
_BINOMIAL = (1, 3, 3, 1)


def supports(generator: Generator) -> bool:
    """True when every blur buffer is the binomial [1,3,3,1] kernel with the gains of the official layout."""
    if tuple(generator.config.blur_kernel) != _BINOMIAL:
        return False
    blur = make_blur_kernel(_BINOMIAL)  # (4, 4), sum 1
    for name, buf in generator.named_buffers():
        if name.endswith(".blur.kernel") or name.endswith(".upsample.kernel"):
            if buf.shape != (4, 4) or not torch.allclose(buf.detach().float().cpu(), blur * 4.0, rtol=1e-6, atol=0):
                return False
    return True


class FastSynthesis:
    """W+ (B, n_latent, style_dim) -> images (B, 3, size, size) with `generator`'s stored noise."""

    def __init__(self, generator: Generator):
        if not supports(generator):
            raise ValueError("FastSynthesis needs the binomial [1,3,3,1] blur kernels of the official generator")
        self.generator = generator
        self._cache: tuple[tuple, list[_Prepared], list[torch.Tensor]] | None = None

    def _constants(self) -> tuple[list[_Prepared], list[torch.Tensor]]:
        """Prepared weights and per-channel noise addends, rebuilt whenever a parameter or buffer changes."""
        g = self.generator
        tensors = [*g.parameters(), *g.buffers()]
        stamp = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = None  # drop the old copies first
            ups = {id(g.convs[i].conv) for i in range(0, len(g.convs), 2)}
            prep = [_Prepared(c, transposed=id(c) in ups) for c in _modulated(g)]
            noise = [_noise_term(l, n) for l, n in zip(_styled_convs(g), g.stored_noise())]
            self._cache = (stamp, prep, noise)
        return self._cache[1], self._cache[2]

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        g = self.generator
        cfg = g.config
        if latent.ndim != 3 or latent.shape[1:] != (cfg.n_latent, cfg.style_dim):
            raise ValueError(f"latent must be (B, {cfg.n_latent}, {cfg.style_dim}), got {tuple(latent.shape)}")
        with torch.inference_mode():
            styles = _all_styles(g, latent)  # per modulated conv: (B, in)
            prep, noise = self._constants()
            images = [_synthesize_one(g, prep, [s[b : b + 1] for s in styles], noise) for b in range(latent.shape[0])]
        return torch.cat(images, 0).contiguous()  # (B, 3, size, size)


def _modulated(g: Generator) -> list[ModulatedConv2d]:
    """The modulated convs in W+ row order: row i styles the i-th entry."""
    mods = [g.conv1.conv, g.to_rgb1.conv]
    for k, to_rgb in enumerate(g.to_rgbs):
        mods += [g.convs[2 * k].conv, g.convs[2 * k + 1].conv, to_rgb.conv]
    return mods


def _styled_convs(g: Generator) -> list[StyledConv]:
    return [g.conv1, *g.convs]


def _latent_rows(g: Generator) -> list[int]:
    """W+ row for each entry of `_modulated` (the reference reuses row i+2 for ToRGB and the next up-conv)."""
    rows = [0, 1]
    i = 1
    for _ in g.to_rgbs:
        rows += [i, i + 1, i + 2]
        i += 2
    return rows


def _all_styles(g: Generator, latent: torch.Tensor) -> list[torch.Tensor]:
    return [conv.modulation(latent[:, row]) for conv, row in zip(_modulated(g), _latent_rows(g))]  # (B, in) each


def _noise_term(layer: StyledConv, noise: torch.Tensor) -> torch.Tensor:
    """weight * noise expanded to every channel, channels_last: an addend the fused conv reads."""
    c = layer.conv.out_channel
    n = layer.noise.weight * noise  # (1, 1, H, W)
    return n.expand(1, c, n.shape[2], n.shape[3]).contiguous(memory_format=torch.channels_last)  # (1, C, H, W)


def _fused(x: torch.Tensor) -> bool:
    """oneDNN's fused-post-op convolutions (the ones torch.compile's CPU backend emits) apply."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _conv(x, w, bias, padding: int, groups: int = 1, addend: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(x, w, bias) (+ addend), stride 1; on CPU one oneDNN call with the add fused."""
    if _fused(x):
        p = [padding, padding]
        if addend is None:
            return torch.ops.mkldnn._convolution_pointwise(x, w, bias, p, [1, 1], [1, 1], groups, "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, addend, w, bias, p, [1, 1], [1, 1], groups, "add", None, None, [], None
        )
    y = F.conv2d(x, w, bias, padding=padding, groups=groups)
    return y if addend is None else y.add_(addend)


def _conv_t(x, w, padding: int, groups: int = 1) -> torch.Tensor:
    """conv_transpose2d(x, w), stride 2; w (in, out/groups, k, k)."""
    if _fused(x):
        p = [padding, padding]
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, w, None, p, [0, 0], [2, 2], [1, 1], groups, "none", [], ""
        )
    return F.conv_transpose2d(x, w, stride=2, padding=padding, groups=groups)


class _Prepared:
    """One modulated conv's constant parts: scale * W in the layout its conv reads, and sum_k (scale * W)^2."""

    def __init__(self, conv: ModulatedConv2d, transposed: bool):
        w = conv.weight[0] * conv.scale  # (out, in, k, k)
        self.q = w.pow(2).sum(dim=(2, 3)) if conv.demodulate else None  # (out, in)
        self.transposed = transposed
        w = w.transpose(0, 1) if transposed else w  # (in, out, k, k) for a transposed conv, no flip
        self.w = w.contiguous(memory_format=torch.channels_last)

    def weight(self, s: torch.Tensor, gain: float) -> torch.Tensor:
        """The plain conv weight for one sample with style s (1, in) whose input activations carry `gain`."""
        m = s[0] * gain  # (in,)
        if self.q is not None:
            d = torch.rsqrt(self.q @ s[0].pow(2) + 1e-8)  # (out,)
            m = d[:, None] * m[None, :]  # (out, in)
        else:
            m = m[None, :].expand(self.w.shape[1] if self.transposed else self.w.shape[0], -1)
        m = m.t() if self.transposed else m
        return self.w * m[:, :, None, None]  # channels_last like self.w


def _plain(layer: StyledConv, prep: _Prepared, x, s, noise, gain: float) -> torch.Tensor:
    y = _conv(x, prep.weight(s, gain), layer.activate.bias, layer.conv.padding, addend=noise)  # (1, out, H, W)
    return F.leaky_relu_(y, 0.2)  # times sqrt(2) still owed


def _upsampling(layer: StyledConv, prep: _Prepared, x, s, noise, gain: float) -> torch.Tensor:
    conv = layer.conv
    # the blur's gain 4 goes into the conv weight; what is left is the normalised binomial
    y = _conv_t(x, prep.weight(s, gain * 4.0), 0)
    # y: (1, out, 2H+1, 2W+1). Blur with pad 1 (true convolution; the kernel is symmetric) as a depthwise conv
    c = y.shape[1]
    k = (conv.blur.kernel / 4.0).to(y.dtype).flip((0, 1)).expand(c, 1, 4, 4)
    y = _conv(y, k.contiguous(memory_format=torch.channels_last), layer.activate.bias, 1, groups=c, addend=noise)
    return F.leaky_relu_(y, 0.2)  # (1, out, 2H, 2W)


def _to_rgb(to_rgb: ToRGB, prep: _Prepared, x, s, gain: float, skip: torch.Tensor | None) -> torch.Tensor:
    up = None
    if skip is not None:
        # upfirdn2d(up=2, pad=(2, 1)) with a 4x4 kernel == stride-2 transposed conv, padding 1, per channel
        c = skip.shape[1]
        k = to_rgb.upsample.kernel.to(skip.dtype).expand(c, 1, 4, 4).contiguous(memory_format=torch.channels_last)
        up = _conv_t(skip, k, 1, groups=c)  # (1, 3, 2H, 2W)
    return _conv(x, prep.weight(s, gain), to_rgb.bias.view(-1), 0, addend=up)  # (1, 3, H, W)


def _synthesize_one(g: Generator, prep: list[_Prepared], styles: list[torch.Tensor], noise: list[torch.Tensor]):
    x = g.input.input.contiguous(memory_format=torch.channels_last)  # (1, C4, 4, 4)
    x = _plain(g.conv1, prep[0], x, styles[0], noise[0], 1.0)
    skip = _to_rgb(g.to_rgb1, prep[1], x, styles[1], _SQRT2, None)  # (1, 3, 4, 4)
    j = 2
    for k, to_rgb in enumerate(g.to_rgbs):
        x = _upsampling(g.convs[2 * k], prep[j], x, styles[j], noise[2 * k + 1], _SQRT2)
        x = _plain(g.convs[2 * k + 1], prep[j + 1], x, styles[j + 1], noise[2 * k + 2], _SQRT2)
        skip = _to_rgb(to_rgb, prep[j + 2], x, styles[j + 2], _SQRT2, skip)
        j += 3
    return skip.contiguous()  # (1, 3, size, size)


class FastEncoder:
    """`GradualStyleEncoder.forward` under inference_mode, with the 18 map2style heads run as three grouped convs
    stacks (one per FPN level: the heads that read the same map share one conv call per depth, the first one a
    plain conv with every head's output channels, the rest grouped convs), each identity shortcut
    (MaxPool2d(1, stride)) as the strided slice it equals, the residual sum in place.

    The heads' conv weights and biases are re-pointed (values and layout unchanged) into one tensor per group and
    depth, so the grouped calls need no copy and the encoder module stays the reference, bitwise. NCHW throughout
    (channels_last makes PyTorch copy every conv weight on each call, which costs more than it saves here).
    """

    def __init__(self, encoder: GradualStyleEncoder):
        self.encoder = encoder
        self._stacks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self._pack()

    def _pack(self) -> None:
        enc = self.encoder
        self._stacks = []
        for lo, hi in enc.head_groups:
            heads = [enc.styles[j] for j in range(lo, hi)]
            depth = len(heads[0].convs) // 2
            stack = []
            for d in range(depth):
                convs = [h.convs[2 * d] for h in heads]
                with torch.no_grad():
                    w = torch.cat([c.weight for c in convs])  # (n*out, in, 3, 3)
                    b = torch.cat([c.bias for c in convs])  # (n*out,)
                step = convs[0].out_channels
                for k, c in enumerate(convs):  # the same values, now views of the stacked tensors
                    c.weight.data = w[k * step : (k + 1) * step]
                    c.bias.data = b[k * step : (k + 1) * step]
                stack.append((w, b))
            self._stacks.append(stack)

    def _packed(self) -> bool:
        enc = self.encoder
        for (lo, hi), stack in zip(enc.head_groups, self._stacks):
            for d, (w, _) in enumerate(stack):
                first = enc.styles[lo].convs[2 * d].weight
                if first.data_ptr() != w.data_ptr() or first.device != w.device:
                    return False
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) in [-1, 1] -> raw codes (B, 18, 512)."""
        enc = self.encoder
        if not self._packed():  # the module was moved or its parameters replaced
            self._pack()
        taps = enc.tap_indices
        with torch.inference_mode():
            x = enc.input_layer(x)  # (B, 64, 256, 256)
            feats = []
            for i, unit in enumerate(enc.body):
                x = _ir_unit(unit, x)
                if i in taps:
                    feats.append(x)
            out = []
            for m, (lo, hi), stack in zip(enc.pyramid(*feats), enc.head_groups, self._stacks):
                n = hi - lo
                y = m  # (B, C, S, S)
                for d, (w, b) in enumerate(stack):
                    y = F.leaky_relu_(F.conv2d(y, w, b, stride=2, padding=1, groups=1 if d == 0 else n), 0.01)
                y = y.reshape(y.shape[0], n, -1)  # (B, n, width)
                out += [enc.styles[lo + k].linear(y[:, k]) for k in range(n)]
            return torch.stack(out, dim=1)  # (B, 18, 512)


def _ir_unit(unit: BottleneckIRSE, x: torch.Tensor) -> torch.Tensor:
    shortcut = unit.shortcut_layer
    if isinstance(shortcut, nn.MaxPool2d):
        s = shortcut.stride if isinstance(shortcut.stride, int) else shortcut.stride[0]
        sc = x[:, :, ::s, ::s] if s > 1 else x  # a 1x1 max pool is a strided slice
    else:
        sc = shortcut(x)
    return unit.res_layer(x).add_(sc)
