"""Typed errors. Every failure the API answers is ``{"error": {"code", "message"}}`` with a
status; :func:`error_from_response` turns it into the matching :class:`ApiError` subclass."""

from __future__ import annotations

from typing import Any

import httpx


class FaultlineError(Exception):
    """Base of every error this package raises."""


class ConnectionFailed(FaultlineError):
    """The server could not be reached, or the connection broke before an answer (a timeout
    included). Whether the request took effect is unknown: retry with an idempotency key."""


class ApiError(FaultlineError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``code`` the machine-readable code (``not_found``,
    ``invalid_field``, ``idempotency_conflict``, ``lease_lost``, …), ``message`` the text for
    people, ``field`` the offending field (422) and ``job_id`` the job concerned (409), when the
    server names them. ``body`` is the decoded error document.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        job_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.job_id = job_id
        self.body = body


class InvalidInput(ApiError):
    """400 (unreadable request) or 422 (a field is invalid; ``field`` names it)."""


class Unauthorized(ApiError):
    """401: the server needs a bearer token and the one sent (if any) is wrong."""


class Forbidden(ApiError):
    """403: refused by the server's browser guards (``Origin`` or ``Host``)."""


class NotFound(ApiError):
    """404: no such job (or schedule, or route)."""


class Conflict(ApiError):
    """409: the request conflicts with the job's state (``invalid_state``) or another request."""


class IdempotencyConflict(Conflict):
    """409 ``idempotency_conflict``: the key is held by a job created from a different request
    (``job_id`` names that job)."""


class LeaseLost(Conflict):
    """409 ``lease_lost``: the lease token is no longer the job's live lease (it expired and was
    taken over, the job was cancelled, or it already finished). Nothing was changed."""


class PayloadTooLarge(ApiError):
    """413: the body is over the server's limit."""


class Unavailable(ApiError):
    """503: the server cannot reach its database right now; retry shortly."""


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for an error ``response``."""
    status = response.status_code
    body: Any = None
    code = "http_error"
    message = response.reason_phrase or f"HTTP {status}"
    field = job_id = None
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or message)
        field = detail.get("field")
        job_id = detail.get("job_id")
    cls: type[ApiError]
    if status in (400, 422):
        cls = InvalidInput
    elif status == 401:
        cls = Unauthorized
    elif status == 403:
        cls = Forbidden
    elif status == 404:
        cls = NotFound
    elif status == 409:
        if code == "lease_lost":
            cls = LeaseLost
        elif code == "idempotency_conflict":
            cls = IdempotencyConflict
        else:
            cls = Conflict
    elif status == 413:
        cls = PayloadTooLarge
    elif status == 503:
        cls = Unavailable
    else:
        cls = ApiError
    return cls(status, code, message, field=field, job_id=job_id, body=body)


__all__ = [
    "ApiError",
    "Conflict",
    "ConnectionFailed",
    "FaultlineError",
    "Forbidden",
    "IdempotencyConflict",
    "InvalidInput",
    "LeaseLost",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "error_from_response",
]
