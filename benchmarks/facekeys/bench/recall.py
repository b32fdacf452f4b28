"""Recall of identities per W+ layer subset, measured through the real `KeyStore` engine.

For every subset the paper sweeps (high: 1, 1-2, ..., 1-18; low: 18, 17-18, ..., 1-18) and each metric
(cosine: best = max, L2: best = min) the gallery is searched with every probe (top-1):

- closed set: top-1 accuracy = genuine probes whose top hit has the right identity / genuine probes
  (a genuine probe is one whose label is in the gallery);
- open set (when there are impostor probes, i.e. identities not in the gallery), at a threshold t the
  engine accepts a top hit when score >= t (cosine) or <= t (L2):
      FAR(t) = impostor probes whose top hit is accepted / impostor probes
      TAR(t) = genuine probes whose top hit is accepted AND correct / genuine probes
  (open-set identification rate; a genuine probe accepted with the wrong identity is not a true accept).
  threshold@FAR f = the most permissive t with FAR(t) <= f, i.e. at most floor(f * impostors) accepts;
  with fewer than 1/f impostors f cannot be resolved and the threshold is the zero-false-accept one
  (flagged `resolved=False`).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from facekeys.dims import DIM, KEY_SHAPE, N_LAYERS
from facekeys.errors import InvalidArgument
from facekeys.layers import format_layers, parse_layers
from facekeys.records import METRICS, check_latents

DEFAULT_FARS = (1e-1, 1e-2, 1e-3)
MiB = 1 << 20


@dataclass(frozen=True)
class Subset:
    """One paper subset: family 'high' (layers 1..k) or 'low' (layers 19-k..18)."""

    family: str
    k: int

    @property
    def spec(self) -> str:
        return f"{self.family}:{self.k}"

    @property
    def layers(self) -> tuple[int, ...]:  # 0-based W+ indices
        return parse_layers(self.spec)

    @property
    def label(self) -> str:  # paper numbering, e.g. "1-4", "17-18", "18"
        return format_layers(self.layers)


def paper_subsets() -> tuple[Subset, ...]:
    """The 36 subsets of the paper's Tables 1 and 2: high:1..high:18, then low:1..low:18."""
    return tuple(Subset(f, k) for f in ("high", "low") for k in range(1, N_LAYERS + 1))


@dataclass(frozen=True)
class RecallData:
    """A labelled gallery and probe sets. Probes whose label is not in the gallery count as impostors."""

    gallery: np.ndarray  # (G, 18, 512) float32
    gallery_labels: np.ndarray  # (G,) str
    probes: np.ndarray  # (P, 18, 512) float32, genuine probes (labels in the gallery)
    probe_labels: np.ndarray  # (P,) str
    impostors: np.ndarray  # (I, 18, 512) float32, I may be 0
    workload: str = "real"  # "SYNTHETIC" for generated latents: it measures the engine, not the paper
    encoder_id: str = "bench"  # encoder id the keys are enrolled under

    @classmethod
    def build(cls, gallery, gallery_labels, probes, probe_labels, impostors=None, *, workload: str = "real",
              encoder_id: str = "bench") -> "RecallData":
        """Validate shapes and labels; move labelled probes that are absent from the gallery to impostors."""
        g = check_latents(gallery, "gallery", batch=True)  # (G, 18, 512)
        p = check_latents(probes, "probes", batch=True)  # (P, 18, 512)
        gl, pl = _labels(gallery_labels, len(g), "gallery labels"), _labels(probe_labels, len(p), "probe labels")
        known = np.isin(pl, gl)
        imp = [p[~known]]
        if impostors is not None:
            imp.append(check_latents(impostors, "impostors", batch=True))
        imp_all = np.concatenate(imp) if sum(len(a) for a in imp) else np.zeros((0,) + KEY_SHAPE, np.float32)
        if not known.any():
            raise InvalidArgument("no probe label occurs in the gallery labels: nothing to recall")
        return cls(g, gl, p[known], pl[known], imp_all, workload, encoder_id)


