"""In-place face obfuscation on one RGB frame: mosaic (default), gaussian blur or solid fill."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from facekeys.errors import InvalidArgument

__all__ = ["ObfuscationConfig", "obfuscate", "expand_box"]

METHODS = ("mosaic", "blur", "fill")


@dataclass(frozen=True)
class ObfuscationConfig:
    method: str = "mosaic"  # "mosaic" | "blur" | "fill"
    # Defaults measured with `facekeys verify-video` (benchmarks/bench_privacy.py, RESULTS.md) on real clips with
    # 10-260 px faces: no CenterFace hit at >= 0.3 and no dlib HOG / MMOD hit in a region, no leaked frame,
    # re-identification by dlib's 128-D descriptor at chance. The 0.2 margin / 6 blocks / 8 px before them left
    # CenterFace hits up to 0.54 on small faces (the head's outline and a face-shaped blob of blocks).
    margin: float = 0.4  # added on every side, as a fraction of the box's width / height: covers hair, ears and
    #                      chin, and the whole chip a face matcher aligns (0.3 still fired CenterFace at 0.37)
    mosaic_blocks: int = 4  # blocks across the face box (6: CenterFace up to 0.32 on a 100 px face at 0.2 margin)
    mosaic_min_block: int = 16  # px: small faces get fewer, larger blocks; a 10-20 px face becomes 1-2 blocks
    #                             (with 8 px blocks a 10 px face kept 2x3 blocks: CenterFace 0.33 on vtest.avi)
    blur_sigma: float = 0.2  # gaussian sigma as a fraction of the larger box side
    fill_color: tuple[int, int, int] = (0, 0, 0)  # RGB for "fill"
    mosaic_noise: int = 0  # grey levels: each mosaic block's colour moves by a uniform offset in +-this. Off by
    #                        default: measured, +-32 RAISES low-threshold CenterFace scores (random block patterns
    #                        look face-like: 0.36 on vtest.avi where the plain mosaic stays below 0.3)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidArgument(f"ObfuscationConfig.method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 <= self.margin <= 2.0:
            raise InvalidArgument(f"ObfuscationConfig.margin must be in [0, 2], got {self.margin}")
        if not 2 <= self.mosaic_blocks <= 32:
            raise InvalidArgument(f"ObfuscationConfig.mosaic_blocks must be in [2, 32], got {self.mosaic_blocks}")
        if not 1 <= self.mosaic_min_block <= 64:
            raise InvalidArgument(f"ObfuscationConfig.mosaic_min_block must be in 1..64 px, got {self.mosaic_min_block}")
        if not 0.05 <= self.blur_sigma <= 2.0:
            raise InvalidArgument(f"ObfuscationConfig.blur_sigma must be in [0.05, 2], got {self.blur_sigma}")
        if not 0 <= self.mosaic_noise <= 128:
            raise InvalidArgument(f"ObfuscationConfig.mosaic_noise must be in 0..128 grey levels, got {self.mosaic_noise}")
        if len(self.fill_color) != 3 or not all(0 <= int(c) <= 255 for c in self.fill_color):
            raise InvalidArgument(f"ObfuscationConfig.fill_color must be 3 values in 0..255, got {self.fill_color}")


def expand_box(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) -> integer (x0, y0, x1, y1) grown by `margin` per side and clipped to the frame."""
    x, y, w, h = (float(v) for v in box[-4:])
    mx, my = w * margin, h * margin
    x0 = max(0, int(np.floor(x - mx)))
    y0 = max(0, int(np.floor(y - my)))
    x1 = min(width, int(np.ceil(x + w + mx)))
    y1 = min(height, int(np.ceil(y + h + my)))
    return x0, y0, x1, y1


def obfuscate(frame: np.ndarray, boxes: Iterable, cfg: ObfuscationConfig = ObfuscationConfig()) -> np.ndarray:
    """Obfuscate every box in `frame` (H, W, 3) uint8, in place; returns `frame`.

    A box is anything ending in (x, y, w, h) (a `Detection` tuple, a track box `(frame, x, y, w, h)`).
    """
    if frame.ndim != 3 or frame.dtype != np.uint8:
        raise InvalidArgument(f"obfuscate() wants an (H, W, C) uint8 frame, got {frame.shape} {frame.dtype}")
    H, W = frame.shape[:2]
    for box in boxes:
        bw, bh = float(box[-2]), float(box[-1])
        x0, y0, x1, y1 = expand_box(box, cfg.margin, W, H)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = frame[y0:y1, x0:x1]  # view: writes go to the frame
        if cfg.method == "fill":
            roi[:] = np.asarray(cfg.fill_color, dtype=np.uint8)
        elif cfg.method == "mosaic":
            block = max(float(cfg.mosaic_min_block), max(bw, bh) / cfg.mosaic_blocks)  # block side in pixels
            nx = max(1, round((x1 - x0) / block))
            ny = max(1, round((y1 - y0) / block))
            small = cv2.resize(roi, (nx, ny), interpolation=cv2.INTER_AREA)  # (ny, nx, 3) block colours
            if cfg.mosaic_noise:
                # Seeded by the blocks themselves: the same frame gives the same output (reruns are
                # reproducible), and the offsets cannot be recomputed without the original pixels.
                rng = np.random.default_rng(zlib.crc32(small.tobytes()))
                offs = rng.integers(-cfg.mosaic_noise, cfg.mosaic_noise + 1, small.shape)
                small = np.clip(small.astype(np.int16) + offs, 0, 255).astype(np.uint8)
            roi[:] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        else:
            sigma = max(1.0, cfg.blur_sigma * max(bw, bh))
            # Blur a downscaled copy (same look, far cheaper for big sigmas), then scale back.
            f = min(1.0, 4.0 / sigma)
            sw, sh = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
            small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma * f, borderType=cv2.BORDER_REFLECT)
            roi[:] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return frame
