"""Full-size models (IR-SE-50 encoder, 1024 config-f generator) end to end on CPU, batch 1.

Random weights written in the official psp_ffhq_encode.pt layout: this proves the full-size plumbing
and loading path, not quality. About 1.2 GB of disk and 3-4 GB of memory; tens of seconds on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from facekeys.models import FaceEncoder, FaceGenerator
from facekeys.models.checkpoint import save_random_psp_checkpoint
from facekeys.models.psp import OFFICIAL_ENCODER
from facekeys.models.stylegan2 import OFFICIAL_GENERATOR


@pytest.mark.slow
def test_full_encoder_and_generator_forward(tmp_path, rng):
    path = save_random_psp_checkpoint(tmp_path / "psp_ffhq_encode.pt", seed=0)
    assert path.stat().st_size > 1.1e9  # about 1.2 GB like the official file

    enc = FaceEncoder(path, device="cpu")
    assert enc._encoder.config == OFFICIAL_ENCODER
    keys = enc.encode(rng.integers(0, 256, size=(1, 256, 256, 3), dtype=np.uint8))
    assert keys.shape == (1, 18, 512) and keys.dtype == np.float32 and np.isfinite(keys).all()
    del enc

    gen = FaceGenerator(path, device="cpu")
    assert gen._generator.config == OFFICIAL_GENERATOR
    img = gen.generate(keys)
    assert img.shape == (1, 1024, 1024, 3) and img.dtype == np.uint8
    assert img.std() > 0
