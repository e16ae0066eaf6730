"""Domain errors. Each carries an HTTP status and a stable machine-readable code.

Handlers map any :class:`KipError` to one JSON error shape (see :meth:`KipError.to_body`).
"""
from __future__ import annotations

from typing import Any


class KipError(Exception):
    status = 500
    code = "InternalError"
    #: whether the same request may succeed later (an event is retried, a client told to retry)
    retryable = True

    def __init__(self, message: str, *, field: str | None = None, allowed: str | None = None,
                 details: list[dict[str, Any]] | None = None, retry_after: int | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.allowed = allowed
        self.details = details or []
        self.retry_after = retry_after      # seconds; the Retry-After header when set
        self.extra = extra

    def to_body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.allowed is not None:
            err["allowed"] = self.allowed
        if self.details:
            err["details"] = self.details
        if self.retry_after is not None:
            err["retry_after"] = self.retry_after
        for key, value in self.extra.items():
            if value is not None:
                err[key] = value
        return {"error": err}


class ValidationError(KipError):
    status = 400
    code = "ValidationError"
    retryable = False


class Forbidden(KipError):
    status = 403
    code = "Forbidden"
    retryable = False


class NotFound(KipError):
    status = 404
    code = "NotFound"
    retryable = False


class ClusterNotFound(NotFound):
    code = "ClusterNotFound"


class RecordNotFound(NotFound):
    code = "RecordNotFound"


class Conflict(KipError):
    status = 409
    code = "Conflict"
    retryable = False


class ResourceNotOwned(Conflict):
    """A same-named resource exists that this service did not create."""
    code = "ResourceNotOwned"


class AutoModeCluster(Conflict):
    """An EKS Auto Mode cluster (computeConfig.enabled): it handles Spot interruptions itself."""
    code = "AutoModeCluster"
    retryable = False


class AlreadyHandled(Conflict):
    """Another tool already handles the cluster's interruptions (KIP_ON_EXISTING=report)."""
    code = "AlreadyHandled"
    retryable = False


class InProgress(Conflict):
    """Another run holds the cluster's lease."""
    code = "ProvisioningInProgress"
    retryable = True


class StaleWrite(Conflict):
    """The record changed since it was read (optimistic version check lost)."""
    code = "StaleRecord"
    retryable = True


class PreconditionRequired(KipError):
    """RFC 6585: a change that needs ``If-Match`` (the record's ETag) came without it."""
    status = 428
    code = "PreconditionRequired"
    retryable = False


class PreconditionFailed(KipError):
    """RFC 9110: ``If-Match`` names a version of the record that is no longer current."""
    status = 412
    code = "PreconditionFailed"
    retryable = False


class Throttled(KipError):
    status = 503
    code = "Throttled"

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)


class QuotaExceeded(KipError):
    """An AWS quota is full. Not throttling: retrying cannot help until the quota is raised or
    something is deleted, so it is final at once."""
    status = 409
    code = "QuotaExceeded"
    retryable = False


class RolePolicyQuotaExceeded(QuotaExceeded):
    """The controller role already holds as many managed policies as IAM allows (checked before
    anything is created; an automatic path records the cluster ``blocked``)."""
    code = "RolePolicyQuotaExceeded"


class AwsCallFailed(KipError):
    """A hard AWS failure part way through; the record names the step."""
    status = 502
    code = "AwsCallFailed"


class Unauthorized(KipError):
    """No credentials, or credentials that do not verify (bad signature, expired, wrong audience).

    401: the caller should get a new token. A valid token that lacks a permission is
    :class:`Forbidden` (403) instead.
    """
    status = 401
    code = "Unauthorized"


class AuthUnavailable(KipError):
    """The identity provider's key set (JWKS) could not be fetched or read: our side, retry later.

    503, never 401: a caller with a good token must not be told to log in again because the
    JWKS endpoint had a hiccup.
    """
    status = 503
    code = "AuthUnavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
