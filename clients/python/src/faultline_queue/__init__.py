"""Python client for Faultline, a PostgreSQL-backed job queue.

- :class:`Client` / :class:`AsyncClient`: enqueue (one, or a batch), get, list, cancel, retry,
  and the worker protocol's calls (claim, heartbeat, complete, fail, release);
- :class:`Worker`: runs handlers registered by kind, with heartbeats, stop signals, fenced
  reports and a graceful shutdown; its :class:`JobContext` has durable steps, sleeps and
  signals (``ctx.step``, ``ctx.sleep``, ``ctx.wait_for_signal``; :class:`Suspended`);
- typed errors (:mod:`faultline_queue.errors`) and the API's types as ``TypedDict``\\ s
  (:mod:`faultline_queue.types`, generated from the server's ``/openapi.json``).
"""

from .client import DEFAULT_TIMEOUT, AsyncClient, Client, Enqueued, Heartbeat, RecordedStep, __version__, job_request
from .errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    FaultlineError,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from .worker import JobContext, Permanent, Retryable, StopReason, Suspended, Worker

__all__ = [
    "DEFAULT_TIMEOUT",
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Enqueued",
    "FaultlineError",
    "Forbidden",
    "Heartbeat",
    "IdempotencyConflict",
    "InvalidInput",
    "JobContext",
    "LeaseLost",
    "NotFound",
    "PayloadTooLarge",
    "Permanent",
    "RecordedStep",
    "Retryable",
    "StopReason",
    "Suspended",
    "Unauthorized",
    "Unavailable",
    "Worker",
    "__version__",
    "job_request",
]
