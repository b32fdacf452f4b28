"""The one place where protobuf messages and numpy/domain records are converted, both directions.

Used by the server (requests in, responses out) and by the client (the reverse). Latents travel as
packed little-endian float32 (float16 accepted) with an explicit shape.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument
from facekeys.layers import format_layers, parse_layers
from facekeys.limits import MAX_BOXES, MAX_TENSOR_DIM, MAX_TENSOR_NDIM
from facekeys.records import (
    EnrolledKey, Filter, Hit, KeyRecord, MatchQuery, MatchResult, NewKey, Obfuscation, ProbeResult, StoreStats,
    Where,
)
from facekeys.v1 import keystore_pb2 as pb

_DTYPES = {pb.DTYPE_UNSPECIFIED: np.dtype("<f4"), pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2")}
METRIC_NAMES = {pb.METRIC_UNSPECIFIED: "cosine", pb.COSINE: "cosine", pb.L2: "l2"}
METRIC_ENUMS = {"cosine": pb.COSINE, "l2": pb.L2}


# -- tensors --------------------------------------------------------------------------------------
def tensor_to_array(t: pb.Tensor, what: str) -> np.ndarray:
    """Decode a Tensor to float32, checking dtype, shape and byte length (not the key shape). Each dimension is
    checked to be in 1..MAX_TENSOR_DIM before the shape is multiplied out (in Python integers: no wrap-around)."""
    dtype = _DTYPES.get(t.dtype)
    if dtype is None:
        raise InvalidArgument(f"{what}: unknown dtype {t.dtype}")
    if not t.shape:
        raise InvalidArgument(f"{what}: shape is missing")
    if len(t.shape) > MAX_TENSOR_NDIM:
        raise InvalidArgument(f"{what}: shape has {len(t.shape)} dimensions, the limit is {MAX_TENSOR_NDIM}")
    shape = tuple(int(s) for s in t.shape)
    if not all(1 <= s <= MAX_TENSOR_DIM for s in shape):
        raise InvalidArgument(f"{what}: shape {list(shape)} has a dimension outside 1..{MAX_TENSOR_DIM}")
    expected = math.prod(shape) * dtype.itemsize
    if len(t.data) != expected:
        raise InvalidArgument(
            f"{what}: {len(t.data)} bytes do not fit shape {list(shape)} of {dtype.name} ({expected} bytes)")
    return np.frombuffer(t.data, dtype).reshape(shape).astype(np.float32)


def array_to_tensor(a: np.ndarray, dtype: str = "float32") -> pb.Tensor:
    if dtype not in ("float32", "float16"):
        raise InvalidArgument(f"wire dtype {dtype!r} is not float32 or float16")
    a = np.asarray(a)
    np_dtype = "<f4" if dtype == "float32" else "<f2"
    return pb.Tensor(data=np.ascontiguousarray(a, np_dtype).tobytes(),
                     dtype=pb.FLOAT32 if dtype == "float32" else pb.FLOAT16, shape=list(a.shape))


def key_latent(t: pb.Tensor, what: str) -> np.ndarray:
    a = tensor_to_array(t, what)
    if a.shape == (1, N_LAYERS, DIM):
        a = a[0]
    if a.shape != (N_LAYERS, DIM):
        raise InvalidArgument(f"{what}: shape {list(a.shape)} is not [{N_LAYERS}, {DIM}]")
    return a


# -- where / keys ---------------------------------------------------------------------------------
def where_to_pb(w: Where) -> pb.Where:
    boxes = np.asarray(w.boxes).reshape(-1, 5)
    return pb.Where(
        camera_id=w.camera_id, video_id=w.video_id, track_id=w.track_id, t_start=w.t_start, t_end=w.t_end,
        boxes=[pb.Box(frame_index=int(f), x=int(x), y=int(y), w=int(bw), h=int(bh)) for f, x, y, bw, bh in boxes],
    )


def where_from_pb(m: pb.Where) -> Where:
    if len(m.boxes) > MAX_BOXES:  # before building them (records.check_boxes has the same limit)
        raise InvalidArgument(f"boxes: {len(m.boxes)} boxes, the limit is {MAX_BOXES} per key")
    boxes = np.array([(b.frame_index, b.x, b.y, b.w, b.h) for b in m.boxes], np.int64).reshape(-1, 5)
    return Where(m.camera_id, m.video_id, m.track_id, m.t_start, m.t_end, boxes)


def new_key_to_pb(k: NewKey, dtype: str = "float32") -> pb.KeyInput:
    return pb.KeyInput(
        identity_id=k.identity_id, encoder_id=k.encoder_id, latent=array_to_tensor(k.latent, dtype),
        where=where_to_pb(k.where),
        obfuscation=pb.Obfuscation(method=k.obfuscation.method, strength=k.obfuscation.strength),
        attributes=dict(k.attributes),
    )


def new_key_from_pb(m: pb.KeyInput, i: int, latent: Optional[np.ndarray] = None) -> NewKey:
    """`latent` is given when the server encoded an image; else the message must carry one."""
    if latent is None:
        if m.WhichOneof("face") != "latent":
            raise InvalidArgument(f"key {i}: neither a latent nor an image was given")
        latent = key_latent(m.latent, f"key {i} latent")
    return NewKey(
        latent=latent, encoder_id=m.encoder_id, identity_id=m.identity_id, where=where_from_pb(m.where),
        obfuscation=Obfuscation(m.obfuscation.method, m.obfuscation.strength), attributes=dict(m.attributes),
    )


def enrolled_to_pb(keys: Iterable[EnrolledKey]) -> pb.EnrollResponse:
    return pb.EnrollResponse(keys=[pb.EnrolledKey(key_id=k.key_id, identity_id=k.identity_id) for k in keys])


def enrolled_from_pb(m: pb.EnrollResponse) -> list[EnrolledKey]:
    return [EnrolledKey(k.key_id, k.identity_id) for k in m.keys]


def record_to_pb(r: KeyRecord) -> pb.KeyRecord:
    return pb.KeyRecord(
        key_id=r.key_id, identity_id=r.identity_id, encoder_id=r.encoder_id,
        latent=array_to_tensor(r.latent) if r.latent is not None else None,
        where=where_to_pb(r.where), obfuscation=pb.Obfuscation(method=r.obfuscation.method,
                                                               strength=r.obfuscation.strength),
        attributes=dict(r.attributes), created_at=r.created_at,
    )


def record_from_pb(m: pb.KeyRecord) -> KeyRecord:
    return KeyRecord(
        key_id=m.key_id, identity_id=m.identity_id, encoder_id=m.encoder_id, where=where_from_pb(m.where),
        obfuscation=Obfuscation(m.obfuscation.method, m.obfuscation.strength), attributes=dict(m.attributes),
        created_at=m.created_at, latent=key_latent(m.latent, "latent") if m.HasField("latent") else None,
    )


# -- match ----------------------------------------------------------------------------------------
def filter_from_pb(m: pb.Filter) -> Filter:
    return Filter(tuple(m.camera_ids), tuple(m.identity_ids), m.t_from, m.t_to)


def filter_to_pb(f: Filter) -> pb.Filter:
    return pb.Filter(camera_ids=list(f.camera_ids), identity_ids=list(f.identity_ids), t_from=f.t_from,
                     t_to=f.t_to)


def metric_from_pb(value: int) -> str:
    name = METRIC_NAMES.get(value)
    if name is None:
        raise InvalidArgument(f"unknown metric {value}; use COSINE or L2")
    return name


def metric_to_pb(name: str) -> int:
    if name not in METRIC_ENUMS:
        raise InvalidArgument(f"unknown metric {name!r}; use cosine or l2")
    return METRIC_ENUMS[name]


def probes_from_pb(t: pb.Tensor) -> np.ndarray:
    a = tensor_to_array(t, "probe")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (N_LAYERS, DIM):
        raise InvalidArgument(f"probe: shape {list(a.shape)} is not [{N_LAYERS}, {DIM}] or [Q, {N_LAYERS}, {DIM}]")
    return a


INT32_MAX = 2**31 - 1


def match_query_to_pb(q: MatchQuery, dtype: str = "float32") -> pb.MatchRequest:
    """A latent-probe MatchRequest. Values are checked by the server; only what the wire cannot carry fails here."""
    n = q.ann_candidates
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not -INT32_MAX - 1 <= n <= INT32_MAX:
        raise InvalidArgument(f"ann_candidates must be an integer in int32 range, got {n!r}")
    return pb.MatchRequest(
        encoder_id=q.encoder_id, latents=array_to_tensor(np.asarray(q.probes), dtype), layers=format_layers(q.layers),
        metric=metric_to_pb(q.metric), top_k=q.top_k, threshold=q.threshold, filter=filter_to_pb(q.filter),
        ann_candidates=int(n), exact=bool(q.exact),
    )


def match_query_from_pb(m: pb.MatchRequest, probes: np.ndarray, encoder_id: str,
                        default_layers: tuple[int, ...]) -> MatchQuery:
    """The query of a MatchRequest whose probes (Q, 18, 512) and encoder id the caller resolved (latents or an
    encoded image); empty layers = `default_layers`, top_k 0 = 1, unset threshold = the store's default."""
    return MatchQuery(
        probes=probes, encoder_id=encoder_id, layers=parse_layers(m.layers) if m.layers else default_layers,
        metric=metric_from_pb(m.metric), top_k=m.top_k or 1,
        threshold=m.threshold if m.HasField("threshold") else None, filter=filter_from_pb(m.filter),
        ann_candidates=m.ann_candidates, exact=m.exact,
    )


def hit_to_pb(h: Hit) -> pb.Hit:
    return pb.Hit(key_id=h.key_id, identity_id=h.identity_id, score=h.score, camera_id=h.camera_id,
                  video_id=h.video_id, track_id=h.track_id, t_start=h.t_start, t_end=h.t_end)


def hit_from_pb(m: pb.Hit) -> Hit:
    return Hit(m.key_id, m.identity_id, m.score, m.camera_id, m.video_id, m.track_id, m.t_start, m.t_end)


def match_to_pb(r: MatchResult, grants: Optional[list[bytes]] = None) -> pb.MatchResponse:
    grants = grants or [b""] * len(r.results)
    return pb.MatchResponse(
        results=[pb.ProbeResult(accepted=p.accepted, hits=[hit_to_pb(h) for h in p.hits], grant=g)
                 for p, g in zip(r.results, grants)],
        layers=format_layers(r.layers), metric=metric_to_pb(r.metric), threshold=r.threshold,
        searched=r.searched,
    )


def match_from_pb(m: pb.MatchResponse) -> tuple[MatchResult, list[bytes]]:
    result = MatchResult(
        results=tuple(ProbeResult(p.accepted, tuple(hit_from_pb(h) for h in p.hits)) for p in m.results),
        layers=parse_layers(m.layers) if m.layers else (), metric=metric_from_pb(m.metric),
        threshold=m.threshold, searched=m.searched,
    )
    return result, [p.grant for p in m.results]


