"""The HTTP clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), with the
same methods.

Each method is described once, as a :class:`_Call` (method, path, body, how to read the
answer), built by :class:`_Calls`; the two clients differ only in how they send it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Generic, TypeVar, cast
from urllib.parse import quote

import httpx

from ._generated import (
    BatchResult,
    ClaimRequest,
    CompleteBatchRequest,
    CompleteItem,
    CompleteOutcome,
    CompleteRequest,
    FailRequest,
    HeartbeatBatchRequest,
    HeartbeatOutcome,
    HeartbeatRequest,
    Job,
    LeaseItem,
    LeaseRequest,
    Page,
    QueuesResponse,
    SleepRequest,
    SleepResponse,
    Step,
    StepRequest,
    WaitRequest,
    WaitResponse,
    WorkersResponse,
)
from .errors import ConnectionFailed, error_from_response

__version__ = "0.1.0"

T = TypeVar("T")

#: Default time a request may take (seconds). A claim's long poll adds its ``wait_ms``.
DEFAULT_TIMEOUT = 30.0

_UNSET: Any = object()


@dataclass(frozen=True)
class Enqueued:
    """The answer to :meth:`Client.enqueue`: the job, and whether this request created it.

    ``created`` is true for a new job (201). Otherwise (200) the job already existed:
    ``replayed`` when an earlier request with the same idempotency key and the same body made
    it, ``duplicate`` when a job with the same uniqueness key is in its scope.
    """

    job: Job
    created: bool
    replayed: bool = False
    duplicate: bool = False

    @property
    def id(self) -> str:
        """The job's id."""
        return self.job["id"]


@dataclass(frozen=True)
class Heartbeat:
    """The answer to a heartbeat: the lease's new expiry (database clock, RFC 3339) and whether
    the job's cancellation was requested (the handler should stop)."""

    lease_expires_at: str | None
    cancel_requested: bool


@dataclass(frozen=True)
class RecordedStep:
    """The answer to :meth:`Client.record_step`: the step as the server holds it, and whether
    this call recorded it (201) or found it recorded earlier (200: the first result stands)."""

    step: Step
    created: bool

    @property
    def result(self) -> Any:
        """The step's recorded result (``None`` for ``null``)."""
        return self.step.get("result")


@dataclass
class _Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    body: Any = _UNSET
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None


def _ms(value: int | float | timedelta | None, name: str) -> int | None:
    """Milliseconds from an int (already milliseconds) or a ``timedelta``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be milliseconds (int) or a timedelta, got {value!r}")
    return int(value)


def _rfc3339(value: datetime | str | None, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return value.isoformat()
    raise TypeError(f"{name} must be a datetime or an RFC 3339 string, got {value!r}")


def job_request(
    kind: str,
    payload: Any = _UNSET,
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    run_at: datetime | str | None = None,
    idempotency_key: str | None = None,
    timeout_ms: int | timedelta | None = None,
    concurrency_key: str | None = None,
    depends_on: Sequence[str | uuid.UUID | int] | None = None,
    unique_key: str | None = None,
    unique_scope: str | None = None,
    unique_period_ms: int | timedelta | None = None,
) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body (also one entry of a batch), leaving out what is not given.

    ``payload`` is any JSON value (``{}`` on the server when left out; ``None`` sends ``null``).
    ``run_at`` is a timezone-aware ``datetime`` or an RFC 3339 string. ``timeout_ms`` and
    ``unique_period_ms`` take milliseconds or a ``timedelta``. ``depends_on`` holds job ids,
    or in a batch also the index of an earlier job of the same batch. ``unique_scope`` is
    ``"active"`` or ``"period"`` (the latter with ``unique_period_ms``).
    """
    body: dict[str, Any] = {"kind": kind}
    if payload is not _UNSET:
        body["payload"] = payload
    optional: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
        "run_at": _rfc3339(run_at, "run_at"),
        "idempotency_key": idempotency_key,
        "timeout_ms": _ms(timeout_ms, "timeout_ms"),
        "concurrency_key": concurrency_key,
        "unique_key": unique_key,
        "unique_scope": unique_scope,
        "unique_period_ms": _ms(unique_period_ms, "unique_period_ms"),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if depends_on is not None:
        body["depends_on"] = [d if isinstance(d, int) else str(d) for d in depends_on]
    return body


def _json(response: httpx.Response) -> Any:
    return response.json()


