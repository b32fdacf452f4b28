"""Domain errors shared by the engine, the server and the client.

The engine raises these; the server maps each class to one gRPC status code in a single interceptor
(`facekeys.server.interceptors`); the client maps status codes back to the same classes. Nothing here
imports grpc.
"""


class FacekeysError(Exception):
    """Base class. `code` names the gRPC status the server answers with."""

    code = "INTERNAL"


class InvalidArgument(FacekeysError, ValueError):
    code = "INVALID_ARGUMENT"


class NotFound(FacekeysError, KeyError):
    code = "NOT_FOUND"

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(FacekeysError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(FacekeysError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(FacekeysError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(FacekeysError):
    code = "PERMISSION_DENIED"


class Unauthenticated(FacekeysError):
    code = "UNAUTHENTICATED"


class Unavailable(FacekeysError):
    code = "UNAVAILABLE"


BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
    )
}
