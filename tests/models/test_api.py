"""FaceEncoder / FaceGenerator: numpy in, numpy out. Random weights: plumbing only, not quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekeys.errors import InvalidArgument
from facekeys.models import FaceEncoder, FaceGenerator, load_psp
from facekeys.models.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def encoder(tiny_psp_path) -> FaceEncoder:
    return FaceEncoder(tiny_psp_path, device="cpu", batch_size=2)


def test_encode_is_encoder_plus_latent_avg(encoder, tiny_psp_path, rng):
    images = rng.integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
    keys = encoder.encode(images)
    assert keys.shape == (3, 18, 512) and keys.dtype == np.float32 and np.isfinite(keys).all()
    loaded = load_psp(tiny_psp_path, decoder=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (3, 3, 256, 256) in [-1, 1]
    with torch.no_grad():
        want = (loaded.encoder(x) + loaded.latent_avg).numpy()
    np.testing.assert_allclose(keys, want, rtol=1e-4, atol=1e-5)  # batch 2+1 vs 3: rounding only
    np.testing.assert_array_equal(encoder.encode(images), keys)  # deterministic
    assert encoder.encode(images[:0]).shape == (0, 18, 512)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 255, 256, 3), np.uint8),
        np.zeros((1, 512, 512, 3), np.uint8),
        np.zeros((256, 256, 3), np.uint8),
        np.zeros((1, 256, 256, 4), np.uint8),
        np.zeros((1, 256, 256, 3), np.float32),
    ],
)
def test_encode_rejects_bad_input(encoder, bad):
    with pytest.raises(InvalidArgument):
        encoder.encode(bad)


def test_encoder_id_property(encoder, tiny_psp_path):
    assert encoder.encoder_id.startswith("psp_ffhq_encode:sha256:") and len(encoder.encoder_id.split(":")[-1]) == 16
    assert encoder.device == torch.device("cpu")


def test_generator_from_psp_and_from_rosinality(tiny_psp_path, tiny_sg2_path, rng):
    g = FaceGenerator(tiny_psp_path, device="cpu")
    assert g.key_shape == (18, 512) and g.size == 1024
    w = rng.standard_normal((1, 18, 512)).astype(np.float32)
    img = g.generate(w, output_size=256)
    assert img.shape == (1, 256, 256, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(g.generate(w, output_size=256), img)  # stored noise: repeatable

    small = FaceGenerator(tiny_sg2_path, device="cpu", batch_size=2)
    w8 = rng.standard_normal((3, 8, 512))
    full = small.generate(w8)
    assert full.shape == (3, 32, 32, 3)
    with torch.no_grad():
        x = small._generator(torch.from_numpy(w8).float())
    want = ((x + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(full.astype(int) - want.astype(int)).max() <= 1  # batch 2+1 vs 3: rounding only
    pooled = small.generate(w8, output_size=16)  # integer factor: box mean of the float image
    assert pooled.shape == (3, 16, 16, 3)
    odd = small.generate(w8[:1], output_size=20)
    assert odd.shape == (1, 20, 20, 3)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((1, 18, 512), np.float32), np.zeros((8, 512), np.float32), np.full((1, 8, 512), np.nan), np.zeros((1, 8, 512), np.int64)],
)
def test_generate_rejects_bad_latents(tiny_sg2_path, bad):
    g = FaceGenerator(tiny_sg2_path, device="cpu")
    with pytest.raises(InvalidArgument):
        g.generate(bad)


def test_wrong_file_kind(tiny_sg2_path):
    with pytest.raises(CheckpointError):
        FaceEncoder(tiny_sg2_path, device="cpu")
