"""The worker runner: claim jobs over HTTP, run their handlers, keep their leases alive, report.

One asyncio loop does everything that talks to the server (SPEC §15):

- the **claim loop** long-polls ``POST /v1/claims`` for as many jobs as there are free slots
  (``concurrency`` minus the jobs in flight), and starts each job it gets;
- one **heartbeat** task renews the leases of all running jobs every third of the TTL, in one
  ``POST /v1/jobs/heartbeat`` per 1,000 jobs (``batch_heartbeats=False``, or a server without
  that route, gives each job a heartbeat task of its own, as described next). A refusal
  (409 ``lease_lost``) sets the handler's stop signal (reason ``lease_lost``, or ``cancelled``
  when the job was cancelled) and its result is never reported; an answer with
  ``cancel_requested`` sets it with reason ``cancelled``. When heartbeats cannot get through for
  two thirds of the TTL, the handler is told to stop too (self-fencing: another worker may be
  about to take the job);
- when the handler returns, its result is **reported** (complete or fail), fenced by the lease
  token. Successes are coalesced: a completion waits at most ``completion_linger`` (or until
  ``completion_batch`` are pending) and goes out with the others in one ``POST /v1/jobs/complete``,
  each still fenced by its own token (``batch_completions=False`` sends one complete per job).
  A report that fails on the network is retried with backoff until the lease would have
  expired; after that the server hands the job to another worker, so giving up loses nothing;
- on **shutdown** (SIGTERM/SIGINT under :meth:`Worker.run`, or the ``stop_event`` of
  :meth:`Worker.run_async`) claiming stops, running handlers get ``grace`` to finish, then are
  told to stop (reason ``shutdown``) and their leases are handed back (``release``: the job is
  queued again at once and the attempt is not spent). Jobs claimed but not started are handed
  back at once.

Async handlers run on the loop; plain functions run in a thread pool of ``concurrency`` threads.

A handler may also use **durable steps, sleeps and signals** (docs/durable.md): ``ctx.step``
records a step's result under the lease once (a later run of the job gets it back without running
the step again), ``ctx.sleep`` / ``ctx.sleep_until`` and ``ctx.wait_for_signal`` hand the job back
to the server until a time or a signal. A sleep or a wait that suspends the job raises
:class:`Suspended`: the worker then reports nothing for this run (the server already moved the job).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar, Union

from ._generated import Job
from .client import _UNSET, AsyncClient, Client
from .errors import ApiError, ConnectionFailed, FaultlineError, InvalidInput, LeaseLost, NotFound, PayloadTooLarge

log = logging.getLogger("faultline_queue.worker")

StopReason = Literal["lease_lost", "cancelled", "shutdown", "timeout"]
Handler = Callable[[Job, "JobContext"], Union[Any, Awaitable[Any]]]
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Retryable(Exception):
    """Raise from a handler to fail this attempt and have it retried: after ``after`` (seconds
    or a ``timedelta``), or after the server's backoff when ``after`` is None. Once the job's
    attempts are spent it fails for good."""

    def __init__(self, message: str = "", after: float | timedelta | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.after = after


class Permanent(Exception):
    """Raise from a handler to fail the job for good: no retry can fix it."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class Suspended(BaseException):
    """The job was handed back to the server by a durable sleep (``ctx.sleep``,
    ``ctx.sleep_until``) or a wait for a signal (``ctx.wait_for_signal``): it runs again, from the
    top, at that time or when the signal comes, its recorded steps returning at once. The worker
    reports nothing for this run.

    Let it propagate out of the handler. It derives from ``BaseException`` so that a handler's
    ``except Exception`` does not swallow it (a handler that swallows it anyway still has
    nothing reported: the worker knows the run was suspended).
    """


#: Step names starting with this are the server's own (sleeps, waits, signals).
RESERVED_STEP_PREFIX = "faultline:"


def _name_problem(name: Any, what: str) -> str | None:
    if not isinstance(name, str):
        return f"{what} must be a string, got {type(name).__name__}"
    if not name.strip():
        return f"{what} {name!r} must not be empty or blank"
    if len(name.encode()) > 255:
        return f"{what} {name[:40]!r}… is {len(name.encode())} bytes; at most 255 allowed"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return f"{what} {name!r} contains a control character"
    return None


def _seconds(value: float | timedelta, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"{name} must not be negative")
    return seconds


