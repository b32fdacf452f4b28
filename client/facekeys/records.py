"""Domain records shared by the engine, the server and the client. Plain dataclasses and numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from facekeys.dims import DIM, KEY_SHAPE, N_LAYERS
from facekeys.errors import InvalidArgument
from facekeys.layers import LayerSpec, parse_layers
from facekeys.limits import MAX_BOXES, MAX_FILTER_IDS, MAX_ID_LEN, MAX_LATENT_ABS, MAX_METHOD_LEN

METRICS = ("cosine", "l2")
BOX_COLUMNS = ("frame_index", "x", "y", "w", "h")


def check_latents(arr, what: str = "latent", batch: bool = False) -> np.ndarray:
    """Validate a key (18, 512) or a batch (N, 18, 512); return float32, C-contiguous."""
    a = np.asarray(arr)
    if a.dtype.kind != "f":
        raise InvalidArgument(f"{what}: dtype {a.dtype} is not floating point")
    if batch:
        if a.ndim == 2 and a.shape == KEY_SHAPE:
            a = a[None]
        if a.ndim != 3 or a.shape[1:] != KEY_SHAPE:
            raise InvalidArgument(f"{what}: shape {tuple(a.shape)} is not (N, {N_LAYERS}, {DIM})")
        if a.shape[0] == 0:
            raise InvalidArgument(f"{what}: empty batch")
    elif a.shape != KEY_SHAPE:
        raise InvalidArgument(f"{what}: shape {tuple(a.shape)} is not ({N_LAYERS}, {DIM})")
    a = np.ascontiguousarray(a, dtype=np.float32)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)  # NaN propagates through min and max
    if not -MAX_LATENT_ABS <= lo <= hi <= MAX_LATENT_ABS:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InvalidArgument(f"{what}: contains NaN or Inf")
        raise InvalidArgument(f"{what}: a value is beyond +-{MAX_LATENT_ABS:g}")
    return a


def check_finite(value, what: str) -> float:
    """A real number (not bool), finite, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgument(f"{what} must be a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range
        raise InvalidArgument(f"{what} must be finite, got an integer of {int(value).bit_length()} bits") from None
    if not math.isfinite(x):
        raise InvalidArgument(f"{what} must be finite, got {x}")
    return x


def check_id(value: str, what: str, *, required: bool, max_len: int = MAX_ID_LEN) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > max_len:
        raise InvalidArgument(f"{what} is {len(value)} characters long, the limit is {max_len}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} contains a NUL character")
    return value


def check_boxes(boxes) -> np.ndarray:
    """Per-frame blurred regions as an int32 array (M, 5): frame_index, x, y, w, h."""
    if boxes is None:
        return np.zeros((0, 5), np.int32)
    b = np.asarray(boxes)
    if b.size == 0:
        return np.zeros((0, 5), np.int32)
    if b.ndim != 2 or b.shape[1] != 5:
        raise InvalidArgument(f"boxes: shape {tuple(b.shape)[:4]} is not (M, 5) (frame_index, x, y, w, h)")
    if len(b) > MAX_BOXES:
        raise InvalidArgument(f"boxes: {len(b)} boxes, the limit is {MAX_BOXES} per key")
    if b.dtype.kind == "f":
        if not np.all(np.isfinite(b)) or np.any(b != np.round(b)):
            raise InvalidArgument("boxes: values must be whole, finite pixel numbers")
    elif b.dtype.kind not in "iu":
        raise InvalidArgument(f"boxes: dtype {b.dtype} is not numeric")
    b64 = b.astype(np.int64)
    if np.any(np.abs(b64) > 2**31 - 1):
        raise InvalidArgument("boxes: value out of int32 range")
    if np.any(b64[:, 0] < 0):
        raise InvalidArgument("boxes: frame_index must be >= 0")
    if np.any(b64[:, 3:] <= 0):
        raise InvalidArgument("boxes: w and h must be > 0")
    return b64.astype(np.int32)


@dataclass(frozen=True)
class Where:
    """Spatio-temporal index of a key: where and when the track was seen, and its blurred regions."""

    camera_id: str = ""
    video_id: str = ""
    track_id: str = ""
    t_start: float = 0.0  # capture time of the track's first frame, Unix seconds
    t_end: float = 0.0  # capture time of its last frame
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.int32))  # (M, 5) int32

    def checked(self) -> "Where":
        for name in ("camera_id", "video_id", "track_id"):
            check_id(getattr(self, name), name, required=False)
        t0, t1 = check_finite(self.t_start, "t_start"), check_finite(self.t_end, "t_end")
        if t1 < t0:
            raise InvalidArgument(f"t_end {t1} is before t_start {t0}")
        return Where(self.camera_id, self.video_id, self.track_id, t0, t1, check_boxes(self.boxes))


@dataclass(frozen=True)
class Obfuscation:
    method: str = ""  # "mosaic", "gaussian", "fill"
    strength: float = 0.0  # method-specific: blocks across the face, blur sigma, ...

    def checked(self) -> "Obfuscation":
        method = check_id(self.method, "obfuscation method", required=False, max_len=MAX_METHOD_LEN)
        return Obfuscation(method, check_finite(self.strength, "obfuscation strength"))