def _labels(labels, n: int, what: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) != n:
        raise InvalidArgument(f"{what}: shape {a.shape} does not match {n} latents")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise InvalidArgument(f"{what}: float labels must be whole numbers")
        a = a.astype(np.int64)
    out = a.astype(str)
    if np.any(out == ""):
        raise InvalidArgument(f"{what}: empty label")
    return out


@dataclass(frozen=True)
class RecallConfig:
    metrics: tuple[str, ...] = METRICS  # ("cosine", "l2")
    subsets: tuple[Subset, ...] = field(default_factory=paper_subsets)  # the paper's 36 subsets
    fars: tuple[float, ...] = DEFAULT_FARS  # false-accept rates for TAR@FAR columns
    target_far: float = 1e-3  # FAR the recommended server threshold is chosen for
    threshold_layers: str = "high:4"  # subset the recommendation is for: the server's default_layers
    batch: int = 256  # probes per KeyStore.match call

    def __post_init__(self):
        if not self.metrics or any(m not in METRICS for m in self.metrics):
            raise InvalidArgument(f"metrics must be a non-empty subset of {', '.join(METRICS)}: {self.metrics}")
        for f in (*self.fars, self.target_far):
            if not 0 < f < 1:
                raise InvalidArgument(f"a false-accept rate must be in (0, 1), got {f}")
        if not self.subsets:
            raise InvalidArgument("no layer subsets")
        parse_layers(self.threshold_layers)
        if not 1 <= self.batch <= 1024:
            raise InvalidArgument(f"batch must be in 1..1024 (the engine's max_probes), got {self.batch}")


@dataclass(frozen=True)
class OperatingPoint:
    far: float  # requested false-accept rate
    threshold: float  # NaN without impostors
    tar: float  # NaN without impostors
    achieved_far: float  # FAR measured at `threshold`
    resolved: bool  # False: fewer impostors than 1/far, threshold is the zero-false-accept one


@dataclass(frozen=True)
class SubsetResult:
    subset: Subset
    metric: str
    correct: int  # genuine probes whose top-1 identity is right
    genuine: int
    genuine_scores: np.ndarray  # (P,) float64 top-1 score of every genuine probe
    genuine_correct: np.ndarray  # (P,) bool top-1 identity is right
    impostor_scores: np.ndarray  # (I,) float64 top-1 score of every impostor probe
    points: tuple[OperatingPoint, ...]  # one per RecallConfig.fars

    @property
    def accuracy(self) -> float:
        return self.correct / self.genuine


@dataclass(frozen=True)
class Recommendation:
    metric: str
    layers: str  # layer subset spec, e.g. "high:4"
    point: OperatingPoint
    engine_far: float  # FAR counted from the engine's own `accepted` flags at the threshold
    engine_tar: float  # TAR likewise

    @property
    def config_field(self) -> str:
        return "cosine_threshold" if self.metric == "cosine" else "l2_threshold"


@dataclass(frozen=True)
class RecallReport:
    workload: str
    gallery: int
    identities: int
    genuine: int
    impostors: int
    config: RecallConfig
    results: tuple[SubsetResult, ...]
    recommendations: tuple[Recommendation, ...]  # empty without impostors
    seconds: float

    def result(self, subset: str | Subset, metric: str) -> SubsetResult:
        spec = subset.spec if isinstance(subset, Subset) else subset
        for r in self.results:
            if r.subset.spec == spec and r.metric == metric:
                return r
        raise InvalidArgument(f"no result for {spec} / {metric}")


# ----------------------------------------------------------------------------------------- scoring


def _accepts(metric: str, scores: np.ndarray, t: float) -> np.ndarray:
    """The engine's rule (`facekeys.records.better`): cosine accepts >= t, L2 accepts <= t."""
    return scores >= t if metric == "cosine" else scores <= t


def threshold_at_far(metric: str, impostor_scores: np.ndarray, far: float) -> tuple[float, bool]:
    """Most permissive threshold with at most floor(far * I) impostor accepts; (threshold, resolved)."""
    s = np.asarray(impostor_scores, np.float64)
    if len(s) == 0:
        return math.nan, False
    allowed = int(math.floor(far * len(s) + 1e-9))
    resolved = allowed >= 1
    if allowed >= len(s):  # every impostor may pass: the worst impostor score itself
        return float(s.min() if metric == "cosine" else s.max()), resolved
    if metric == "cosine":
        worst_rejected = np.sort(s)[::-1][allowed]  # the (allowed+1)-th best impostor must fail
        return float(np.nextafter(worst_rejected, math.inf)), resolved
    worst_rejected = np.sort(s)[allowed]
    return float(np.nextafter(worst_rejected, -math.inf)), resolved


