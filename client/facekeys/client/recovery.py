"""Client of the recovery service: turn an accepted Match's grant into faces (Recover) or revealed
videos (Reveal). Needs only grpcio, protobuf, numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from facekeys.v1 import recovery_pb2 as pb
from facekeys.v1 import recovery_pb2_grpc as pb_grpc

from .client import ChannelClient, _translated


@dataclass(frozen=True)
class RecoveredFace:
    key_id: int
    identity_id: str
    png: bytes  # FFHQ-aligned face, size x size


@dataclass(frozen=True)
class RevealedVideo:
    video_path: str
    output_path: str
    key_ids: tuple[int, ...]
    frames: int
    frames_changed: int
    boxes_revealed: int
    boxes_skipped: int


class RecoveryClient(ChannelClient):
    """`RecoveryClient("127.0.0.1:50052", token=..., tls_ca=...)`; grants come from `Client.match_with_grants`."""

    stub_class = pb_grpc.RecoveryStub

    def __init__(self, target: str, timeout: float = 600.0, **channel):
        super().__init__(target, timeout, **channel)

    @_translated
    def recover(self, grant: bytes, key_ids: Sequence[int], size: int = 256) -> list[RecoveredFace]:
        r = self._stub.Recover(pb.RecoverRequest(grant=grant, key_ids=list(key_ids), size=size), timeout=self.timeout)
        return [RecoveredFace(f.key_id, f.identity_id, f.png) for f in r.faces]

    @_translated
    def reveal(self, grant: bytes, key_ids: Sequence[int], videos: Sequence[tuple[str, str]]) -> list[RevealedVideo]:
        """`videos`: (archive-relative input, output-relative result; "" = a generated name) pairs."""
        request = pb.RevealRequest(grant=grant, key_ids=list(key_ids),
                                   videos=[pb.RevealVideo(video_path=v, output_path=o) for v, o in videos])
        r = self._stub.Reveal(request, timeout=self.timeout)
        return [RevealedVideo(v.video_path, v.output_path, tuple(v.key_ids), v.frames, v.frames_changed,
                              v.boxes_revealed, v.boxes_skipped) for v in r.videos]