def _job_path(job_id: str | uuid.UUID, tail: str = "") -> str:
    return f"/v1/jobs/{quote(str(job_id), safe='')}{tail}"


def _enqueued(response: httpx.Response) -> Enqueued:
    return Enqueued(
        job=response.json(),
        created=response.status_code == 201,
        replayed=response.headers.get("idempotent-replayed", "").lower() == "true",
        duplicate=response.headers.get("unique-duplicate", "").lower() == "true",
    )


def _recorded_step(response: httpx.Response) -> RecordedStep:
    return RecordedStep(step=response.json(), created=response.status_code == 201)


def _heartbeat(response: httpx.Response) -> Heartbeat:
    body = response.json()
    return Heartbeat(
        lease_expires_at=body.get("lease_expires_at"),
        cancel_requested=bool(body.get("cancel_requested", False)),
    )


class _Calls:
    """What every API call sends and how its answer is read; shared by both clients."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self._headers = {"User-Agent": f"faultline-queue-python/{__version__}", "Accept": "application/json"}
        if headers:
            self._headers.update(headers)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    # Enqueue and inspect (SPEC §5).

    def _enqueue(self, kind: str, payload: Any, traceparent: str | None, options: dict[str, Any]) -> _Call[Enqueued]:
        body = job_request(kind, payload, **options)
        headers = {"traceparent": traceparent} if traceparent else {}
        return _Call("POST", "/v1/jobs", _enqueued, body=body, headers=headers)

    def _enqueue_batch(self, jobs: Sequence[Mapping[str, Any]], traceparent: str | None) -> _Call[list[BatchResult]]:
        bodies = [job_request(**dict(job)) for job in jobs]
        headers = {"traceparent": traceparent} if traceparent else {}
        return _Call(
            "POST",
            "/v1/jobs/batch",
            lambda r: cast("list[BatchResult]", r.json()["results"]),
            body={"jobs": bodies},
            headers=headers,
        )

    def _get_job(self, job_id: str | uuid.UUID) -> _Call[Job]:
        return _Call("GET", _job_path(job_id), _json)

    def _get_job_raw(self, job_id: str | uuid.UUID) -> _Call[bytes]:
        return _Call("GET", _job_path(job_id), lambda r: r.content)

    def _list_jobs(
        self,
        state: str | None,
        queue: str | None,
        kind: str | None,
        limit: int | None,
        cursor: str | None,
        fields: str | Sequence[str] | None,
    ) -> _Call[Page]:
        if fields is not None and not isinstance(fields, str):
            fields = ",".join(fields)
        params = {"state": state, "queue": queue, "kind": kind, "limit": limit, "cursor": cursor, "fields": fields}
        return _Call("GET", "/v1/jobs", _json, params={k: v for k, v in params.items() if v is not None})

    def _cancel(self, job_id: str | uuid.UUID) -> _Call[Job]:
        return _Call("POST", _job_path(job_id, "/cancel"), _json, body=None)

    def _retry(self, job_id: str | uuid.UUID) -> _Call[Job]:
        return _Call("POST", _job_path(job_id, "/retry"), _json, body=None)

    def _dependents(self, job_id: str | uuid.UUID) -> _Call[list[Job]]:
        return _Call("GET", _job_path(job_id, "/dependents"), lambda r: r.json()["jobs"])

    def _list_queues(self) -> _Call[QueuesResponse]:
        return _Call("GET", "/v1/queues", _json)

    def _list_workers(self) -> _Call[WorkersResponse]:
        return _Call("GET", "/v1/workers", _json)

    def _ready(self) -> _Call[bool]:
        return _Call("GET", "/ready", lambda r: True)

    # The worker protocol (SPEC §15).

    def _claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        max: int | None,
        wait_ms: int | None,
        lease_ttl_ms: int | None,
    ) -> _Call[list[Job]]:
        body: ClaimRequest = {"worker_id": worker_id, "queues": list(queues)}
        if max is not None:
            body["max"] = max
        if wait_ms is not None:
            body["wait_ms"] = wait_ms
        if lease_ttl_ms is not None:
            body["lease_ttl_ms"] = lease_ttl_ms
        # A long poll answers after up to wait_ms: the request may take that much longer.
        timeout = self.timeout + (wait_ms or 0) / 1000
        return _Call("POST", "/v1/claims", lambda r: r.json()["jobs"], body=body, timeout=timeout)

    def _heartbeat(self, job_id: str | uuid.UUID, lease_token: int, lease_ttl_ms: int | None) -> _Call[Heartbeat]:
        body: HeartbeatRequest = {"lease_token": lease_token}
        if lease_ttl_ms is not None:
            body["lease_ttl_ms"] = lease_ttl_ms
        return _Call("POST", _job_path(job_id, "/heartbeat"), _heartbeat, body=body)

    def _heartbeat_batch(
        self, jobs: Sequence[Mapping[str, Any]], lease_ttl_ms: int | None
    ) -> _Call[list[HeartbeatOutcome]]:
        items: list[LeaseItem] = [{"id": str(job["id"]), "lease_token": int(job["lease_token"])} for job in jobs]
        body: HeartbeatBatchRequest = {"jobs": items}
        if lease_ttl_ms is not None:
            body["lease_ttl_ms"] = lease_ttl_ms
        return _Call(
            "POST", "/v1/jobs/heartbeat", lambda r: cast("list[HeartbeatOutcome]", r.json()["results"]), body=body
        )

    def _complete(self, job_id: str | uuid.UUID, lease_token: int, result: Any) -> _Call[Job]:
        body: CompleteRequest = {"lease_token": lease_token}
        if result is not _UNSET and result is not None:
            body["result"] = result
        return _Call("POST", _job_path(job_id, "/complete"), _json, body=body)

    def _complete_batch(self, jobs: Sequence[Mapping[str, Any]]) -> _Call[list[CompleteOutcome]]:
        items: list[CompleteItem] = []
        for job in jobs:
            item: CompleteItem = {"id": str(job["id"]), "lease_token": int(job["lease_token"])}
            result = job.get("result", _UNSET)
            if result is not _UNSET and result is not None:
                item["result"] = result
            items.append(item)
        body: CompleteBatchRequest = {"jobs": items}
        return _Call(
            "POST", "/v1/jobs/complete", lambda r: cast("list[CompleteOutcome]", r.json()["results"]), body=body
        )

    def _fail(
        self,
        job_id: str | uuid.UUID,
        lease_token: int,
        error: str,
        retryable: bool | None,
        retry_after_ms: int | timedelta | None,
    ) -> _Call[Job]:
        body: FailRequest = {"lease_token": lease_token, "error": error}
        if retryable is not None:
            body["retryable"] = retryable
        after = _ms(retry_after_ms, "retry_after_ms")
        if after is not None:
            body["retry_after_ms"] = max(0, after)
        return _Call("POST", _job_path(job_id, "/fail"), _json, body=body)

    def _release(self, job_id: str | uuid.UUID, lease_token: int) -> _Call[Job]:
        body: LeaseRequest = {"lease_token": lease_token}
        return _Call("POST", _job_path(job_id, "/release"), _json, body=body)

    # Durable steps, sleeps and signals (docs/durable.md, "Over HTTP").

    def _steps(self, job_id: str | uuid.UUID) -> _Call[list[Step]]:
        return _Call("GET", _job_path(job_id, "/steps"), lambda r: cast("list[Step]", r.json()["steps"]))

    def _record_step(self, job_id: str | uuid.UUID, lease_token: int, name: str, result: Any) -> _Call[RecordedStep]:
        body: StepRequest = {"lease_token": lease_token}
        if result is not _UNSET:
            body["result"] = result
        return _Call("PUT", _job_path(job_id, f"/steps/{quote(name, safe='')}"), _recorded_step, body=body)

    def _sleep_job(
        self, job_id: str | uuid.UUID, lease_token: int, until: datetime | str, seq: int | None
    ) -> _Call[SleepResponse]:
        body: SleepRequest = {"lease_token": lease_token, "until": cast(str, _rfc3339(until, "until"))}
        if seq is not None:
            body["seq"] = seq
        return _Call("POST", _job_path(job_id, "/sleep"), _json, body=body)

    def _wait_for_signal(
        self, job_id: str | uuid.UUID, lease_token: int, signal: str, timeout_ms: int | timedelta
    ) -> _Call[WaitResponse]:
        ms = _ms(timeout_ms, "timeout_ms")
        body: WaitRequest = {"lease_token": lease_token, "signal": signal, "timeout_ms": max(0, ms or 0)}
        return _Call("POST", _job_path(job_id, "/wait"), _json, body=body)

    def _send_signal(self, job_id: str | uuid.UUID, name: str, payload: Any) -> _Call[bool]:
        body: dict[str, Any] = {} if payload is _UNSET else {"payload": payload}
        return _Call(
            "POST",
            _job_path(job_id, f"/signals/{quote(name, safe='')}"),
            lambda r: bool(r.json()["kept"]),
            body=body,
        )

    # Sending.

    def _request_args(self, call: _Call[Any]) -> dict[str, Any]:
        headers = dict(self._headers)
        headers.update(call.headers)
        args: dict[str, Any] = {"params": call.params, "headers": headers}
        if call.body is not _UNSET:
            # Every mutating route wants this content type, even one without a body.
            headers["Content-Type"] = "application/json"
            if call.body is not None:
                args["content"] = json.dumps(call.body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        if call.timeout is not None:
            args["timeout"] = call.timeout
        return args

    @staticmethod
    def _finish(call: _Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from_response(response)
        return call.parse(response)


def _connection_failed(call: _Call[Any], error: httpx.HTTPError) -> ConnectionFailed:
    return ConnectionFailed(f"{call.method} {call.path}: {type(error).__name__}: {error}")


class Client(_Calls):
    """A blocking client of Faultline's HTTP API.

    ``Client("http://127.0.0.1:8000", token=None, timeout=30)``; use it as a context manager, or
    call :meth:`close`. Errors are :class:`~faultline_queue.errors.ApiError` subclasses for an
    error status and :class:`~faultline_queue.errors.ConnectionFailed` for a network failure.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        *,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, headers)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **self._request_args(call))
        except httpx.TransportError as e:
            raise _connection_failed(call, e) from e
        return self._finish(call, response)

    def enqueue(
        self,
        kind: str,
        payload: Any = _UNSET,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | str | None = None,
        idempotency_key: str | None = None,
        timeout_ms: int | timedelta | None = None,
        concurrency_key: str | None = None,
        depends_on: Sequence[str | uuid.UUID | int] | None = None,
        unique_key: str | None = None,
        unique_scope: str | None = None,
        unique_period_ms: int | timedelta | None = None,
        traceparent: str | None = None,
    ) -> Enqueued:
        """Enqueue a job (``POST /v1/jobs``).

        Options, each left out when not given: ``queue``, ``priority``, ``max_attempts``,
        ``run_at``, ``idempotency_key``, ``timeout_ms``, ``concurrency_key``, ``depends_on``,
        ``unique_key``, ``unique_scope``, ``unique_period_ms`` (see :func:`job_request`), and
        ``traceparent`` (sent as the W3C header). Returns :class:`Enqueued`.
        """
        options = dict(
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            idempotency_key=idempotency_key,
            timeout_ms=timeout_ms,
            concurrency_key=concurrency_key,
            depends_on=depends_on,
            unique_key=unique_key,
            unique_scope=unique_scope,
            unique_period_ms=unique_period_ms,
        )
        return self._send(self._enqueue(kind, payload, traceparent, options))

    def enqueue_batch(self, jobs: Sequence[Mapping[str, Any]], *, traceparent: str | None = None) -> list[BatchResult]:
        """Enqueue up to 1,000 jobs in one transaction (``POST /v1/jobs/batch``). Each entry is a
        mapping of :func:`job_request`'s arguments (``{"kind": ..., "payload": ..., ...}``).
        Returns one result per job, in order: ``{"status": "created" | "replayed" |
        "duplicate", "job": {...}}`` or ``{"status": "conflict", "idempotency_key",
        "existing_job_id"}``."""
        return self._send(self._enqueue_batch(jobs, traceparent))

    def get_job(self, job_id: str | uuid.UUID) -> Job:
        """The job, with its error history (``GET /v1/jobs/{id}``)."""
        return self._send(self._get_job(job_id))

    def get_job_raw(self, job_id: str | uuid.UUID) -> bytes:
        """The job's JSON exactly as the server sent it: its payload and result keep their key
        order and number spelling (a float that Python would round, for one)."""
        return self._send(self._get_job_raw(job_id))

    def list_jobs(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        fields: str | Sequence[str] | None = None,
    ) -> Page:
        """A page of jobs, newest first: ``{"jobs": [...], "next_cursor": str | None}``.
        ``fields`` adds bulky fields (``payload``, ``result``, ``errors`` or ``all``)."""
        return self._send(self._list_jobs(state, queue, kind, limit, cursor, fields))

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        """Every job matching ``filters`` (as :meth:`list_jobs`), following the cursor."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list_jobs(cursor=cursor, **filters)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str | uuid.UUID) -> Job:
        """Cancel a queued, waiting or running job (a running one's worker is told to stop)."""
        return self._send(self._cancel(job_id))

    def retry(self, job_id: str | uuid.UUID) -> Job:
        """Re-queue a failed or cancelled job with a fresh attempt budget."""
        return self._send(self._retry(job_id))

    def dependents(self, job_id: str | uuid.UUID) -> list[Job]:
        """The jobs that depend on this one."""
        return self._send(self._dependents(job_id))

    def list_queues(self) -> QueuesResponse:
        """Per queue: counts by state, oldest eligible age, settings."""
        return self._send(self._list_queues())

    def list_workers(self) -> WorkersResponse:
        """Live worker processes."""
        return self._send(self._list_workers())

    def ready(self) -> bool:
        """True when the server answers ``/ready`` with 200 (its database is up)."""
        return self._send(self._ready())

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        max: int | None = None,
        wait_ms: int | None = None,
        lease_ttl_ms: int | None = None,
    ) -> list[Job]:
        """Claim up to ``max`` jobs (``POST /v1/claims``); each carries its ``lease_token``."""
        return self._send(self._claim(worker_id, queues, max, wait_ms, lease_ttl_ms))

    def heartbeat(self, job_id: str | uuid.UUID, lease_token: int, *, lease_ttl_ms: int | None = None) -> Heartbeat:
        """Extend a lease by ``lease_ttl_ms`` (send the claim's; the server's default otherwise).
        Raises :class:`~faultline_queue.errors.LeaseLost` when it is gone."""
        return self._send(self._heartbeat(job_id, lease_token, lease_ttl_ms))

    def heartbeat_batch(
        self, jobs: Sequence[Mapping[str, Any]], *, lease_ttl_ms: int | None = None
    ) -> list[HeartbeatOutcome]:
        """Extend many leases in one request (``POST /v1/jobs/heartbeat``, 1 to 1,000), each by
        ``lease_ttl_ms`` and fenced by its own token: ``jobs`` holds ``{"id", "lease_token"}``
        mappings. Returns one ``{"id", "outcome", "lease_expires_at"?}`` per job, in order:
        ``outcome`` is ``"extended"`` (with the new expiry), ``"cancelled"`` (the job was
        cancelled: stop it) or ``"lease_lost"`` (the token no longer holds the job: stop, report
        nothing). A stale token does not stop the others."""
        return self._send(self._heartbeat_batch(jobs, lease_ttl_ms))

    def complete(self, job_id: str | uuid.UUID, lease_token: int, result: Any = _UNSET) -> Job:
        """Report success, with an optional JSON ``result`` (fenced by ``lease_token``)."""
        return self._send(self._complete(job_id, lease_token, result))

    def complete_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[CompleteOutcome]:
        """Report many successes in one request (``POST /v1/jobs/complete``, 1 to 1,000), each
        fenced by its own token: ``jobs`` holds ``{"id", "lease_token", "result"?}`` mappings.
        Returns one ``{"id", "outcome", "message"?}`` per job, in order: ``outcome`` is
        ``"completed"``, ``"lease_lost"`` (the token no longer holds the job: nothing changed,
        as a 409 on :meth:`complete`) or ``"invalid"`` (the result was refused, e.g. too large:
        nothing changed, the lease still holds). A stale token does not stop the others."""
        return self._send(self._complete_batch(jobs))

    def fail(
        self,
        job_id: str | uuid.UUID,
        lease_token: int,
        error: str,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | timedelta | None = None,
    ) -> Job:
        """Report a failed attempt: retried (with backoff or after ``retry_after_ms``) unless
        ``retryable`` is false or the attempts are spent."""
        return self._send(self._fail(job_id, lease_token, error, retryable, retry_after_ms))

    def release(self, job_id: str | uuid.UUID, lease_token: int) -> Job:
        """Hand a lease back: the job is queued again without spending an attempt."""
        return self._send(self._release(job_id, lease_token))

    def steps(self, job_id: str | uuid.UUID) -> list[Step]:
        """The steps the job recorded, oldest first (``GET /v1/jobs/{id}/steps``), the
        library's own (named ``faultline:…``: sleeps, waits, signals) included."""
        return self._send(self._steps(job_id))

    def send_signal(self, job_id: str | uuid.UUID, name: str, payload: Any = _UNSET) -> bool:
        """Send signal ``name`` to a job (``POST /v1/jobs/{id}/signals/{name}``), with an optional
        JSON ``payload`` (``null`` when left out). Returns whether it was kept: ``False`` when a
        signal of that name had been sent already (the first is kept). A signal sent before the
        job waits for it is kept for that wait. Raises :class:`~faultline_queue.errors.NotFound`
        for an unknown job, :class:`~faultline_queue.errors.Conflict` for a finished one."""
        return self._send(self._send_signal(job_id, name, payload))

    def record_step(self, job_id: str | uuid.UUID, lease_token: int, name: str, result: Any = _UNSET) -> RecordedStep:
        """Record step ``name`` of a claimed job under its lease, once (``PUT
        /v1/jobs/{id}/steps/{name}``). A worker's handler uses :meth:`JobContext.step` instead.
        Raises :class:`~faultline_queue.errors.LeaseLost` when the token no longer holds the job."""
        return self._send(self._record_step(job_id, lease_token, name, result))

    def sleep_job(
        self, job_id: str | uuid.UUID, lease_token: int, until: datetime | str, *, seq: int | None = None
    ) -> SleepResponse:
        """Sleep a claimed job durably until ``until`` (``POST /v1/jobs/{id}/sleep``; ``seq``: which
        sleep of the handler, from 1). ``{"state": "sleeping"}``: the job was put back (stop, report
        nothing); ``"over"``: go on. A handler uses :meth:`JobContext.sleep` instead."""
        return self._send(self._sleep_job(job_id, lease_token, until, seq))

    def wait_for_signal(
        self, job_id: str | uuid.UUID, lease_token: int, signal: str, timeout_ms: int | timedelta
    ) -> WaitResponse:
        """Wait for signal ``signal`` (``POST /v1/jobs/{id}/wait``): ``{"outcome": "signalled",
        "payload"}``, ``"timed_out"``, or ``"parked"`` (the job now waits in ``waiting``: stop,
        report nothing). A handler uses :meth:`JobContext.wait_for_signal` instead."""
        return self._send(self._wait_for_signal(job_id, lease_token, signal, timeout_ms))


