"""Python clients of the facekeys services: numpy in, dataclasses out. Need only grpcio, protobuf, numpy."""

from .client import Client, EnrollStream, open_channel
from .recovery import RecoveredFace, RecoveryClient, RevealedVideo

__all__ = ["Client", "EnrollStream", "open_channel", "RecoveryClient", "RecoveredFace", "RevealedVideo"]