@dataclass(frozen=True)
class NewKey:
    """What a caller enrols. `identity_id` empty = a new identity is created."""

    latent: np.ndarray  # (18, 512)
    encoder_id: str
    identity_id: str = ""
    where: Where = field(default_factory=Where)
    obfuscation: Obfuscation = field(default_factory=Obfuscation)
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyRecord:
    key_id: int
    identity_id: str
    encoder_id: str
    where: Where
    obfuscation: Obfuscation
    attributes: Mapping[str, str]
    created_at: float
    latent: Optional[np.ndarray] = None  # (18, 512) float32 when asked for


@dataclass(frozen=True)
class EnrolledKey:
    key_id: int
    identity_id: str


@dataclass(frozen=True)
class Filter:
    """Restrict a search. Empty tuples and zero times mean unbounded."""

    camera_ids: tuple[str, ...] = ()
    identity_ids: tuple[str, ...] = ()
    t_from: float = 0.0  # keep keys whose [t_start, t_end] overlaps [t_from, t_to]
    t_to: float = 0.0

    @property
    def empty(self) -> bool:
        return not (self.camera_ids or self.identity_ids or self.t_from or self.t_to)

    def checked(self) -> "Filter":
        ids = {}
        for name in ("camera_ids", "identity_ids"):
            values = tuple(getattr(self, name))
            if len(values) > MAX_FILTER_IDS:
                raise InvalidArgument(f"filter: {len(values)} {name}, the limit is {MAX_FILTER_IDS}")
            ids[name] = tuple(check_id(v, f"filter {name[:-1]}", required=False) for v in values)
        t_from, t_to = check_finite(self.t_from, "filter t_from"), check_finite(self.t_to, "filter t_to")
        if t_from and t_to and t_to < t_from:
            raise InvalidArgument(f"filter time range is reversed: {t_from} > {t_to}")
        return Filter(ids["camera_ids"], ids["identity_ids"], t_from, t_to)


@dataclass(frozen=True)
class MatchQuery:
    probes: np.ndarray  # (Q, 18, 512)
    encoder_id: str
    layers: tuple[int, ...] = tuple(range(N_LAYERS))  # 0-based W+ indices
    metric: str = "cosine"
    top_k: int = 1
    threshold: Optional[float] = None  # None = the store's default for the metric
    filter: Filter = field(default_factory=Filter)
    # ann index mode only (exact mode ignores them): candidates taken from each group-index shard before the
    # exact re-rank (0 = the store's default, sized from the number of keys; limit StoreConfig.ann_max_candidates,
    # checked by the store in every mode), and `exact` = scan every admitted key instead (slow at scale; what ann
    # recall is measured against)
    ann_candidates: int = 0
    exact: bool = False

    def index_options(self) -> dict:
        """Keyword arguments for an ann index's search (empty when the defaults apply)."""
        opts = {}
        if self.ann_candidates:
            opts["candidates"] = self.ann_candidates
        if self.exact:
            opts["exact"] = True
        return opts

    @classmethod
    def build(
        cls,
        probes,
        encoder_id: str,
        layers: LayerSpec = "all",
        metric: str = "cosine",
        top_k: int = 1,
        threshold: Optional[float] = None,
        filter: Optional[Filter] = None,
        ann_candidates: int = 0,
        exact: bool = False,
    ) -> "MatchQuery":
        return cls(
            probes=check_latents(probes, "probe", batch=True),
            encoder_id=check_id(encoder_id, "encoder_id", required=True),
            layers=parse_layers(layers),
            metric=metric,
            top_k=top_k,
            threshold=threshold,
            filter=filter or Filter(),
            ann_candidates=ann_candidates,
            exact=exact,
        )


@dataclass(frozen=True)
class Hit:
    key_id: int
    identity_id: str
    score: float  # cosine similarity (higher is better) or L2 distance (lower is better)
    camera_id: str
    video_id: str
    track_id: str
    t_start: float
    t_end: float


@dataclass(frozen=True)
class ProbeResult:
    accepted: bool
    hits: tuple[Hit, ...]


@dataclass(frozen=True)
class MatchResult:
    results: tuple[ProbeResult, ...]
    layers: tuple[int, ...]
    metric: str
    threshold: float
    searched: int  # keys that passed the filter, per probe


@dataclass(frozen=True)
class StoreStats:
    keys: int
    identities: int
    keys_by_encoder: Mapping[str, int]
    index_bytes: int
    lmdb_used_bytes: int
    lmdb_map_bytes: int
    index_mode: str
    next_key_id: int
    ann_max_candidates: int = 0  # the largest MatchQuery.ann_candidates the store accepts
    ann_layers: tuple[int, ...] = ()  # the subset ann_candidates_by_encoder is sized for
    # ann mode: candidates per shard an unfiltered match over ann_layers takes by default at the index's current
    # size (what ann_candidates=0 means now); 0 = such a match scans every key exactly (exact mode, not trained
    # yet, or too few keys to be worth approximating)
    ann_candidates_by_encoder: Mapping[str, int] = field(default_factory=dict)
    ann_backend: str = ""  # ann mode: "pq", "flat-gpu" or "flat-cpu" (StoreConfig.ann_backend resolved); exact: ""
    gpu_index_bytes: int = 0  # bytes of the flat candidate indexes on the GPU


def better(metric: str, a: float, b: float) -> bool:
    """True if score a passes threshold/beats b under the metric."""
    return a >= b if metric == "cosine" else a <= b