class AsyncClient(_Calls):
    """The asyncio twin of :class:`Client`: the same methods, awaited. Use ``async with`` or
    ``await client.aclose()``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        *,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        super().__init__(base_url, token, timeout, headers)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=transport, limits=limits)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, **self._request_args(call))
        except httpx.TransportError as e:
            raise _connection_failed(call, e) from e
        return self._finish(call, response)

    async def enqueue(
        self,
        kind: str,
        payload: Any = _UNSET,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | str | None = None,
        idempotency_key: str | None = None,
        timeout_ms: int | timedelta | None = None,
        concurrency_key: str | None = None,
        depends_on: Sequence[str | uuid.UUID | int] | None = None,
        unique_key: str | None = None,
        unique_scope: str | None = None,
        unique_period_ms: int | timedelta | None = None,
        traceparent: str | None = None,
    ) -> Enqueued:
        """See :meth:`Client.enqueue`."""
        options = dict(
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            idempotency_key=idempotency_key,
            timeout_ms=timeout_ms,
            concurrency_key=concurrency_key,
            depends_on=depends_on,
            unique_key=unique_key,
            unique_scope=unique_scope,
            unique_period_ms=unique_period_ms,
        )
        return await self._send(self._enqueue(kind, payload, traceparent, options))

    async def enqueue_batch(
        self, jobs: Sequence[Mapping[str, Any]], *, traceparent: str | None = None
    ) -> list[BatchResult]:
        """See :meth:`Client.enqueue_batch`."""
        return await self._send(self._enqueue_batch(jobs, traceparent))

    async def get_job(self, job_id: str | uuid.UUID) -> Job:
        """See :meth:`Client.get_job`."""
        return await self._send(self._get_job(job_id))

    async def get_job_raw(self, job_id: str | uuid.UUID) -> bytes:
        """See :meth:`Client.get_job_raw`."""
        return await self._send(self._get_job_raw(job_id))

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        fields: str | Sequence[str] | None = None,
    ) -> Page:
        """See :meth:`Client.list_jobs`."""
        return await self._send(self._list_jobs(state, queue, kind, limit, cursor, fields))

    async def iter_jobs(self, **filters: Any) -> AsyncIterator[Job]:
        """See :meth:`Client.iter_jobs`."""
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list_jobs(cursor=cursor, **filters)
            for job in page["jobs"]:
                yield job
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def cancel(self, job_id: str | uuid.UUID) -> Job:
        """See :meth:`Client.cancel`."""
        return await self._send(self._cancel(job_id))

    async def retry(self, job_id: str | uuid.UUID) -> Job:
        """See :meth:`Client.retry`."""
        return await self._send(self._retry(job_id))

    async def dependents(self, job_id: str | uuid.UUID) -> list[Job]:
        """See :meth:`Client.dependents`."""
        return await self._send(self._dependents(job_id))

    async def list_queues(self) -> QueuesResponse:
        """See :meth:`Client.list_queues`."""
        return await self._send(self._list_queues())

    async def list_workers(self) -> WorkersResponse:
        """See :meth:`Client.list_workers`."""
        return await self._send(self._list_workers())

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        return await self._send(self._ready())

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        *,
        max: int | None = None,
        wait_ms: int | None = None,
        lease_ttl_ms: int | None = None,
    ) -> list[Job]:
        """See :meth:`Client.claim`."""
        return await self._send(self._claim(worker_id, queues, max, wait_ms, lease_ttl_ms))

    async def heartbeat(
        self, job_id: str | uuid.UUID, lease_token: int, *, lease_ttl_ms: int | None = None
    ) -> Heartbeat:
        """See :meth:`Client.heartbeat`."""
        return await self._send(self._heartbeat(job_id, lease_token, lease_ttl_ms))

    async def heartbeat_batch(
        self, jobs: Sequence[Mapping[str, Any]], *, lease_ttl_ms: int | None = None
    ) -> list[HeartbeatOutcome]:
        """See :meth:`Client.heartbeat_batch`."""
        return await self._send(self._heartbeat_batch(jobs, lease_ttl_ms))

    async def complete(self, job_id: str | uuid.UUID, lease_token: int, result: Any = _UNSET) -> Job:
        """See :meth:`Client.complete`."""
        return await self._send(self._complete(job_id, lease_token, result))

    async def complete_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[CompleteOutcome]:
        """See :meth:`Client.complete_batch`."""
        return await self._send(self._complete_batch(jobs))

    async def fail(
        self,
        job_id: str | uuid.UUID,
        lease_token: int,
        error: str,
        *,
        retryable: bool | None = None,
        retry_after_ms: int | timedelta | None = None,
    ) -> Job:
        """See :meth:`Client.fail`."""
        return await self._send(self._fail(job_id, lease_token, error, retryable, retry_after_ms))

    async def release(self, job_id: str | uuid.UUID, lease_token: int) -> Job:
        """See :meth:`Client.release`."""
        return await self._send(self._release(job_id, lease_token))

    async def steps(self, job_id: str | uuid.UUID) -> list[Step]:
        """See :meth:`Client.steps`."""
        return await self._send(self._steps(job_id))

    async def send_signal(self, job_id: str | uuid.UUID, name: str, payload: Any = _UNSET) -> bool:
        """See :meth:`Client.send_signal`."""
        return await self._send(self._send_signal(job_id, name, payload))

    async def record_step(
        self, job_id: str | uuid.UUID, lease_token: int, name: str, result: Any = _UNSET
    ) -> RecordedStep:
        """See :meth:`Client.record_step`."""
        return await self._send(self._record_step(job_id, lease_token, name, result))

    async def sleep_job(
        self, job_id: str | uuid.UUID, lease_token: int, until: datetime | str, *, seq: int | None = None
    ) -> SleepResponse:
        """See :meth:`Client.sleep_job`."""
        return await self._send(self._sleep_job(job_id, lease_token, until, seq))

    async def wait_for_signal(
        self, job_id: str | uuid.UUID, lease_token: int, signal: str, timeout_ms: int | timedelta
    ) -> WaitResponse:
        """See :meth:`Client.wait_for_signal`."""
        return await self._send(self._wait_for_signal(job_id, lease_token, signal, timeout_ms))


__all__ = ["DEFAULT_TIMEOUT", "AsyncClient", "Client", "Enqueued", "Heartbeat", "RecordedStep", "job_request"]
