"""FFHQ-style face alignment from 5 landmarks (spec models.md §4.1), numpy + Pillow, no torch.

One recipe for enrolled faces and probes alike: the NVIDIA ffhq-dataset oriented square, warped with
Pillow's bilinear QUAD transform straight to 256x256 (pSp's own alignment script: output size = transform
size = 256). The 68-point recipe's eye centres and mouth corners are taken from the 5 detector points:
eye_left = point 0, eye_right = point 1, mouth_avg = midpoint of points 3 and 4 (the nose is unused).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from facekeys.errors import InvalidArgument

__all__ = ["align_face", "ALIGNED_SIZE"]

ALIGNED_SIZE = 256


def _rot90(v: np.ndarray) -> np.ndarray:
    """(vx, vy) -> (-vy, vx): +90 degrees in image coordinates."""
    return np.array([-v[1], v[0]])


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian over H and W (not channels), symmetric edges, truncated at 4 sigma."""
    radius = int(4.0 * sigma + 0.5)
    if radius < 1:
        return img.copy()
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for j, w in enumerate(k):
            acc += w * np.take(padded, np.arange(j, j + n), axis=axis)
        out = acc
    return out


def _quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    eye_left, eye_right = lm[0], lm[1]
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = math.hypot(*x)
    scale = max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    if not (norm > 1e-6 and scale > 1e-6):
        raise InvalidArgument("landmarks are degenerate (eyes and mouth coincide)")
    x = x / norm * scale
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])  # TL, BL, BR, TR; (4, 2)
    return quad, math.hypot(*x) * 2.0


def align_face(image: np.ndarray, landmarks: np.ndarray, *, enable_padding: bool = True) -> np.ndarray:
    """Aligned (256, 256, 3) uint8 RGB crop.

    image: (H, W, 3) uint8 RGB. landmarks: (5, 2) pixel (x, y) in detector order: left eye, right eye,
    nose, mouth left, mouth right ("left" = the image's left).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidArgument(f"image must be a (H, W, 3) uint8 RGB array, got {getattr(image, 'shape', None)}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InvalidArgument(f"image too small: {image.shape}")
    lm = np.asarray(landmarks)
    if lm.shape != (5, 2) or not np.issubdtype(lm.dtype, np.number):
        raise InvalidArgument(f"landmarks must be a numeric (5, 2) array, got shape {lm.shape}")
    lm = lm.astype(np.float64)
    if not np.isfinite(lm).all():
        raise InvalidArgument("landmarks must be finite")

    out_size = ALIGNED_SIZE
    quad, qsize = _quad(lm)
    img = Image.fromarray(image)

    # shrink very large faces first (Lanczos)
    shrink = int(math.floor(qsize / out_size * 0.5))
    if shrink > 1:
        rsize = (int(round(img.size[0] / shrink)), int(round(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # crop to the quad plus a border
    border = max(int(round(qsize * 0.1)), 3)
    crop = (
        int(math.floor(quad[:, 0].min())),
        int(math.floor(quad[:, 1].min())),
        int(math.ceil(quad[:, 0].max())),
        int(math.ceil(quad[:, 1].max())),
    )
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise InvalidArgument("landmarks put the face entirely outside the image")
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # reflect-pad when the quad leaves the image, blending the padding towards blur and median colour
    pad = (
        int(math.floor(quad[:, 0].min())),
        int(math.floor(quad[:, 1].min())),
        int(math.ceil(quad[:, 0].max())),
        int(math.ceil(quad[:, 1].max())),
    )
    w0, h0 = img.size
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - w0 + border, 0), max(pad[3] - h0 + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = tuple(max(p, int(round(qsize * 0.3)), 1) for p in pad)
        arr = np.pad(np.asarray(img, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
        h, w, _ = arr.shape
        yy, xx = np.ogrid[:h, :w]
        mask = np.maximum(
            1.0 - np.minimum(xx / pad[0], (w - 1 - xx) / pad[2]),
            1.0 - np.minimum(yy / pad[1], (h - 1 - yy) / pad[3]),
        ).astype(np.float32)[:, :, None]  # (h, w, 1)
        blurred = _gaussian_blur(arr, qsize * 0.02)
        arr += (blurred - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)))
        quad += pad[:2]

    img = img.transform(
        (out_size, out_size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()), Image.Resampling.BILINEAR
    )
    return np.asarray(img, dtype=np.uint8).copy()  # (256, 256, 3)
