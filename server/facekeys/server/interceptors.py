"""The one place where exceptions become gRPC status codes, and where every call is timed and counted."""

from __future__ import annotations

import logging
import time

import grpc

from facekeys.errors import FacekeysError
from facekeys.grpcutil import rewrap
from facekeys.limits import clip
from facekeys.security.auth import refused_caller

from .metrics import ServiceMetrics

log = logging.getLogger("facekeys.server")


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, FacekeysError):
        return grpc.StatusCode[exc.code], clip(str(exc))  # bounded, whatever the message quotes
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


class StatusInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to status codes, logs failures, records per-method/per-code metrics."""

    def __init__(self, metrics: ServiceMetrics):
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        method = full.rsplit("/", 1)[-1]
        return rewrap(handler, lambda behavior, streaming: (self._streaming if streaming else self._unary)(
            method, behavior, full))

    def _fail(self, method, context, exc, t0, full=""):
        code, message = _status(exc)
        who = refused_caller(exc)  # refused by the auth policy: audited as "denied" where the server audits
        if who is not None and self._metrics.on_denied is not None:
            self._metrics.on_denied(who, full, code.name, message)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method, extra={"rpc": method, "code": code.name})
        else:
            log.warning("%s: %s %s", method, code.name, message, extra={"rpc": method, "code": code.name})
        self._metrics.observe(method, code.name, time.perf_counter() - t0)
        context.abort(code, message)

    def _done(self, method, context, t0):
        code = context.code() or grpc.StatusCode.OK  # a cancelled call may carry its own code
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self._metrics.observe(method, name, time.perf_counter() - t0)

    def _unary(self, method, behavior, full):
        def wrapper(request, context):
            t0 = time.perf_counter()
            try:
                response = behavior(request, context)
            except Exception as exc:  # every error leaves through _fail with a status
                self._fail(method, context, exc, t0, full)
            self._done(method, context, t0)
            return response

        return wrapper

    def _streaming(self, method, behavior, full):
        def wrapper(request, context):
            t0 = time.perf_counter()
            try:
                yield from behavior(request, context)
            except Exception as exc:
                self._fail(method, context, exc, t0, full)
            self._done(method, context, t0)

        return wrapper
