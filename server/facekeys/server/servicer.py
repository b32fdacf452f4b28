"""The KeyStore gRPC servicer: thin. Decode (facekeys.wire), call the engine, encode. Errors are raised
as domain exceptions and turned into status codes by `interceptors.StatusInterceptor`."""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from facekeys import wire
from facekeys.errors import FailedPrecondition, InvalidArgument
from facekeys.layers import parse_layers
from facekeys.records import MatchQuery
from facekeys.store import KeyStore
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc

from .metrics import ServiceMetrics

NO_ENCODER = ("this server has no face encoder: start it with --encoder-checkpoint psp_ffhq_encode.pt "
              "to enrol or match images, or send latents")


class ImageEncoder(Protocol):
    """Turns a FaceImage message into a key (18, 512); provided by facekeys.server.images."""

    encoder_id: str

    def encode_message(self, image: pb.FaceImage) -> np.ndarray: ...


class KeyStoreServicer(pb_grpc.KeyStoreServicer):
    def __init__(self, store: KeyStore, metrics: ServiceMetrics, default_layers: str = "high:4",
                 encoder: Optional[ImageEncoder] = None):
        self._store = store
        self._metrics = metrics
        self._default_layers = parse_layers(default_layers)
        self._encoder = encoder

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
                m.encoder_id = self._encoder.encoder_id
                keys.append(wire.new_key_from_pb(m, i, latent))
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
        which = request.WhichOneof("probe")
        encoder_id = request.encoder_id
        if which == "image":
            probes = self._image_latent(request.image, encoder_id)[None]
            encoder_id = self._encoder.encoder_id
        elif which == "latents":
            probes = wire.probes_from_pb(request.latents)
        else:
            raise InvalidArgument("match: no probe given (latents or image)")
        query = MatchQuery(
            probes=probes, encoder_id=encoder_id,
            layers=parse_layers(request.layers) if request.layers else self._default_layers,
            metric=wire.metric_from_pb(request.metric), top_k=request.top_k or 1,
            threshold=request.threshold if request.HasField("threshold") else None,
            filter=wire.filter_from_pb(request.filter),
        )
        if not query.encoder_id:
            raise InvalidArgument("encoder_id is required")
        result = self._store.match(query)
        for p in result.results:
            self._metrics.decisions.labels("accepted" if p.accepted else "refused").inc()
        return wire.match_to_pb(result)

    def Get(self, request, context):
        return wire.record_to_pb(self._store.get(request.key_id, request.include_latent))

    def Delete(self, request, context):
        which = request.WhichOneof("target")
        if which == "key_id":
            deleted = self._store.delete_key(request.key_id)
        elif which == "identity_id":
            deleted = self._store.delete_identity(request.identity_id)
        else:
            raise InvalidArgument("delete: give a key_id or an identity_id")
        return pb.DeleteResponse(deleted_key_ids=deleted)

    def ListIdentities(self, request, context):
        page, next_after = self._store.list_identities(request.after, request.limit or 1000)
        return pb.ListIdentitiesResponse(
            identities=[pb.IdentitySummary(identity_id=i, key_count=n) for i, n in page], next_after=next_after)

    def Stats(self, request, context):
        return wire.stats_to_pb(self._store.stats())
