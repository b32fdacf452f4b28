"""The Recovery gRPC servicer: thin. Decode, call the engine, encode; audit every decision. Errors are raised
as domain exceptions and turned into status codes by `facekeys.server.interceptors.StatusInterceptor`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

from facekeys.errors import PermissionDenied, Unavailable
from facekeys.security.audit import AuditLog
from facekeys.security.auth import current_principal
from facekeys.v1 import recovery_pb2 as pb
from facekeys.v1 import recovery_pb2_grpc as pb_grpc

from .engine import RecoveryEngine, VideoJob


class RecoveryServicer(pb_grpc.RecoveryServicer):
    def __init__(self, engine: RecoveryEngine, metrics, audit: Optional[AuditLog] = None):
        self._engine = engine
        self._metrics = metrics  # RecoveryMetrics
        self._audit_log = audit

    def _audit(self, who: str, action: str, what: dict, decision: str, ids) -> None:
        if self._audit_log is None:
            return
        try:
            self._audit_log.append(who, action, what, decision, list(ids))
        except Unavailable:
            self._metrics.audit_failures.inc()
            raise

    @contextmanager
    def _audited(self, action: str, what: dict, ids):
        """Audit a refusal (PERMISSION_DENIED) or, durably before the call returns, a success."""
        who = current_principal.get().name
        if self._audit_log is not None:
            self._audit_log.check()  # a log that failed verification: refused before anything is generated
        try:
            yield who
        except PermissionDenied as e:
            self._audit(who, action, what, f"refused: {e}", ids)
            raise
        self._audit(who, action, what, "done", ids)

    def Recover(self, request, context):
        ids = list(request.key_ids)
        with self._audited("Recover", {"size": request.size}, ids) as who:
            faces = self._engine.recover(request.grant, who, ids, request.size)
        self._metrics.faces.labels("recover").inc(len(faces))
        return pb.RecoverResponse(faces=[pb.RecoveredFace(key_id=r.key_id, identity_id=r.identity_id, png=png)
                                         for r, png in faces])

    def Reveal(self, request, context):
        ids = list(request.key_ids)
        jobs = [VideoJob(v.video_path, v.output_path) for v in request.videos]
        what = {"videos": [j.video_path for j in jobs]}
        with self._audited("Reveal", what, ids) as who:
            done = self._engine.reveal(request.grant, who, ids, jobs, cancelled=lambda: not context.is_active())
            what["outputs"] = [v.output_path for v in done]
        self._metrics.faces.labels("reveal").inc(len({k for v in done for k in v.key_ids}))
        self._metrics.reveal_frames.inc(sum(v.stats.frames for v in done))
        return pb.RevealResponse(videos=[
            pb.RevealedVideo(video_path=v.video_path, output_path=v.output_path, key_ids=v.key_ids,
                             frames=v.stats.frames, frames_changed=v.stats.frames_changed,
                             boxes_revealed=v.stats.boxes_revealed, boxes_skipped=v.stats.boxes_skipped)
            for v in done])
