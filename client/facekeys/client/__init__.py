"""Python client of the facekeys key store: numpy in, dataclasses out. Needs only grpcio, protobuf, numpy."""

from .client import Client, EnrollStream, open_channel

__all__ = ["Client", "EnrollStream", "open_channel"]