def default_worker_id() -> str:
    """``host-pid-random``, as the Rust worker names itself."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class JobContext:
    """What a handler knows about its attempt, and its stop signal.

    ``stopped`` is a ``threading.Event`` for a plain (thread) handler and an ``asyncio.Event``
    for an async one; it is set when the handler should stop, and ``stop_reason`` then says
    why: ``"lease_lost"`` (another worker may run the job; the result will not be reported),
    ``"cancelled"`` (the job was cancelled), ``"shutdown"`` (the worker is stopping and hands
    the job back) or ``"timeout"`` (the job's ``timeout_ms`` passed).
    """

    def __init__(self, job: Job, worker_id: str, is_async: bool) -> None:
        self.job = job
        self.job_id: str = job["id"]
        self.kind: str = job["kind"]
        self.queue: str = job["queue"]
        self.attempt: int = job["attempts"]
        self.max_attempts: int = job["max_attempts"]
        #: The fencing token of this attempt's lease: use it to make side effects idempotent.
        self.lease_token: int = int(job.get("lease_token") or 0)
        self.lease_expires_at: str | None = job.get("lease_expires_at")
        self.worker_id = worker_id
        self.stop_reason: StopReason | None = None
        self._thread_event = threading.Event()
        self._async_event = asyncio.Event() if is_async else None
        #: Set by the worker: what durable calls need (its client, its loop, this attempt).
        self._runtime: _Runtime | None = None
        #: Recorded results by step name: the job's steps (read at the first ``step`` call of the
        #: run: a claim's answer leaves them out) plus this run's records. While this lease holds,
        #: no one else can record a step of this job.
        self._steps: dict[str, Any] | None = None
        self._sleeps = 0
        self._lock = threading.Lock()
        #: This run handed the job back (a sleep or a wait): nothing is reported for it.
        self.suspended = False

    @property
    def payload(self) -> Any:
        """The job's payload."""
        return self.job.get("payload")

    @property
    def stopped(self) -> Any:
        """The stop signal: ``asyncio.Event`` for async handlers, ``threading.Event`` otherwise."""
        return self._async_event if self._async_event is not None else self._thread_event

    def should_stop(self) -> bool:
        """True once the handler has been told to stop."""
        return self._thread_event.is_set()

    def _stop(self, reason: StopReason) -> bool:
        """Set the stop signal (on the loop's thread). The first reason is kept."""
        if self._thread_event.is_set():
            return False
        self.stop_reason = reason
        self._thread_event.set()
        if self._async_event is not None:
            self._async_event.set()
        return True

    # Durable steps, sleeps and signals (docs/durable.md). In an async handler each of these
    # returns an awaitable; in a plain (thread) handler it blocks and returns the value.

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as the durable step ``name`` of this job, once.

        If the job recorded a step of that name (in this run or an earlier one), its recorded
        result is returned and ``fn`` is not called. Otherwise ``fn()`` runs (a plain function,
        or one returning an awaitable) and its result (JSON: ``None``, bool, number, str, list,
        dict) is recorded under this attempt's lease; the recorded result is returned (the first
        one, should the same name have been recorded meanwhile). A step that raises records
        nothing. Names are 1–255 bytes without control characters; ``faultline:…`` is reserved.

        ``await ctx.step(...)`` in an async handler; ``ctx.step(...)`` in a plain one.

        Raises :class:`~faultline_queue.errors.LeaseLost` when the lease was lost (nothing was
        recorded; the handler is told to stop and its outcome is not reported) and
        :class:`Permanent` for a bad name or a result that is not JSON (or over the server's
        limit).
        """
        if self._async_event is not None:
            return self._step_async(name, fn)
        return self._step_blocking(name, fn)

    def sleep(self, duration: float | timedelta) -> Any:
        """Sleep durably for ``duration`` (seconds or a ``timedelta``) from the first run that
        asked: see :meth:`sleep_until`."""
        seconds = _seconds(duration, "duration")
        until = datetime.now(timezone.utc) + timedelta(seconds=min(seconds, 36_500 * 86_400))
        return self.sleep_until(until)

    def sleep_until(self, until: datetime) -> Any:
        """Sleep durably until ``until`` (timezone-aware): the job gives back its worker slot and
        its lease, and is claimed again at that time without spending an attempt. Until then this
        raises :class:`Suspended` (let it propagate: the worker reports nothing for this run);
        when the job runs again, the same call (the handler's n-th sleep) returns, keeping the
        time recorded the first time. A time already past returns at once.

        ``await ctx.sleep_until(...)`` in an async handler; ``ctx.sleep_until(...)`` in a plain one.
        """
        if not isinstance(until, datetime) or until.tzinfo is None:
            raise ValueError("until must be a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
        with self._lock:
            self._sleeps += 1
            seq = self._sleeps
        if self._async_event is not None:
            return self._sleep_async(until, seq)
        self._runtime_or_raise().run(self._sleep_async(until, seq))
        return None

    def wait_for_signal(self, name: str, timeout: float | timedelta, default: Any = None) -> Any:
        """Wait for the signal ``name`` (``POST /v1/jobs/{id}/signals/{name}``, or
        :meth:`Client.send_signal`), at most ``timeout`` (seconds or a ``timedelta``) from the
        first call: its payload once it came (a signal sent before the wait counts; ``None`` for
        a signal sent without one), ``default`` once the timeout passed without it. Until then
        the job parks in ``waiting`` and this raises :class:`Suspended` (let it propagate); the
        signal or the timeout runs the job again from the top, and this same call then answers.

        ``await ctx.wait_for_signal(...)`` in an async handler; ``ctx.wait_for_signal(...)`` in a
        plain one.
        """
        problem = _name_problem(name, "signal name")
        if problem:
            raise Permanent(problem)
        timeout_ms = int(_seconds(timeout, "timeout") * 1000)
        if self._async_event is not None:
            return self._wait_async(name, timeout_ms, default)
        return self._runtime_or_raise().run(self._wait_async(name, timeout_ms, default))

    def _runtime_or_raise(self) -> _Runtime:
        if self._runtime is None:
            raise FaultlineError("durable steps, sleeps and signals need a context made by a running Worker")
        return self._runtime

    @staticmethod
    def _check_step(name: str) -> None:
        problem = _name_problem(name, "step name")
        if problem is None and name.startswith(RESERVED_STEP_PREFIX):
            problem = f"step name {name!r}: names starting with {RESERVED_STEP_PREFIX!r} are the library's own"
        if problem:
            raise Permanent(problem)

    async def _recorded(self, name: str) -> tuple[bool, Any]:
        """Whether step ``name`` is recorded, and its result."""
        runtime = self._runtime_or_raise()
        if self._steps is None:
            steps = await runtime.call("steps", lambda c: c.steps(self.job_id))
            with self._lock:
                if self._steps is None:
                    self._steps = {step["name"]: step.get("result") for step in steps}
        with self._lock:
            assert self._steps is not None
            if name in self._steps:
                return True, self._steps[name]
        return False, None

    async def _record(self, name: str, result: Any) -> Any:
        runtime = self._runtime_or_raise()
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise Permanent(f"step {name!r}: the result is not JSON: {type(e).__name__}: {e}") from e
        recorded = await runtime.call(
            f"step {name!r}", lambda c: c.record_step(self.job_id, self.lease_token, name, result)
        )
        with self._lock:
            assert self._steps is not None
            self._steps.setdefault(name, recorded.result)
            return self._steps[name]

    async def _step_async(self, name: str, fn: Callable[[], Any]) -> Any:
        self._check_step(name)
        found, value = await self._recorded(name)
        if found:
            return value
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        return await self._record(name, result)

    def _step_blocking(self, name: str, fn: Callable[[], Any]) -> Any:
        self._check_step(name)
        runtime = self._runtime_or_raise()
        found, value = runtime.run(self._recorded(name))
        if found:
            return value
        result = fn()  # in the handler's thread
        if inspect.isawaitable(result):
            result = runtime.run(_awaited(result))
        return runtime.run(self._record(name, result))

    async def _sleep_async(self, until: datetime, seq: int) -> None:
        runtime = self._runtime_or_raise()
        answer = await runtime.call("sleep", lambda c: c.sleep_job(self.job_id, self.lease_token, until, seq=seq))
        if answer.get("state") == "over":
            return
        runtime.suspended(f"sleeping until {answer.get('until')}")
        raise Suspended(f"job {self.job_id} sleeps until {answer.get('until')}")

    async def _wait_async(self, name: str, timeout_ms: int, default: Any) -> Any:
        runtime = self._runtime_or_raise()
        answer = await runtime.call(
            f"wait for {name!r}", lambda c: c.wait_for_signal(self.job_id, self.lease_token, name, timeout_ms)
        )
        outcome = answer.get("outcome")
        if outcome == "signalled":
            return answer.get("payload")
        if outcome == "timed_out":
            return default
        runtime.suspended(f"waiting for signal {name!r} until {answer.get('until')}")
        raise Suspended(f"job {self.job_id} waits for signal {name!r} until {answer.get('until')}")


async def _awaited(value: Awaitable[T]) -> T:
    return await value


class _Runtime:
    """What a context's durable calls need: the worker's client and loop, and the attempt."""

    def __init__(self, worker: Worker, client: AsyncClient, active: _Active) -> None:
        self.worker = worker
        self.client = client
        self.active = active
        self.loop = asyncio.get_running_loop()

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the worker's loop from a handler's thread, and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def suspended(self, why: str) -> None:
        """The server took the job back (a sleep or a wait): stop its heartbeats; nothing is
        reported for this run. On the loop."""
        active = self.active
        active.ctx.suspended = True
        active.stop_heartbeats()
        log.info("job %s: %s; the job is handed back, nothing reported for this run", active.ctx.job_id, why)

    async def call(self, what: str, send: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """A durable call, fenced by the lease. Network failures and 5xx are retried with backoff
        until the lease would have expired (each call is idempotent: a step records once, a
        sleep keeps its first time, a wait its first answer). A lost lease stops the handler
        like any lease loss and raises :class:`LeaseLost`; a refused name or result raises
        :class:`Permanent`."""
        active = self.active
        ctx = active.ctx
        delay = 0.1
        while True:
            try:
                return await send(self.client)
            except (LeaseLost, NotFound) as e:
                active.lease_lost = True
                if ctx._stop("lease_lost"):
                    log.warning("job %s: %s refused, the lease is lost (%s); stopping its handler", ctx.job_id, what, e.message)
                if isinstance(e, LeaseLost):
                    raise
                raise LeaseLost(e.status, "lease_lost", e.message, job_id=ctx.job_id, body=e.body) from e
            except (InvalidInput, PayloadTooLarge) as e:
                raise Permanent(f"{what} refused by the server: {e.message}") from e
            except (ConnectionFailed, ApiError) as e:
                if isinstance(e, ApiError) and not _transient(e):
                    raise
                if time.monotonic() + delay >= active.lease_deadline:
                    raise
                log.warning("job %s: %s failed (%s); retrying in %.1f s", ctx.job_id, what, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _Active:
    """A claimed job on this worker, from claim to report."""

    def __init__(self, job: Job, ctx: JobContext, lease_deadline: float) -> None:
        self.job = job
        self.ctx = ctx
        #: Monotonic time past which the lease may have expired (send time of the last
        #: successful claim or heartbeat, plus the TTL): reports are not retried past it.
        self.lease_deadline = lease_deadline
        self.last_renewed = lease_deadline
        #: "running" (handler in flight), "reporting", then "done".
        self.phase = "running"
        #: The server said the lease is gone: nothing more is sent for it.
        self.lease_lost = False
        #: Handed back at shutdown: nothing more is sent for it either.
        self.released = False
        self.task: asyncio.Task[None] | None = None
        self.handler_task: asyncio.Future[Any] | None = None
        #: The worker cancelled the handler (timeout, or still running after a shutdown).
        self.handler_cancelled = False
        self.heartbeat_task: asyncio.Task[None] | None = None
        #: Its lease is renewed (by the worker's batched heartbeats, or by ``heartbeat_task``).
        self.heartbeating = False

    def stop_heartbeats(self) -> None:
        self.heartbeating = False
        if self.heartbeat_task is not None:
            self.heartbeat_task.cancel()


class _Completions:
    """Coalesces the worker's successful completions into ``POST /v1/jobs/complete`` batches.

    :meth:`submit` queues one completion and returns a future of its outcome: ``("completed",
    None)``, ``("lease_lost", message)``, ``("invalid", message)``, or ``("error", message)`` when
    the batch itself got no usable answer (the caller then reports that job on its own, with
    the single ``complete`` and its retries). A batch goes out ``linger`` seconds after its first
    completion, or at once when ``max_batch`` are pending; several may be in flight.
    """

    def __init__(self, client: AsyncClient, linger: float, max_batch: int) -> None:
        self._client = client
        self._linger = linger
        self._max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], asyncio.Future[tuple[str, str | None]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        #: False once the server showed it has no batch route (an older server).
        self.enabled = True

    def submit(self, job_id: str, lease_token: int, result: Any) -> asyncio.Future[tuple[str, str | None]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, str | None]] = loop.create_future()
        item: dict[str, Any] = {"id": job_id, "lease_token": lease_token}
        if result is not None:
            item["result"] = result
        self._pending.append((item, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[tuple[str, str | None]]]]) -> None:
        try:
            outcomes = await self._client.complete_batch([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise ValueError(f"{len(outcomes)} outcomes for {len(batch)} completions")
        except Exception as e:
            if isinstance(e, ApiError) and e.status in (404, 405):
                # A server without POST /v1/jobs/complete: report one by one from now on.
                self.enabled = False
                log.warning("the server has no POST /v1/jobs/complete (%s); completions go one by one", e)
            else:
                log.warning("a batch of %d completions failed (%s); each is reported on its own", len(batch), e)
            for _, future in batch:
                if not future.done():
                    future.set_result(("error", str(e)))
            return
        for (_, future), answer in zip(batch, outcomes):
            if not future.done():
                future.set_result((answer.get("outcome", "error"), answer.get("message")))


class Worker:
    """Runs handlers for the jobs of ``queues``.

    ``client_or_url`` is a base URL, a :class:`Client` or an :class:`AsyncClient` (a URL or a
    ``Client`` gets an ``AsyncClient`` of its own, with the same token). ``concurrency`` jobs
    run at once; ``lease_ttl`` (seconds or ``timedelta``, 1 s to 1 h) is each lease's length,
    renewed every ``heartbeat_interval`` (default a third of it); ``max_batch`` caps one claim
    (default ``concurrency``); ``poll_wait`` is the claim's long poll (the server answers at once
    when a job is there); ``grace`` is how long running handlers may finish at shutdown.

    Successful completions are batched (``batch_completions``, on by default): each waits at most
    ``completion_linger`` (default 3 ms) or until ``completion_batch`` (default 500) are pending,
    and they go out in one ``POST /v1/jobs/complete``, each fenced by its own lease token.
    ``batch_completions=False`` sends one ``complete`` per job.

    Heartbeats are batched too (``batch_heartbeats``, on by default): one task renews the leases of
    all running jobs every ``heartbeat_interval`` in one ``POST /v1/jobs/heartbeat`` per 1,000
    jobs, each fenced by its own token; ``batch_heartbeats=False`` (or a server without that
    route) sends one heartbeat per job.

    >>> worker = Worker("http://127.0.0.1:8000", queues=["mail"])
    >>> @worker.handler("welcome.send")
    ... def send_welcome(job, ctx): ...
    >>> worker.run()  # until SIGTERM/SIGINT
    """

    def __init__(
        self,
        client_or_url: str | Client | AsyncClient,
        queues: Sequence[str] = ("default",),
        *,
        concurrency: int = 10,
        lease_ttl: float | timedelta = 30.0,
        worker_id: str | None = None,
        max_batch: int | None = None,
        poll_wait: float | timedelta = 5.0,
        grace: float | timedelta = 30.0,
        heartbeat_interval: float | timedelta | None = None,
        token: str | None = None,
        batch_completions: bool = True,
        completion_linger: float | timedelta = 0.003,
        completion_batch: int = 500,
        batch_heartbeats: bool = True,
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise ValueError("queues must name at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queues = list(queues)
        self.concurrency = concurrency
        self.lease_ttl = _seconds(lease_ttl, "lease_ttl")
        if not 1.0 <= self.lease_ttl <= 3600.0:
            raise ValueError("lease_ttl must be between 1 s and 1 h")
        self.heartbeat_interval = (
            _seconds(heartbeat_interval, "heartbeat_interval") if heartbeat_interval is not None else self.lease_ttl / 3
        )
        self.worker_id = worker_id or default_worker_id()
        self.max_batch = max(1, min(max_batch or concurrency, 1000))
        self.poll_wait = _seconds(poll_wait, "poll_wait")
        if self.poll_wait > 60:
            raise ValueError("poll_wait must be at most 60 s")
        self.grace = _seconds(grace, "grace")
        self.batch_completions = batch_completions
        self.completion_linger = _seconds(completion_linger, "completion_linger")
        if self.completion_linger > 1.0:
            raise ValueError("completion_linger must be at most 1 s")
        if not 1 <= completion_batch <= 1000:
            raise ValueError("completion_batch must be between 1 and 1000")
        self.completion_batch = completion_batch
        self.batch_heartbeats = batch_heartbeats
        #: The batched heartbeats are in use (False once the server showed it has no batch route).
        self._heartbeat_batches = False
        self._completions: _Completions | None = None
        self._client_or_url = client_or_url
        self._token = token
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._active: dict[str, _Active] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stop_requested = False
        #: Test hook: while set, heartbeats are not sent (and no self-fencing happens), so a
        #: test can let a lease expire under a running handler.
        self._heartbeats_paused = threading.Event()

    # Registration.

    def handler(self, kind: str) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``kind``: ``fn(job, ctx)``, plain
        (run in a thread) or ``async``. Its return value is the job's result (JSON; ``None``
        for none); raising :class:`Retryable` or :class:`Permanent` fails the attempt, any
        other exception fails it retryably."""

        def register(fn: F) -> F:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Handler) -> None:
        """Register ``fn`` as the handler of ``kind`` (see :meth:`handler`)."""
        if kind in self._handlers:
            raise ValueError(f"a handler for kind {kind!r} is already registered")
        self._handlers[kind] = (fn, _is_async(fn))

    @property
    def in_flight(self) -> int:
        """Jobs claimed and not yet reported."""
        return len(self._active)

    # Running.

    def run(self) -> None:
        """Run until SIGTERM or SIGINT (handled when called on the main thread) or :meth:`stop`,
        then shut down gracefully. A second signal skips what is left of the grace period."""
        asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                    pass
        try:
            await self.run_async()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        assert self._shutdown is not None and self._hurry is not None
        if self._shutdown.is_set():
            log.warning("second %s: handing running jobs back now", signal.Signals(sig).name)
            self._hurry.set()
        else:
            log.info("%s: stopping claims; running jobs get %.0f s to finish", signal.Signals(sig).name, self.grace)
            self._shutdown.set()

    def stop(self) -> None:
        """Ask the worker to shut down gracefully; callable from any thread."""
        self._stop_requested = True
        loop, shutdown = self._loop, self._shutdown
        if loop is not None and shutdown is not None and not loop.is_closed():
            loop.call_soon_threadsafe(shutdown.set)

    async def run_async(self, stop_event: asyncio.Event | None = None) -> None:
        """Run on the current loop until ``stop_event`` is set (or :meth:`stop` is called), then
        shut down gracefully and return."""
        if not self._handlers:
            raise ValueError("no handler registered: use @worker.handler(kind)")
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        self._hurry = asyncio.Event()
        self._slot_freed = asyncio.Event()
        if self._stop_requested:
            self._shutdown.set()
        watcher = asyncio.create_task(self._watch(stop_event)) if stop_event is not None else None
        client, owned = self._make_client()
        self._completions = (
            _Completions(client, self.completion_linger, self.completion_batch) if self.batch_completions else None
        )
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="faultline-handler")
        self._heartbeat_batches = self.batch_heartbeats
        beater = asyncio.create_task(self._batched_heartbeats(client)) if self.batch_heartbeats else None
        log.info(
            "worker %s started: queues=%s concurrency=%d lease_ttl=%.1fs",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            self.lease_ttl,
        )
        try:
            await self._claim_loop(client)
        finally:
            try:
                await self._drain(client)
            finally:
                if watcher is not None:
                    watcher.cancel()
                if beater is not None:
                    beater.cancel()
                    await asyncio.gather(beater, return_exceptions=True)
                self._executor.shutdown(wait=False, cancel_futures=True)
                if owned:
                    await client.aclose()
                self._loop = None
                log.info("worker %s stopped", self.worker_id)

    async def _watch(self, stop_event: asyncio.Event) -> None:
        await stop_event.wait()
        assert self._shutdown is not None
        self._shutdown.set()

    def _make_client(self) -> tuple[AsyncClient, bool]:
        source = self._client_or_url
        if isinstance(source, AsyncClient):
            return source, False
        if isinstance(source, Client):
            return AsyncClient(source.base_url, source.token, source.timeout, max_connections=self.concurrency * 2 + 4), True
        return AsyncClient(str(source), self._token, max_connections=self.concurrency * 2 + 4), True

    # The claim loop.

    async def _claim_loop(self, client: AsyncClient) -> None:
        assert self._shutdown is not None and self._slot_freed is not None
        backoff = 0.25
        while not self._shutdown.is_set():
            free = self.concurrency - len(self._active)
            if free <= 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), self._shutdown.wait())
                continue
            sent = time.monotonic()
            try:
                # Not cancelled on shutdown: the server may have claimed jobs for this answer,
                # and they must be handed back rather than left to expire.
                jobs = await client.claim(
                    self.worker_id,
                    self.queues,
                    max=min(free, self.max_batch),
                    wait_ms=int(self.poll_wait * 1000),
                    lease_ttl_ms=int(self.lease_ttl * 1000),
                )
            except (ConnectionFailed, ApiError) as e:
                if isinstance(e, ApiError) and not _transient(e):
                    log.error("claim refused: %s; the worker stops", e)
                    raise
                log.warning("claim failed: %s; retrying in %.1f s", e, backoff)
                await _first(asyncio.sleep(backoff * random.uniform(0.5, 1.0)), self._shutdown.wait())
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.25
            for job in jobs:
                self._start(client, job, sent)
            if not jobs and time.monotonic() - sent < 0.05:
                # An empty answer at once (no long poll, e.g. poll_wait=0): do not spin.
                await _first(asyncio.sleep(0.2), self._shutdown.wait())
            else:
                await asyncio.sleep(0)  # let the jobs just started run before the next claim

    def _start(self, client: AsyncClient, job: Job, claimed_at: float) -> None:
        assert self._shutdown is not None
        entry = self._handlers.get(job["kind"])
        ctx = JobContext(job, self.worker_id, entry[1] if entry else True)
        active = _Active(job, ctx, claimed_at + self.lease_ttl)
        self._active[job["id"]] = active
        ctx._runtime = _Runtime(self, client, active)
        if self._shutdown.is_set():
            # Claimed after shutdown began (the claim was in flight): hand it back unstarted.
            active.task = asyncio.create_task(self._hand_back(client, active))
        else:
            active.task = asyncio.create_task(self._execute(client, active))

    async def _hand_back(self, client: AsyncClient, active: _Active) -> None:
        try:
            active.released = True
            active.ctx._stop("shutdown")
            await self._report(active, "release", lambda: client.release(active.ctx.job_id, active.ctx.lease_token))
        finally:
            self._finished(active)

    def _finished(self, active: _Active) -> None:
        assert self._slot_freed is not None
        active.phase = "done"
        self._active.pop(active.ctx.job_id, None)
        self._slot_freed.set()

    # One job.

    async def _execute(self, client: AsyncClient, active: _Active) -> None:
        ctx = active.ctx
        try:
            entry = self._handlers.get(ctx.kind)
            if entry is None:
                active.phase = "reporting"
                known = ", ".join(sorted(self._handlers)) or "none"
                message = f"no handler for kind {ctx.kind!r} on worker {self.worker_id} (it handles: {known})"
                log.error("job %s: %s", ctx.job_id, message)
                await self._report(
                    active,
                    "fail",
                    lambda: client.fail(ctx.job_id, ctx.lease_token, message, retryable=False),
                )
                return
            fn, is_async = entry
            active.heartbeating = True
            if not self._heartbeat_batches:
                active.heartbeat_task = asyncio.create_task(self._heartbeats(client, active))
            timeout_ms = active.job.get("timeout_ms")
            timer = (
                asyncio.get_running_loop().call_later(timeout_ms / 1000, self._time_out, active)
                if timeout_ms
                else None
            )
            try:
                outcome = await self._invoke(fn, is_async, active)
            finally:
                if timer is not None:
                    timer.cancel()
            if ctx.suspended:
                return  # a sleep or a wait handed the job back: nothing to report
            if active.released:
                return  # handed back at shutdown: the lease is no longer ours
            active.phase = "reporting"
            active.stop_heartbeats()
            if active.heartbeat_task is not None:
                await asyncio.gather(active.heartbeat_task, return_exceptions=True)
            if active.lease_lost:
                if ctx.stop_reason == "cancelled":
                    log.info("job %s: cancelled while running; the handler's outcome is not reported", ctx.job_id)
                else:
                    log.warning("job %s: lease lost; the handler's outcome is not reported", ctx.job_id)
                return
            await self._report_outcome(client, active, outcome)
        except Exception:  # never let one job take the loop down
            log.exception("job %s: unexpected error in the worker", ctx.job_id)
        finally:
            active.stop_heartbeats()
            self._finished(active)

    def _time_out(self, active: _Active) -> None:
        if active.ctx._stop("timeout"):
            log.warning("job %s: timed out; stopping its handler", active.ctx.job_id)
            if active.handler_task is not None and isinstance(active.handler_task, asyncio.Task):
                active.handler_cancelled = True
                active.handler_task.cancel()

    async def _invoke(self, fn: Handler, is_async: bool, active: _Active) -> tuple[str, Any]:
        """Run the handler: ``("ok", result)`` or ``("error", exception)``."""
        ctx = active.ctx
        loop = asyncio.get_running_loop()
        try:
            if is_async:
                active.handler_task = asyncio.ensure_future(fn(active.job, ctx))
            else:
                call = functools.partial(contextvars.copy_context().run, fn, active.job, ctx)
                active.handler_task = loop.run_in_executor(self._executor, call)
            result = await active.handler_task
            if inspect.isawaitable(result):
                result = await result
            return ("ok", result)
        except asyncio.CancelledError:
            if not active.handler_cancelled:
                raise  # the worker itself is being cancelled
            return ("error", TimeoutError(f"stopped: {ctx.stop_reason or 'cancelled'}"))
        except Suspended as e:
            return ("suspended", e)
        except Exception as e:
            return ("error", e)

    async def _report_outcome(self, client: AsyncClient, active: _Active, outcome: tuple[str, Any]) -> None:
        ctx = active.ctx
        status, value = outcome
        if status == "ok":
            result = value
            try:
                if result is not None:
                    json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as e:
                message = f"the handler's result is not JSON: {type(e).__name__}: {e}"
                log.error("job %s: %s", ctx.job_id, message)
                await self._report(active, "fail", lambda: client.fail(ctx.job_id, ctx.lease_token, message))
                return

            completions = self._completions
            if completions is not None and completions.enabled:
                outcome_of_batch, why = await completions.submit(ctx.job_id, ctx.lease_token, result)
                if outcome_of_batch == "completed":
                    return
                if outcome_of_batch == "lease_lost":
                    # As a 409 on a single complete: nothing changed; the handler is done.
                    active.lease_lost = True
                    log.warning("job %s: complete refused, the lease is lost: %s", ctx.job_id, why)
                    return
                if outcome_of_batch == "invalid":
                    log.error("job %s: result refused (%s); failing the attempt", ctx.job_id, why)
                    await self._report(
                        active, "fail", lambda: client.fail(ctx.job_id, ctx.lease_token, f"result refused by the server: {why}")
                    )
                    return
                # The batch got no usable answer: this job is reported on its own, with retries.

            async def complete() -> Any:
                try:
                    return await client.complete(ctx.job_id, ctx.lease_token, _UNSET if result is None else result)
                except (InvalidInput, PayloadTooLarge) as e:
                    # The result itself is refused (too large, not JSON): fail the attempt
                    # rather than lose the report.
                    log.error("job %s: result refused (%s); failing the attempt", ctx.job_id, e)
                    return await client.fail(ctx.job_id, ctx.lease_token, f"result refused by the server: {e.message}")

            await self._report(active, "complete", complete)
            return
        error = value
        if isinstance(error, Permanent):
            message = error.message or type(error).__name__
            await self._report(
                active, "fail", lambda: client.fail(ctx.job_id, ctx.lease_token, message, retryable=False)
            )
        elif isinstance(error, Retryable):
            message = error.message or type(error).__name__
            after = None if error.after is None else int(_seconds(error.after, "after") * 1000)
            await self._report(
                active,
                "fail",
                lambda: client.fail(ctx.job_id, ctx.lease_token, message, retryable=True, retry_after_ms=after),
            )
        else:
            if ctx.stop_reason == "timeout":
                message = f"timed out after {active.job.get('timeout_ms')} ms"
            else:
                message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                log.warning("job %s (%s) attempt %d failed: %s", ctx.job_id, ctx.kind, ctx.attempt, message, exc_info=error)
            await self._report(
                active, "fail", lambda: client.fail(ctx.job_id, ctx.lease_token, message, retryable=True)
            )

    async def _report(self, active: _Active, what: str, send: Callable[[], Awaitable[Any]]) -> bool:
        """Send a fenced report, retrying network failures and 5xx with backoff until the lease
        would have expired. A 409 ``lease_lost`` is logged and swallowed."""
        delay = 0.1
        while True:
            try:
                await send()
                return True
            except LeaseLost as e:
                active.lease_lost = True
                log.warning("job %s: %s refused, the lease is lost: %s", active.ctx.job_id, what, e.message)
                return False
            except NotFound as e:
                log.warning("job %s: %s refused, the job is gone: %s", active.ctx.job_id, what, e.message)
                return False
            except (ConnectionFailed, ApiError) as e:
                if isinstance(e, ApiError) and not _transient(e):
                    log.error("job %s: %s refused: %s", active.ctx.job_id, what, e)
                    return False
                if time.monotonic() + delay >= active.lease_deadline:
                    log.error(
                        "job %s: %s failed (%s) and the lease has run out; the server will run the job again",
                        active.ctx.job_id,
                        what,
                        e,
                    )
                    return False
                log.warning("job %s: %s failed (%s); retrying in %.1f s", active.ctx.job_id, what, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # Heartbeats.

    async def _batched_heartbeats(self, client: AsyncClient) -> None:
        """Renew the leases of all running jobs every ``heartbeat_interval``: one
        ``POST /v1/jobs/heartbeat`` per 1,000 jobs, each outcome applied to its job as a single
        heartbeat's answer would be. Falls back to one heartbeat task per job on a server without
        the batch route."""
        interval = self.heartbeat_interval
        wait = interval
        while True:
            await asyncio.sleep(wait)
            if self._heartbeats_paused.is_set():
                wait = min(interval, 0.05)
                continue
            beating = [a for a in self._active.values() if a.heartbeating and a.heartbeat_task is None]
            if not beating:
                wait = interval
                continue
            chunks = [beating[i : i + 1000] for i in range(0, len(beating), 1000)]
            answers = await asyncio.gather(*(self._heartbeat_chunk(client, chunk) for chunk in chunks))
            if not self._heartbeat_batches:
                # An older server: each running job gets a heartbeat task of its own, from now.
                for active in self._active.values():
                    if active.heartbeating and active.heartbeat_task is None:
                        active.heartbeat_task = asyncio.create_task(self._heartbeats(client, active, first_wait=0.0))
                return
            wait = interval if all(answers) else min(interval, 1.0)

    async def _heartbeat_chunk(self, client: AsyncClient, chunk: list[_Active]) -> bool:
        """One batch of heartbeats; False when it got no usable answer."""
        interval = self.heartbeat_interval
        sent = time.monotonic()
        try:
            outcomes = await asyncio.wait_for(
                client.heartbeat_batch(
                    [{"id": a.ctx.job_id, "lease_token": a.ctx.lease_token} for a in chunk],
                    lease_ttl_ms=int(self.lease_ttl * 1000),
                ),
                timeout=max(interval, 1.0),
            )
            if len(outcomes) != len(chunk):
                raise ApiError(200, "bad_answer", f"{len(outcomes)} outcomes for {len(chunk)} heartbeats")
        except (ConnectionFailed, ApiError, asyncio.TimeoutError) as e:
            if isinstance(e, ApiError) and e.status in (404, 405):
                if self._heartbeat_batches:
                    self._heartbeat_batches = False
                    log.warning("the server has no POST /v1/jobs/heartbeat (%s); heartbeats go one by one", e)
                return False
            log.warning("a batch of %d heartbeats failed: %s", len(chunk), e)
            fence_after = self.lease_ttl * 2 / 3
            now = time.monotonic()
            for active in chunk:
                if active.heartbeating and now - active.last_renewed >= fence_after and active.ctx._stop("lease_lost"):
                    # The lease may be about to expire: stop before another worker starts.
                    # The outcome is still reported (fenced) if the server answers in time.
                    log.warning(
                        "job %s: heartbeats failing for %.1f s (%s); stopping its handler",
                        active.ctx.job_id,
                        now - active.last_renewed,
                        e,
                    )
            return False
        for active, answer in zip(chunk, outcomes):
            if not active.heartbeating:
                continue  # reported, handed back or suspended meanwhile
            ctx = active.ctx
            outcome = answer.get("outcome")
            if outcome == "extended":
                active.last_renewed = sent
                active.lease_deadline = sent + self.lease_ttl
                if answer.get("lease_expires_at"):
                    ctx.lease_expires_at = answer["lease_expires_at"]
            elif outcome == "cancelled":
                if ctx._stop("cancelled"):
                    log.info("job %s: cancelled; stopping its handler", ctx.job_id)
            else:  # lease_lost (or an outcome this client does not know: the lease is not renewed)
                active.lease_lost = True
                active.heartbeating = False
                if ctx._stop("lease_lost"):
                    log.warning("job %s: lease lost (heartbeat: %s); stopping its handler", ctx.job_id, outcome)
        return True

    async def _heartbeats(self, client: AsyncClient, active: _Active, first_wait: float | None = None) -> None:
        ctx = active.ctx
        fence_after = self.lease_ttl * 2 / 3
        interval = self.heartbeat_interval
        wait = interval if first_wait is None else first_wait
        while True:
            await asyncio.sleep(wait)
            if self._heartbeats_paused.is_set():
                wait = min(interval, 0.05)
                continue
            sent = time.monotonic()
            try:
                beat = await asyncio.wait_for(client.heartbeat(ctx.job_id, ctx.lease_token, lease_ttl_ms=int(self.lease_ttl * 1000)), timeout=max(interval, 1.0))
            except LeaseLost as e:
                active.lease_lost = True
                reason: StopReason = "cancelled" if await self._was_cancelled(client, ctx.job_id, e) else "lease_lost"
                if ctx._stop(reason):
                    log.warning("job %s: lease lost (%s); stopping its handler", ctx.job_id, e.message)
                return
            except NotFound:
                active.lease_lost = True
                ctx._stop("lease_lost")
                return
            except (ConnectionFailed, ApiError, asyncio.TimeoutError) as e:
                if time.monotonic() - active.last_renewed >= fence_after and ctx._stop("lease_lost"):
                    # The lease may be about to expire: stop before another worker starts.
                    # The outcome is still reported (fenced) if the server answers in time.
                    log.warning(
                        "job %s: heartbeats failing for %.1f s (%s); stopping its handler",
                        ctx.job_id,
                        time.monotonic() - active.last_renewed,
                        e,
                    )
                else:
                    log.warning("job %s: heartbeat failed: %s", ctx.job_id, e)
                wait = min(interval, 1.0)
                continue
            active.last_renewed = sent
            active.lease_deadline = sent + self.lease_ttl
            if beat.lease_expires_at:
                ctx.lease_expires_at = beat.lease_expires_at
            if beat.cancel_requested and ctx._stop("cancelled"):
                log.info("job %s: cancelled; stopping its handler", ctx.job_id)
            wait = interval

    @staticmethod
    async def _was_cancelled(client: AsyncClient, job_id: str, error: LeaseLost) -> bool:
        if "cancel" in error.message.lower():
            return True
        try:
            job = await client.get_job(job_id)
        except Exception:
            return False
        return job.get("state") == "cancelled"

    # Shutdown.

    async def _drain(self, client: AsyncClient) -> None:
        """Let running handlers finish within the grace period, then hand back the rest."""
        assert self._hurry is not None
        if not self._active:
            return
        log.info("waiting up to %.1f s for %d running job(s)", self.grace, len(self._active))
        deadline = time.monotonic() + self.grace
        while self._active and not self._hurry.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            assert self._slot_freed is not None
            self._slot_freed.clear()
            await _first(self._slot_freed.wait(), self._hurry.wait(), asyncio.sleep(left))
        running = [a for a in self._active.values() if a.phase == "running" and not a.released]
        if running:
            log.warning("handing back %d job(s) still running after the grace period", len(running))
        for active in running:
            active.released = True
            active.ctx._stop("shutdown")
            active.stop_heartbeats()
        await asyncio.gather(*(self._release_running(client, a) for a in running))
        # Reports already under way finish (bounded by their lease); handlers told to stop get
        # a moment to return before their tasks are cancelled.
        tasks = [a.task for a in list(self._active.values()) if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for active in list(self._active.values()):
            if active.handler_task is not None and active.phase == "running":
                active.handler_cancelled = True
                active.handler_task.cancel()
            if active.task is not None and active.phase != "reporting":
                active.task.cancel()
        tasks = [a.task for a in list(self._active.values()) if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=max(self.lease_ttl, 1.0))
        self._active.clear()

    async def _release_running(self, client: AsyncClient, active: _Active) -> None:
        ctx = active.ctx
        await self._report(active, "release", lambda: client.release(ctx.job_id, ctx.lease_token))
        self._finished(active)


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _transient(error: ApiError) -> bool:
    """Worth retrying: the server or its database is briefly unavailable."""
    return error.status >= 500 or error.status in (408, 429)


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of ``aws`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["JobContext", "Permanent", "Retryable", "StopReason", "Suspended", "Worker", "default_worker_id"]
