"""Numpy-in, numpy-out face encoder and generator. Torch stays inside this package."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from facekeys.errors import InvalidArgument

from .checkpoint import PSP_MODEL_NAME, _device, encoder_id, load_generator, load_psp
from .fast import FastEncoder, FastSynthesis, supports
from .psp import INPUT_SIZE

__all__ = ["FaceEncoder", "FaceGenerator", "IMPLS"]

IMPLS = ("auto", "fast", "reference")


def _pick(impl: str, device: torch.device, possible: bool = True) -> str:
    """'auto' is the fast path on CPU (where it was measured against the reference) and the reference elsewhere."""
    if impl not in IMPLS:
        raise InvalidArgument(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "fast" and not possible:
        raise InvalidArgument("the fast path needs the official binomial blur kernels")
    if impl == "auto":
        return "fast" if device.type == "cpu" and possible else "reference"
    return impl


class FaceEncoder:
    """pSp encoder: aligned 256x256 RGB uint8 faces -> W+ keys (B, 18, 512) = encoder codes + latent_avg.

    Runs in eval mode under no_grad, on CUDA when available unless `device` says otherwise.
    impl: "reference" is the module bitwise equal to the official encoder; "fast" (fast.FastEncoder: channels_last,
    inference_mode, identity shortcuts as slices; same weights); "auto" (default) is fast on CPU, reference elsewhere.
    A single face runs through the reference module on either path: measured on a quiet CPU, the stacked heads pay
    off from two faces on (batch 1: reference 0.83 of the compute bound, fast 0.67; batch 8: 0.78 and 0.90).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        name: str = PSP_MODEL_NAME,
        impl: str = "auto",
    ):
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.device = _device(device)
        self.impl = _pick(impl, self.device)
        loaded = load_psp(checkpoint, device=self.device, decoder=False)
        self._encoder = loaded.encoder
        self._latent_avg = loaded.latent_avg  # (18, 512)
        self._run = FastEncoder(self._encoder) if self.impl == "fast" else self._encoder
        self._path = os.fspath(checkpoint)
        self._name = name
        self._id: str | None = None
        self.batch_size = batch_size

    @property
    def encoder_id(self) -> str:
        """Model name + checkpoint digest, computed once on first use (hashes the whole file)."""
        if self._id is None:
            self._id = encoder_id(self._path, self._name)
        return self._id

    @property
    def key_shape(self) -> tuple[int, int]:
        return tuple(self._latent_avg.shape)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images (B, 256, 256, 3) uint8 RGB aligned crops -> (B, 18, 512) float32."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InvalidArgument("images must be a uint8 numpy array (B, 256, 256, 3)")
        if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise InvalidArgument(f"images must be (B, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB, got {images.shape}")
        out = np.empty((images.shape[0],) + self.key_shape, dtype=np.float32)
        with torch.no_grad():
            for i in range(0, images.shape[0], self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch_size])).to(self.device)
                x = chunk.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (b, 3, 256, 256) in [0, 1]
                x = (x - 0.5) / 0.5  # [-1, 1]
                run = self._encoder if chunk.shape[0] == 1 else self._run
                codes = run(x) + self._latent_avg  # (b, 18, 512)
                out[i : i + chunk.shape[0]] = codes.cpu().numpy()
        return out


class FaceGenerator:
    """StyleGAN2 decoder: W+ keys (B, 18, 512) -> RGB uint8 images (B, H, W, 3), stored noise (deterministic).

    Weights come from a pSp checkpoint's decoder.* entries (preferred, pSp trained against them) or from a
    rosinality `g_ema` file; the format is detected.
    impl: "reference" is the module bitwise equal to the official generator; "fast" (fast.FastSynthesis: plain
    per-sample convs on CPU via oneDNN with fused adds; same weights, images within float32 rounding, PSNR >= 40 dB
    checked by tests/models/test_fast.py); "auto" (default) is fast on CPU, reference elsewhere.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 1,
        output_size: int | None = None,
        impl: str = "auto",
    ):
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.device = _device(device)
        self._generator = load_generator(checkpoint, device=self.device)
        self.impl = _pick(impl, self.device, supports(self._generator))
        self._fast = FastSynthesis(self._generator) if self.impl == "fast" else None
        self.batch_size = batch_size
        self.output_size = output_size

    @property
    def key_shape(self) -> tuple[int, int]:
        cfg = self._generator.config
        return (cfg.n_latent, cfg.style_dim)

    @property
    def size(self) -> int:
        return self._generator.config.size

    def generate(self, latents: np.ndarray, *, output_size: int | None = None) -> np.ndarray:
        """latents (B, 18, 512) -> (B, S, S, 3) uint8, S = output_size or the generator's size (1024).

        Pixels are round(clamp((x + 1) / 2, 0, 1) * 255). Downscaling by an integer factor is a box mean
        (pSp's face_pool from 1024 to 256); other sizes use antialiased bilinear resizing.
        """
        size = output_size or self.output_size or self.size
        if size < 1:
            raise InvalidArgument(f"output_size must be >= 1, got {size}")
        if not isinstance(latents, np.ndarray) or latents.ndim != 3 or latents.shape[1:] != self.key_shape:
            shape = getattr(latents, "shape", None)
            raise InvalidArgument(f"latents must be a numpy array {('B',) + self.key_shape}, got {shape}")
        if not np.issubdtype(latents.dtype, np.floating) or not np.isfinite(latents).all():
            raise InvalidArgument("latents must be finite floats")
        out = np.empty((latents.shape[0], size, size, 3), dtype=np.uint8)
        with torch.no_grad():
            for i in range(0, latents.shape[0], self.batch_size):
                w = torch.from_numpy(np.ascontiguousarray(latents[i : i + self.batch_size], dtype=np.float32))
                w = w.to(self.device)
                if self._fast is not None:
                    img = self._fast(w)  # (b, 3, S0, S0)
                else:
                    img = self._generator(w, input_is_latent=True, randomize_noise=False)  # (b, 3, S0, S0)
                img = _resize(img, size)
                img = ((img + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
                out[i : i + w.shape[0]] = img.permute(0, 2, 3, 1).cpu().numpy()
        return out


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    s0 = img.shape[-1]
    if size == s0:
        return img
    if size < s0 and s0 % size == 0:
        return F.avg_pool2d(img, s0 // size)
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=size < s0)
