"""Synthetic pSp-like latent workload. SYNTHETIC: it measures the engine, not which layers carry identity.

Model, per W+ layer l and dimension d (all images share `latent_avg`, like pSp's average latent):

    centre[id]  = latent_avg + identity_scale * profile(l) * aniso[l, d] * N(0, 1)
    key/probe   = centre[id] + noise * (aniso[l, d] * N(0, 1) + nuisance_scale * sum_r c_r * basis_r[l, d])

`profile` falls linearly from 1.0 at the coarsest layer to `identity_floor` at the finest, so coarse layers
carry more identity signal than fine ones; `basis` holds `nuisance_rank` shared directions per layer (pose,
light: every image has some of them, which correlates impostor scores), `c_r ~ N(0, 1)` per image. Probes
are noisier than gallery keys ("years older"). Impostors are fresh identities that are not in the gallery.

The defaults are tuned so that nothing saturates. Measured through the engine with 2000 identities and 2000
impostors (benchmarks/RESULTS.md): top-1 accuracy runs from ~0.2 % (layer 18 alone) to ~99.9 %
(layers 1-5), layer 1 alone gets ~79 %, all 18 layers ~96.5 %, and impostor top-1 scores overlap the
genuine ones (open-set TAR at FAR 1e-2 from 0 to ~93 % depending on the subset). More identities make
every subset harder; fewer make it easier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument


@dataclass(frozen=True)
class SyntheticConfig:
    identities: int = 1000  # identities in the gallery
    keys_per_identity: int = 1  # gallery keys per identity
    probes_per_identity: int = 1  # genuine probes per identity
    impostors: int = 0  # probes of identities not in the gallery (one each)
    mean_scale: float = 1.0  # spread of the shared per-layer mean (latent_avg)
    identity_scale: float = 0.2  # spread of identity centres around the mean, at the coarsest layer
    identity_floor: float = 0.3  # identity signal of the finest layer relative to the coarsest
    gallery_noise: float = 0.25  # per-key deviation from its identity centre
    probe_noise: float = 0.45  # per-probe deviation (ageing, pose, light)
    nuisance_rank: int = 8  # shared nuisance directions per layer (0 = isotropic noise only)
    nuisance_scale: float = 0.1  # weight of the shared nuisance relative to the isotropic noise
    seed: int = 0

    def __post_init__(self):
        if self.identities < 1:
            raise InvalidArgument(f"identities must be >= 1, got {self.identities}")
        for name in ("keys_per_identity", "probes_per_identity"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1")
        if self.impostors < 0 or self.nuisance_rank < 0:
            raise InvalidArgument("impostors and nuisance_rank must be >= 0")
        for name in ("mean_scale", "identity_scale", "identity_floor", "gallery_noise", "probe_noise",
                     "nuisance_scale"):
            if not getattr(self, name) >= 0:
                raise InvalidArgument(f"{name} must be >= 0")


@dataclass(frozen=True)
class SyntheticData:
    gallery: np.ndarray  # (G, 18, 512) float32
    gallery_labels: np.ndarray  # (G,) int64 identity numbers
    probes: np.ndarray  # (P, 18, 512) float32, genuine probes first, then impostors
    probe_labels: np.ndarray  # (P,) int64; impostors have labels >= identities
    latent_avg: np.ndarray  # (18, 512)


def layer_profile(floor: float = SyntheticConfig.identity_floor) -> np.ndarray:
    """Identity signal per layer, 1.0 at the coarsest layer falling linearly to `floor` at the finest."""
    return np.linspace(1.0, floor, N_LAYERS, dtype=np.float32)


def make_workload(cfg: SyntheticConfig) -> SyntheticData:
    rng = np.random.default_rng(cfg.seed)
    latent_avg = (rng.standard_normal((N_LAYERS, DIM)) * cfg.mean_scale).astype(np.float32)  # (18, 512)
    aniso = rng.uniform(0.3, 1.7, size=(N_LAYERS, DIM)).astype(np.float32)  # (18, 512)
    basis = rng.standard_normal((cfg.nuisance_rank, N_LAYERS, DIM)).astype(np.float32)  # (R, 18, 512)
    spread = layer_profile(cfg.identity_floor)[:, None] * aniso  # (18, 512)
    n_id = cfg.identities + cfg.impostors
    centres = latent_avg + cfg.identity_scale * spread * rng.standard_normal((n_id, N_LAYERS, DIM)).astype(np.float32)

    def draw(ids: np.ndarray, noise: float) -> np.ndarray:
        eps = aniso * rng.standard_normal((len(ids), N_LAYERS, DIM)).astype(np.float32)  # (n, 18, 512)
        coef = rng.standard_normal((len(ids), cfg.nuisance_rank)).astype(np.float32)  # (n, R)
        eps += cfg.nuisance_scale * np.einsum("nr,rld->nld", coef, basis)
        return (centres[ids] + noise * eps).astype(np.float32)

    gallery_labels = np.repeat(np.arange(cfg.identities, dtype=np.int64), cfg.keys_per_identity)
    genuine = np.repeat(np.arange(cfg.identities, dtype=np.int64), cfg.probes_per_identity)
    probe_labels = np.concatenate([genuine, np.arange(cfg.identities, n_id, dtype=np.int64)])
    return SyntheticData(draw(gallery_labels, cfg.gallery_noise), gallery_labels,
                         draw(probe_labels, cfg.probe_noise), probe_labels, latent_avg)
