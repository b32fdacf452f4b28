"""Synthetic pSp-like latent workload. SYNTHETIC: it measures the engine, not which layers carry identity.

Model: a shared per-layer mean (like pSp's `latent_avg`), identity centres drawn with anisotropic
per-layer/per-dimension spread (coarse layers carry more identity signal than fine ones), gallery keys
and probes as perturbed copies of their identity centre (probes perturbed more: "years older"), and
impostors as fresh identities that are not in the gallery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekeys.dims import DIM, N_LAYERS


@dataclass(frozen=True)
class SyntheticConfig:
    identities: int = 1000  # identities in the gallery
    keys_per_identity: int = 1  # gallery keys per identity
    probes_per_identity: int = 1  # genuine probes per identity
    impostors: int = 0  # probes of identities not in the gallery
    mean_scale: float = 1.0  # spread of the shared per-layer mean (latent_avg)
    identity_scale: float = 0.6  # spread of identity centres around the mean
    gallery_noise: float = 0.25  # per-key deviation from its identity centre
    probe_noise: float = 0.45  # per-probe deviation (ageing, pose, light)
    seed: int = 0


@dataclass(frozen=True)
class SyntheticData:
    gallery: np.ndarray  # (G, 18, 512) float32
    gallery_labels: np.ndarray  # (G,) int64 identity numbers
    probes: np.ndarray  # (P, 18, 512) float32, genuine probes first, then impostors
    probe_labels: np.ndarray  # (P,) int64; impostors have labels >= identities
    latent_avg: np.ndarray  # (18, 512)


def layer_profile() -> np.ndarray:
    """Identity signal per layer, 1.0 at the coarsest layer falling to 0.25 at the finest."""
    return np.linspace(1.0, 0.25, N_LAYERS, dtype=np.float32)


def make_workload(cfg: SyntheticConfig) -> SyntheticData:
    rng = np.random.default_rng(cfg.seed)
    latent_avg = (rng.standard_normal((N_LAYERS, DIM)) * cfg.mean_scale).astype(np.float32)
    dim_scale = rng.uniform(0.3, 1.7, size=(N_LAYERS, DIM)).astype(np.float32)  # anisotropy
    spread = layer_profile()[:, None] * dim_scale  # (18, 512)
    n_id = cfg.identities + cfg.impostors
    centres = latent_avg + cfg.identity_scale * spread * rng.standard_normal((n_id, N_LAYERS, DIM)).astype(np.float32)

    def draw(ids: np.ndarray, noise: float) -> np.ndarray:
        eps = rng.standard_normal((len(ids), N_LAYERS, DIM)).astype(np.float32)
        return (centres[ids] + noise * dim_scale * eps).astype(np.float32)

    gallery_labels = np.repeat(np.arange(cfg.identities), cfg.keys_per_identity)
    genuine = np.repeat(np.arange(cfg.identities), cfg.probes_per_identity)
    probe_labels = np.concatenate([genuine, np.arange(cfg.identities, n_id)])
    return SyntheticData(draw(gallery_labels, cfg.gallery_noise), gallery_labels,
                         draw(probe_labels, cfg.probe_noise), probe_labels, latent_avg)
