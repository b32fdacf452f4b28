"""pSp GradualStyleEncoder: IR-SE-50 body + FPN + 18 map2style heads (spec models.md §2).

`GradualStyleEncoder(EncoderConfig())` has exactly the 621 `encoder.*` state_dict entries of
`psp_ffhq_encode.pt` (prefix stripped). `SMALL_ENCODER` keeps the naming, the 18 styles of width
512 and the 256x256 input, with thin layers, for fast tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument

__all__ = ["EncoderConfig", "GradualStyleEncoder", "OFFICIAL_ENCODER", "SMALL_ENCODER", "INPUT_SIZE"]

INPUT_SIZE = 256
_COARSE, _MIDDLE = 3, 7  # styles [0,3) <- c3 (16x16), [3,7) <- p2 (32x32), [7,18) <- p1 (64x64)


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder architecture. Defaults are the official ffhq_encode model (IR-SE-50, 512-wide heads)."""

    stage_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    stage_units: tuple[int, int, int, int] = (3, 4, 14, 3)
    fpn_width: int = 512  # lateral/top-down width = map2style conv width; equals stage_channels[3] officially
    style_dim: int = DIM
    n_styles: int = N_LAYERS

    def __post_init__(self):
        if self.n_styles != N_LAYERS:
            raise ValueError(f"the FPN head routing is fixed to {N_LAYERS} styles")
        if min(self.stage_channels) < 16 or min(self.stage_units) < 1:
            raise ValueError("stage channels must be >= 16 (SE reduction 16) and every stage needs a unit")


OFFICIAL_ENCODER = EncoderConfig()
SMALL_ENCODER = EncoderConfig(stage_channels=(16, 16, 32, 64), stage_units=(2, 2, 2, 2), fpn_width=64)


class EqualLinear(nn.Module):
    """y = x (W / sqrt(in))^T + b, weight stored unscaled (lr_mul 1, no activation)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))  # (out, in)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class BottleneckIRSE(nn.Module):
    """IR-SE unit: BN-conv-PReLU-conv(stride)-BN-SE residual plus a shortcut, no activation after the sum."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """map2style: log2(spatial) stride-2 convs (LeakyReLU 0.01) down to 1x1, then EqualLinear."""

    def __init__(self, width: int, style_dim: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(width, style_dim)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)  # (B, width, 1, 1)
        return self.linear(x.reshape(x.shape[0], self.width))  # (B, style_dim)


class GradualStyleEncoder(nn.Module):
    """(B, 3, 256, 256) in [-1, 1] -> raw codes (B, 18, 512); add latent_avg to get W+."""

    def __init__(self, config: EncoderConfig = OFFICIAL_ENCODER):
        super().__init__()
        self.config = cfg = config
        c0 = cfg.stage_channels[0]
        self.input_layer = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.PReLU(c0))
        units: list[nn.Module] = []
        in_ch = c0
        self._taps: list[int] = []  # body index after which c1, c2, c3 are taken
        for stage, (depth, n) in enumerate(zip(cfg.stage_channels, cfg.stage_units)):
            for u in range(n):
                units.append(BottleneckIRSE(in_ch, depth, 2 if u == 0 else 1))
                in_ch = depth
            if stage >= 1:
                self._taps.append(len(units) - 1)
        self.body = nn.Sequential(*units)
        w = cfg.fpn_width
        if cfg.stage_channels[3] != w:
            raise ValueError("fpn_width must equal the last stage's channels (c3 feeds the coarse heads directly)")
        spatial = [16] * _COARSE + [32] * (_MIDDLE - _COARSE) + [64] * (cfg.n_styles - _MIDDLE)
        self.styles = nn.ModuleList(GradualStyleBlock(w, cfg.style_dim, s) for s in spatial)
        self.latlayer1 = nn.Conv2d(cfg.stage_channels[2], w, 1)
        self.latlayer2 = nn.Conv2d(cfg.stage_channels[1], w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise InvalidArgument(
                f"encoder input must be (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}"
            )
        x = self.input_layer(x)  # (B, 64, 256, 256)
        feats = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                feats.append(x)
        return self.heads(*feats)

    @property
    def tap_indices(self) -> tuple[int, ...]:
        """Body units after which c1, c2, c3 are taken (the inputs of `heads`)."""
        return tuple(self._taps)

    @property
    def head_groups(self) -> tuple[tuple[int, int], ...]:
        """Style rows fed by c3 (16x16), p2 (32x32) and p1 (64x64): the outputs of `pyramid`, in order."""
        return ((0, _COARSE), (_COARSE, _MIDDLE), (_MIDDLE, self.config.n_styles))

    def pyramid(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """FPN top-down path: (c3, p2, p1), the inputs of the three head groups."""
        p2 = F.interpolate(c3, size=c2.shape[-2:], mode="bilinear", align_corners=True) + self.latlayer1(c2)
        p1 = F.interpolate(p2, size=c1.shape[-2:], mode="bilinear", align_corners=True) + self.latlayer2(c1)
        return c3, p2, p1

    def heads(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor) -> torch.Tensor:
        """FPN + map2style: c1 (B,128,64,64), c2 (B,256,32,32), c3 (B,512,16,16) -> raw codes (B, 18, 512)."""
        maps = self.pyramid(c1, c2, c3)
        out = [self.styles[j](m) for m, (lo, hi) in zip(maps, self.head_groups) for j in range(lo, hi)]
        return torch.stack(out, dim=1)  # (B, 18, 512)
