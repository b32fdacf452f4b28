"""StyleGAN2 generator in rosinality's state_dict layout (spec models.md §3).

`Generator(GeneratorConfig())` is config-f FFHQ 1024: its `state_dict()` has exactly the 171 keys
and shapes of `g_ema` in `stylegan2-ffhq-config-f.pt` (and of the `decoder.*` entries of
`psp_ffhq_encode.pt`). Smaller configurations (lower `size`, a `channels` override) keep the same
key naming so tests stay fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facekeys.dims import DIM, N_LAYERS

from .ops import fused_leaky_relu, make_blur_kernel, upfirdn2d

__all__ = ["GeneratorConfig", "Generator", "OFFICIAL_GENERATOR", "SMALL_GENERATOR"]


def _default_channels(log_size: int, channel_multiplier: int) -> tuple[int, ...]:
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return tuple(table[2**r] for r in range(2, log_size + 1))


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator. Defaults are config-f FFHQ 1024 (spec §3.1).

    channels: optional override, one channel count per resolution 4, 8, ..., size.
    """

    size: int = 1024
    style_dim: int = DIM
    n_mlp: int = 8
    channel_multiplier: int = 2
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01
    channels: tuple[int, ...] | None = None

    def __post_init__(self):
        log_size = int(math.log2(self.size)) if self.size > 0 else 0
        if self.size < 4 or 2**log_size != self.size:
            raise ValueError(f"size must be a power of two >= 4, got {self.size}")
        if self.channels is not None and len(self.channels) != log_size - 1:
            raise ValueError(f"channels needs {log_size - 1} entries (4..{self.size}), got {len(self.channels)}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """W+ rows: 18 for 1024."""
        return self.log_size * 2 - 2

    @property
    def num_noises(self) -> int:
        """Noise inputs: 17 for 1024."""
        return (self.log_size - 2) * 2 + 1

    def channels_at(self, resolution: int) -> int:
        chans = self.channels or _default_channels(self.log_size, self.channel_multiplier)
        return chans[int(math.log2(resolution)) - 2]


OFFICIAL_GENERATOR = GeneratorConfig()
assert OFFICIAL_GENERATOR.n_latent == N_LAYERS
# Full 1024 output and 18 W+ rows of width 512, but only a few channels per layer: plumbing tests.
SMALL_GENERATOR = GeneratorConfig(channels=(16, 16, 16, 16, 16, 8, 8, 8, 8))


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with the equalised-lr scale applied at run time (spec §3.2)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)  # (out, in), stored unscaled
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    def __init__(self, taps: tuple[int, ...], pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, gain))  # (4, 4)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, taps: tuple[int, ...], factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, factor**2))  # (4, 4)
        self.factor = factor
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)  # (2, 1) for [1,3,3,1], factor 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Fused modulated convolution with a per-sample weight (spec §3.6)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: tuple[int, ...] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), gain=factor**2)
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2

    def sample_weights(self, style: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B, out, in, k, k) for styles (B, style_dim)."""
        s = self.modulation(style)  # (B, in)
        w = self.scale * self.weight * s[:, None, :, None, None]  # (B, out, in, k, k)
        if self.demodulate:
            demod = torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)  # (B, out, 1, 1, 1)
            w = w * demod
        return w

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c, h, wd = x.shape
        w = self.sample_weights(style)  # (B, out, in, k, k)
        k = self.kernel_size
        x = x.reshape(1, b * c, h, wd)
        if self.upsample:
            # transposed-conv weight layout (in, out, k, k) per sample; channel swap only, no flip
            wt = w.transpose(1, 2).reshape(b * c, self.out_channel, k, k)
            out = F.conv_transpose2d(x, wt, stride=2, padding=0, groups=b)  # (1, B*out, 2H+1, 2W+1)
            out = out.reshape(b, self.out_channel, out.shape[2], out.shape[3])
            return self.blur(out)  # (B, out, 2H, 2W)
        out = F.conv2d(x, w.reshape(b * self.out_channel, c, k, k), padding=self.padding, groups=b)
        return out.reshape(b, self.out_channel, h, wd)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class Generator(nn.Module):
    """StyleGAN2 generator; forward takes W+ (B, n_latent, style_dim) or W (B, style_dim)."""

    def __init__(self, config: GeneratorConfig = OFFICIAL_GENERATOR):
        super().__init__()
        self.config = cfg = config
        sd = cfg.style_dim
        blur = cfg.blur_kernel
        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(sd, sd, lr_mul=cfg.lr_mlp, activate=True) for _ in range(cfg.n_mlp)]
        )
        self.input = ConstantInput(cfg.channels_at(4))
        self.conv1 = StyledConv(cfg.channels_at(4), cfg.channels_at(4), 3, sd, blur_kernel=blur)
        self.to_rgb1 = ToRGB(cfg.channels_at(4), sd, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(cfg.num_noises):
            r = (i + 5) // 2
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2**r, 2**r))
        in_ch = cfg.channels_at(4)
        for r in range(3, cfg.log_size + 1):
            out_ch = cfg.channels_at(2**r)
            self.convs.append(StyledConv(in_ch, out_ch, 3, sd, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(out_ch, out_ch, 3, sd, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(out_ch, sd, blur_kernel=blur))
            in_ch = out_ch

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    def stored_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_noises)]

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, style_dim) -> w (B, style_dim)."""
        return self.style(z)

    def forward(
        self,
        styles: torch.Tensor,
        *,
        input_is_latent: bool = True,
        randomize_noise: bool = False,
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image (B, 3, size, size), unclamped, roughly in [-1, 1].

        styles: W+ (B, n_latent, style_dim), or one vector per sample (B, style_dim) repeated to every layer.
        input_is_latent=False maps z through the mapping network first (row-wise for W+ input).
        randomize_noise=False uses the stored `noises.noise_i` buffers: repeated calls are bitwise equal.
        """
        cfg = self.config
        if styles.ndim == 2 and styles.shape[1] == cfg.style_dim:
            styles = styles[:, None, :].expand(-1, cfg.n_latent, -1)
        if styles.ndim != 3 or styles.shape[1:] != (cfg.n_latent, cfg.style_dim):
            raise ValueError(
                f"styles must be (B, {cfg.n_latent}, {cfg.style_dim}) or (B, {cfg.style_dim}), got {tuple(styles.shape)}"
            )
        if not input_is_latent:
            b = styles.shape[0]
            styles = self.mapping(styles.reshape(-1, cfg.style_dim)).reshape(b, cfg.n_latent, cfg.style_dim)
        if truncation < 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent")
            styles = truncation_latent + truncation * (styles - truncation_latent)
        latent = styles  # (B, n_latent, style_dim)
        b = latent.shape[0]
        if randomize_noise:
            noise = [torch.randn(b, 1, n.shape[2], n.shape[3], device=n.device, dtype=n.dtype) for n in self.stored_noise()]
        else:
            noise = self.stored_noise()

        out = self.input(b)  # (B, C4, 4, 4)
        out = self.conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])  # (B, 3, 4, 4)
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            conv_up, conv = self.convs[2 * k], self.convs[2 * k + 1]
            out = conv_up(out, latent[:, i], noise[2 * k + 1])
            out = conv(out, latent[:, i + 1], noise[2 * k + 2])
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip  # (B, 3, size, size)
