"""The per-deployment key transform: a secret becomes 18 random orthogonal 512x512 matrices, one per
W+ layer. Every stored key and every probe is multiplied layer-wise by them, so per-layer inner products
and norms -- hence cosine and L2 over any layer subset, hence every match -- are exactly unchanged,
while a stolen key pool is not a set of W+ latents the public generator can render. Recovery inverts.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from threadpoolctl import threadpool_limits

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument

MIN_SECRET_BYTES = 16
BUILD_BLAS_THREADS = 1  # BLAS threads while the 18 QR factorisations are built: 512x512 is too small to share out
#                         (default threads: 2.8 s on 16 cores, 10 s on 2 busy ones; one thread: 0.4-0.8 s;
#                         benchmarks/bench_startup.py)


def _layer_matrix(secret: bytes, layer: int) -> np.ndarray:
    seed = hmac.new(secret, f"facekeys-key-transform/v1/layer/{layer}".encode(), hashlib.sha256).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    a = rng.standard_normal((DIM, DIM))
    q, r = np.linalg.qr(a)
    return q * np.sign(np.diag(r))  # (512, 512) orthogonal, uniformly (Haar) distributed


class KeyTransform:
    """Per-layer orthogonal transform. `forward` for storage and probes, `inverse` for recovery."""

    def __init__(self, secret: bytes):
        if len(secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(f"key transform secret must be at least {MIN_SECRET_BYTES} bytes")
        with threadpool_limits(limits=BUILD_BLAS_THREADS, user_api="blas"):  # restored on leaving: scoped to the build
            self._q = np.stack([_layer_matrix(secret, l) for l in range(N_LAYERS)]).astype(np.float64)  # (18,512,512)
        self.fingerprint = hmac.new(secret, b"facekeys-key-transform/v1/fingerprint", hashlib.sha256).hexdigest()[:32]

    def forward(self, latents: np.ndarray) -> np.ndarray:
        """(N, 18, 512) -> (N, 18, 512): x_l Q_l per layer."""
        x = np.asarray(latents, np.float64).transpose(1, 0, 2)  # (18, N, 512)
        return np.matmul(x, self._q).transpose(1, 0, 2).astype(np.float32)

    def inverse(self, latents: np.ndarray) -> np.ndarray:
        """(N, 18, 512) -> (N, 18, 512): x_l Q_l^T per layer."""
        x = np.asarray(latents, np.float64).transpose(1, 0, 2)  # (18, N, 512)
        return np.matmul(x, self._q.transpose(0, 2, 1)).transpose(1, 0, 2).astype(np.float32)


def load_secret(path) -> bytes:
    """Read a secret from a mounted file (raw bytes; surrounding whitespace of text secrets stripped)."""
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise InvalidArgument(f"cannot read secret file {path}: {e.strerror}") from None
    return raw.strip() if raw.strip().isascii() else raw