def operating_point(metric: str, genuine_scores: np.ndarray, genuine_correct: np.ndarray,
                    impostor_scores: np.ndarray, far: float) -> OperatingPoint:
    t, resolved = threshold_at_far(metric, impostor_scores, far)
    if math.isnan(t):
        return OperatingPoint(far, math.nan, math.nan, math.nan, False)
    tar = float(np.mean(_accepts(metric, genuine_scores, t) & genuine_correct))
    achieved = float(np.mean(_accepts(metric, impostor_scores, t)))
    return OperatingPoint(far, t, tar, achieved, resolved)


def roc_curve(metric: str, genuine_scores: np.ndarray, genuine_correct: np.ndarray,
              impostor_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at every distinct score used as threshold, from strictest to loosest."""
    g, imp = np.asarray(genuine_scores, np.float64), np.asarray(impostor_scores, np.float64)
    sign = 1.0 if metric == "cosine" else -1.0  # make "higher is better" for both
    ts = np.unique(np.concatenate([g, imp]) * sign)[::-1]  # (T,) strictest first
    gs, ims = np.sort(g[genuine_correct] * sign), np.sort(imp * sign)
    tar = (len(gs) - np.searchsorted(gs, ts, side="left")) / max(len(g), 1)
    far = (len(ims) - np.searchsorted(ims, ts, side="left")) / max(len(imp), 1)
    return far, tar


# ------------------------------------------------------------------------------------------ engine


def _enroll(store, data: RecallData) -> None:
    from facekeys.store import NewKey

    step = store.config.max_batch
    for s in range(0, len(data.gallery), step):
        store.enroll([NewKey(lat, data.encoder_id, identity_id=str(lab))
                      for lat, lab in zip(data.gallery[s:s + step], data.gallery_labels[s:s + step])])


def _top1(store, probes: np.ndarray, encoder_id: str, layers: str, metric: str, batch: int,
          threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 (identity (Q,) str, score (Q,) float64, accepted (Q,) bool) of every probe via KeyStore.match."""
    from facekeys.store import MatchQuery

    ids = np.empty(len(probes), dtype=object)
    scores = np.empty(len(probes), np.float64)
    accepted = np.zeros(len(probes), bool)
    for s in range(0, len(probes), batch):
        q = MatchQuery.build(probes[s:s + batch], encoder_id, layers=layers, metric=metric, top_k=1,
                             threshold=threshold)
        for j, r in enumerate(store.match(q).results, start=s):
            hit = r.hits[0]
            ids[j], scores[j], accepted[j] = hit.identity_id, hit.score, r.accepted
    return ids.astype(str), scores, accepted


def run_recall(data: RecallData, config: RecallConfig = RecallConfig(), progress=None) -> RecallReport:
    """Enrol the gallery once into a temporary store, then match every probe for every subset and metric."""
    from facekeys.store import KeyStore, StoreConfig

    t0 = time.perf_counter()
    probes = np.concatenate([data.probes, data.impostors])  # (P + I, 18, 512)
    n_gen = len(data.probes)
    results = []
    recs = []
    map_size = 64 * MiB + len(data.gallery) * N_LAYERS * DIM * 4 * 3
    with tempfile.TemporaryDirectory(prefix="facekeys-bench-") as tmp, \
            KeyStore.open(tmp, StoreConfig(map_size=map_size, durable=False)) as store:
        _enroll(store, data)
        for metric in config.metrics:
            for subset in config.subsets:
                ids, scores, _ = _top1(store, probes, data.encoder_id, subset.spec, metric, config.batch)
                correct = ids[:n_gen] == data.probe_labels
                gs, imp = scores[:n_gen], scores[n_gen:]
                points = tuple(operating_point(metric, gs, correct, imp, f) for f in config.fars)
                results.append(SubsetResult(subset, metric, int(correct.sum()), n_gen, gs, correct, imp, points))
                if progress:
                    progress(f"{metric:6s} {subset.spec:8s} top-1 {correct.mean():.4f}")
            if len(data.impostors):
                recs.append(_recommend(store, data, probes, config, metric))
    return RecallReport(data.workload, len(data.gallery), len(np.unique(data.gallery_labels)), n_gen,
                        len(data.impostors), config, tuple(results), tuple(recs), time.perf_counter() - t0)


def _recommend(store, data: RecallData, probes: np.ndarray, config: RecallConfig, metric: str) -> Recommendation:
    """Threshold for the target FAR on the server's default subset, then re-measured by the engine itself."""
    layers = config.threshold_layers
    ids, scores, _ = _top1(store, probes, data.encoder_id, layers, metric, config.batch)
    n_gen = len(data.probes)
    correct = ids[:n_gen] == data.probe_labels
    point = operating_point(metric, scores[:n_gen], correct, scores[n_gen:], config.target_far)
    ids, _, accepted = _top1(store, probes, data.encoder_id, layers, metric, config.batch, point.threshold)
    engine_tar = float(np.mean(accepted[:n_gen] & (ids[:n_gen] == data.probe_labels)))
    return Recommendation(metric, layers, point, float(np.mean(accepted[n_gen:])), engine_tar)


# ---------------------------------------------------------------------------------------- loading


def load_latents(path: str | Path, what: str) -> np.ndarray:
    """A `.npy` array: latents (N, 18, 512) float, or images (N, H, W, 3) uint8 (returned as is)."""
    p = Path(path)
    if p.suffix != ".npy":
        raise InvalidArgument(f"{what}: {p} is not a .npy file")
    if not p.is_file():
        raise InvalidArgument(f"{what}: {p} does not exist")
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise InvalidArgument(f"{what}: cannot read {p}: {e}") from None
    return a


def load_labels(path: str | Path, what: str) -> np.ndarray:
    """Identity labels: `.npy` 1-D array, or `.txt` with one label per line."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"{what}: {p} does not exist")
    if p.suffix == ".npy":
        a = np.load(p, allow_pickle=False)
        if a.ndim != 1:
            raise InvalidArgument(f"{what}: {p} has shape {a.shape}, expected (N,)")
        return a
    if p.suffix == ".txt":
        lines = p.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return np.array([ln.strip() for ln in lines], dtype=str)
    raise InvalidArgument(f"{what}: {p} is neither .npy nor .txt")


def encode_images(images: np.ndarray, encoder, landmarks: np.ndarray | None, what: str) -> np.ndarray:
    """Face images (N, H, W, 3) uint8 -> keys (N, 18, 512); aligned with 5 landmarks (N, 5, 2) if given."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidArgument(f"{what}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if landmarks is not None:
        if landmarks.shape != (len(images), 5, 2):
            raise InvalidArgument(f"{what}: landmarks shape {landmarks.shape} is not ({len(images)}, 5, 2)")
        from facekeys.models.align import align_face

        images = np.stack([align_face(im, lm) for im, lm in zip(images, landmarks)])  # (N, 256, 256, 3)
    elif images.shape[1:3] != (256, 256):
        raise InvalidArgument(f"{what}: images are {images.shape[1:3]}, not aligned 256x256; give landmarks")
    return encoder.encode(images)  # (N, 18, 512)


def load_encoder(checkpoint: str | Path):
    """`facekeys.models.FaceEncoder`, imported lazily (torch); a clear error when it is not installed."""
    try:
        from facekeys.models import FaceEncoder
    except ImportError as e:
        raise InvalidArgument(f"face images need facekeys.models.FaceEncoder, which cannot be imported: {e}") from None
    if not Path(checkpoint).is_file():
        raise InvalidArgument(f"encoder checkpoint {checkpoint} does not exist")
    return FaceEncoder(checkpoint)


def subsets_from_specs(specs: Sequence[str]) -> tuple[Subset, ...]:
    out = []
    for s in specs:
        family, _, k = s.strip().partition(":")
        parse_layers(s)  # validates family and k
        out.append(Subset(family, int(k)))
    return tuple(out)