def stats_to_pb(s: StoreStats) -> pb.StatsResponse:
    return pb.StatsResponse(
        keys=s.keys, identities=s.identities,
        encoders=[pb.EncoderStats(encoder_id=e, keys=n, ann_candidates=s.ann_candidates_by_encoder.get(e, 0))
                  for e, n in sorted(s.keys_by_encoder.items())],
        index_bytes=s.index_bytes, lmdb_used_bytes=s.lmdb_used_bytes, lmdb_map_bytes=s.lmdb_map_bytes,
        index_mode=s.index_mode, next_key_id=s.next_key_id, ann_max_candidates=s.ann_max_candidates,
        ann_layers=format_layers(s.ann_layers) if s.ann_layers else "", ann_backend=s.ann_backend,
        gpu_index_bytes=s.gpu_index_bytes,
    )


def stats_from_pb(m: pb.StatsResponse) -> StoreStats:
    return StoreStats(
        keys=m.keys, identities=m.identities, keys_by_encoder={e.encoder_id: e.keys for e in m.encoders},
        index_bytes=m.index_bytes, lmdb_used_bytes=m.lmdb_used_bytes, lmdb_map_bytes=m.lmdb_map_bytes,
        index_mode=m.index_mode, next_key_id=m.next_key_id, ann_max_candidates=m.ann_max_candidates,
        ann_layers=parse_layers(m.ann_layers) if m.ann_layers else (),
        ann_candidates_by_encoder={e.encoder_id: e.ann_candidates for e in m.encoders},
        ann_backend=m.ann_backend, gpu_index_bytes=m.gpu_index_bytes,
    )
