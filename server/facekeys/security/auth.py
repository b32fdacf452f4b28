"""Authentication and authorisation, checked in one interceptor. Deny by default: a method absent from
the policy is refused. No or bad credential: UNAUTHENTICATED; wrong role: PERMISSION_DENIED.

Credentials: `authorization: Bearer <token>` metadata, or (with mutual TLS) the client certificate,
whose subject common name must name a credential; its roles come from that credential.

Refusals raise `Denied` / `NotAuthenticated`, which name the caller: the status interceptor hands them to
the server's audit log as "denied" records (`facekeys.server.servicer.denial_recorder`).
"""

from __future__ import annotations

import contextvars
from typing import Mapping, Optional

import grpc

from facekeys.errors import PermissionDenied, Unauthenticated
from facekeys.grpcutil import rewrap

from .credentials import CredentialStore, Principal

ANONYMOUS = Principal("anonymous", frozenset())
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)

PUBLIC = object()  # callable without a credential


class Denied(PermissionDenied):
    """PERMISSION_DENIED from the policy, naming the caller (for the audit record of the refusal)."""

    def __init__(self, message: str, who: str):
        super().__init__(message)
        self.who = who


class NotAuthenticated(Unauthenticated):
    """UNAUTHENTICATED from the policy; `who` is what the caller claimed to be (a certificate's name), or
    "anonymous" (no credential, or a token that matches none: a token is never recorded)."""

    def __init__(self, message: str, who: str = ANONYMOUS.name):
        super().__init__(message)
        self.who = who


def refused_caller(exc: BaseException) -> Optional[str]:
    """Who the auth policy refused, if `exc` is such a refusal (else None)."""
    return exc.who if isinstance(exc, (Denied, NotAuthenticated)) else None

POLICY: Mapping[str, object] = {
    "/facekeys.v1.KeyStore/Enroll": {"gateway"},
    "/facekeys.v1.KeyStore/EnrollStream": {"gateway"},
    "/facekeys.v1.KeyStore/Match": {"investigator"},
    "/facekeys.v1.KeyStore/Get": {"admin", "recovery"},  # latents: only the recovery service and admins
    "/facekeys.v1.KeyStore/Delete": {"admin"},
    "/facekeys.v1.KeyStore/ListIdentities": {"admin"},
    "/facekeys.v1.KeyStore/Stats": {"admin"},
    "/facekeys.v1.Recovery/Recover": {"revealer"},
    "/facekeys.v1.Recovery/Reveal": {"revealer"},
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {"admin"},
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": {"admin"},
}


def _principal(context, creds: CredentialStore) -> Optional[Principal]:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise NotAuthenticated("authorization metadata must be 'Bearer <token>'")
            p = creds.authenticate(token.strip())
            if p is None:
                raise NotAuthenticated("unknown or revoked token")
            return p
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or []
    if names:
        name = names[0].decode()
        matches = [c for c in creds.list() if c.name == name and c.revoked is None]
        if not matches:
            raise NotAuthenticated(f"client certificate {name!r} names no active credential", name[:256])
        return Principal(name, frozenset(r for c in matches for r in c.roles))
    return None


def authorize(method: str, context, creds: CredentialStore) -> Principal:
    rule = POLICY.get(method)
    if rule is PUBLIC:
        return ANONYMOUS
    principal = _principal(context, creds)
    if principal is None:
        raise NotAuthenticated("no credential: send 'authorization: Bearer <token>' or a client certificate")
    if rule is None:
        raise Denied(f"{method} is not allowed to anyone", principal.name)
    if not principal.roles & rule:
        raise Denied(f"{principal.name} lacks the role for {method.rsplit('/', 1)[-1]} "
                     f"(needs {' or '.join(sorted(rule))})", principal.name)
    return principal


class AuthInterceptor(grpc.ServerInterceptor):
    """Runs inside the status interceptor, so its errors become status codes in the one usual place."""

    def __init__(self, creds: CredentialStore):
        self._creds = creds

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        creds = self._creds

        def guard(behavior, streaming):
            if streaming:
                def wrapper(request, context):
                    token = current_principal.set(authorize(method, context, creds))
                    try:
                        yield from behavior(request, context)
                    finally:
                        current_principal.reset(token)
            else:
                def wrapper(request, context):
                    token = current_principal.set(authorize(method, context, creds))
                    try:
                        return behavior(request, context)
                    finally:
                        current_principal.reset(token)
            return wrapper

        return rewrap(handler, guard)
