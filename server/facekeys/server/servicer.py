"""The KeyStore gRPC servicer: thin. Decode (facekeys.wire), call the engine, encode. Errors are raised
as domain exceptions and turned into status codes by `interceptors.StatusInterceptor`."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from typing import Callable, Optional, Protocol

import numpy as np

from facekeys import wire
from facekeys.errors import FacekeysError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from facekeys.layers import format_layers, parse_layers
from facekeys.records import MatchResult, better
from facekeys.security.audit import AuditLog
from facekeys.security.auth import current_principal
from facekeys.security.grants import GrantSigner
from facekeys.store import KeyStore
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc

from .metrics import ServiceMetrics

log = logging.getLogger("facekeys.server")

REASON_CHARS = 500  # of an error message kept in an audit record

NO_ENCODER = ("this server has no face encoder: start it with --encoder-checkpoint psp_ffhq_encode.pt "
              "to enrol or match images, or send latents")


class ImageEncoder(Protocol):
    """Turns a FaceImage message into a key (18, 512); provided by facekeys.server.images."""

    encoder_id: str

    def encode_message(self, image: pb.FaceImage) -> np.ndarray: ...


class KeyStoreServicer(pb_grpc.KeyStoreServicer):
    def __init__(self, store: KeyStore, metrics: ServiceMetrics, default_layers: str = "high:4",
                 encoder: Optional[ImageEncoder] = None, audit: Optional[AuditLog] = None,
                 grants: Optional[GrantSigner] = None):
        self._store = store
        self._metrics = metrics
        self._default_layers = parse_layers(default_layers)
        self._encoder = encoder
        self._audit_log = audit
        self._grants = grants

    def _audit(self, action: str, what: dict, decision: str = "", ids=()) -> None:
        """Durably record an action before the call returns; a failed append fails the call."""
        if self._audit_log is None:
            return
        try:
            self._audit_log.append(current_principal.get().name, action, what, decision, list(ids))
        except (Unavailable, FailedPrecondition):
            self._metrics.audit_failures.inc()
            raise

    def _require_audit(self) -> None:
        """Calls that must be audited are refused up front while the log failed verification."""
        if self._audit_log is not None:
            self._audit_log.check()

    @contextmanager
    def _invalid_audited(self, action: str, what: dict):
        """A request refused for what it asks (bad argument, no such key, no encoder) is audited as
        "invalid" with the reason (never a latent), then answered with its error as usual."""
        try:
            yield
        except (InvalidArgument, NotFound, FailedPrecondition) as e:
            try:
                self._audit(action, {**what, "reason": str(e)[:REASON_CHARS], "code": e.code}, "invalid")
            except (Unavailable, FailedPrecondition) as audit_error:  # counted; the call fails with its own error
                log.warning("%s refused (%s) and not audited: %s", action, e.code, audit_error)
            raise

    def _grant(self, result: MatchResult) -> list[bytes]:
        """Sign, per accepted probe, the hits of the best identity that pass the threshold."""
        if self._grants is None:
            return [b""] * len(result.results)
        out = []
        for p in result.results:
            if not p.accepted:
                out.append(b"")
                continue
            who = p.hits[0].identity_id
            ids = [h.key_id for h in p.hits if h.identity_id == who and better(result.metric, h.score, result.threshold)]
            out.append(self._grants.sign(ids, who, current_principal.get().name))
        return out

    def _image_latent(self, image: pb.FaceImage, encoder_id: str) -> np.ndarray:
        if self._encoder is None:
            raise FailedPrecondition(NO_ENCODER)
        if encoder_id and encoder_id != self._encoder.encoder_id:
            raise InvalidArgument(
                f"encoder_id {encoder_id!r} differs from this server's encoder {self._encoder.encoder_id!r}")
        return self._encoder.encode_message(image)

    def _new_keys(self, request: pb.EnrollRequest):
        keys = []
        for i, m in enumerate(request.keys):
            if m.WhichOneof("face") == "image":
                latent = self._image_latent(m.image, m.encoder_id)
                key = wire.new_key_from_pb(m, i, latent)
                keys.append(dataclasses.replace(key, encoder_id=self._encoder.encoder_id))
            else:
                keys.append(wire.new_key_from_pb(m, i))
        return keys

    def _enroll(self, request: pb.EnrollRequest) -> pb.EnrollResponse:
        enrolled = self._store.enroll(self._new_keys(request))
        self._metrics.enrolled.inc(len(enrolled))
        return wire.enrolled_to_pb(enrolled)

    def Enroll(self, request, context):
        return self._enroll(request)

    def EnrollStream(self, request_iterator, context):
        for request in request_iterator:
            yield self._enroll(request)  # each ack follows its batch's durable commit

    def Match(self, request, context):
        self._require_audit()
        which = request.WhichOneof("probe")
        with self._invalid_audited("Match", {"probe": which or "", "encoder_id": request.encoder_id[:256]}):
            query, probes = self._match_query(request, which)
            result = self._store.match(query)
        decisions = ["accepted" if p.accepted else "refused" for p in result.results]
        self._audit("Match", {
            "encoder_id": query.encoder_id, "layers": format_layers(query.layers), "metric": query.metric,
            "top_k": query.top_k, "threshold": result.threshold, "probes": len(probes), "probe": which,
            "ann_candidates": query.ann_candidates, "exact": query.exact,
            "filter": {"camera_ids": list(query.filter.camera_ids), "identity_ids": list(query.filter.identity_ids),
                       "t_from": query.filter.t_from, "t_to": query.filter.t_to},
        }, ",".join(decisions), [h.key_id for p in result.results for h in p.hits])
        for d in decisions:
            self._metrics.decisions.labels(d).inc()
        return wire.match_to_pb(result, self._grant(result))

    def _match_query(self, request, which):
        encoder_id = request.encoder_id
        if which == "image":
            probes = self._image_latent(request.image, encoder_id)[None]
            encoder_id = self._encoder.encoder_id
        elif which == "latents":
            probes = wire.probes_from_pb(request.latents)
        else:
            raise InvalidArgument("match: no probe given (latents or image)")
        query = wire.match_query_from_pb(request, probes, encoder_id, self._default_layers)
        if not query.encoder_id:
            raise InvalidArgument("encoder_id is required")
        return query, probes

    def Get(self, request, context):
        if request.include_latent:
            self._require_audit()
        record = self._store.get(request.key_id, request.include_latent)
        if request.include_latent:
            self._audit("GetLatent", {"key_id": request.key_id}, "returned", [request.key_id])
        return wire.record_to_pb(record)

    def Delete(self, request, context):
        self._require_audit()
        which = request.WhichOneof("target")
        target = {which: getattr(request, which)} if which else {}
        if which == "identity_id":
            target[which] = target[which][:256]
        with self._invalid_audited("Delete", target):
            if which == "key_id":
                deleted = self._store.delete_key(request.key_id)
            elif which == "identity_id":
                deleted = self._store.delete_identity(request.identity_id)
            else:
                raise InvalidArgument("delete: give a key_id or an identity_id")
        self._audit("Delete", target, "deleted", deleted)
        return pb.DeleteResponse(deleted_key_ids=deleted)

    def ListIdentities(self, request, context):
        page, next_after = self._store.list_identities(request.after, request.limit or 1000)
        return pb.ListIdentitiesResponse(
            identities=[pb.IdentitySummary(identity_id=i, key_count=n) for i, n in page], next_after=next_after)

    def Stats(self, request, context):
        return wire.stats_to_pb(self._store.stats(self._default_layers))


def denial_recorder(audit: AuditLog, metrics: ServiceMetrics) -> Callable[[str, str, str, str], None]:
    """`record(who, method, code, reason)` for calls the auth interceptor refused (PERMISSION_DENIED,
    UNAUTHENTICATED): one "denied" record each. Best effort: the call is refused either way, so a failed
    append is logged and counted, not raised."""

    def record(who: str, method: str, code: str, reason: str) -> None:
        try:
            audit.append(who, method.rsplit("/", 1)[-1], {"method": method[:256], "code": code,
                                                          "reason": reason[:REASON_CHARS]}, "denied")
        except FacekeysError as e:
            metrics.audit_failures.inc()
            log.warning("denied call not audited: %s", e, extra={"rpc": method, "code": code})

    return record
