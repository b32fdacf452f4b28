"""Helpers shared by tests (importable as `fkhelpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np

from facekeys.dims import DIM, N_LAYERS


def random_keys(n: int, seed: int = 0) -> np.ndarray:
    """(n, 18, 512) float32 latents around a shared mean, like pSp keys."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((N_LAYERS, DIM)).astype(np.float32)
    return (mean + 0.7 * rng.standard_normal((n, N_LAYERS, DIM))).astype(np.float32)
