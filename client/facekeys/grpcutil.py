"""Server-interceptor plumbing shared by the services: rebuild a method handler around a wrapper."""

from __future__ import annotations

from typing import Callable

import grpc

_KINDS = (
    ("unary_unary", False, grpc.unary_unary_rpc_method_handler),
    ("unary_stream", True, grpc.unary_stream_rpc_method_handler),
    ("stream_unary", False, grpc.stream_unary_rpc_method_handler),
    ("stream_stream", True, grpc.stream_stream_rpc_method_handler),
)


def rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable, bool], Callable]) -> grpc.RpcMethodHandler:
    """Return `handler` with its behaviour replaced by `wrap(behaviour, response_streaming)`."""
    for attr, streaming, make in _KINDS:
        behavior = getattr(handler, attr)
        if behavior:
            return make(wrap(behavior, streaming), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler
