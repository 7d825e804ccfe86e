#!/usr/bin/env python3
"""A Python worker for Faultline's failure drills: the built-in kinds of the Rust binary's
``faultline worker`` (``noop``, ``sleep``, ``fail``), served over the HTTP worker protocol by
this package's :class:`~faultline_queue.Worker`.

    clients/python/.venv/bin/python clients/python/drill/worker.py \\
        --url http://127.0.0.1:8000 --queues q1,q2 --worker-id py-1 --concurrency 16 --lease-ttl-ms 5000

Every flag can come from the environment instead (the flag wins): ``FAULTLINE_URL``,
``FAULTLINE_QUEUES``, ``FAULTLINE_WORKER_ID``, ``FAULTLINE_CONCURRENCY``, ``FAULTLINE_LEASE_TTL_MS``,
``FAULTLINE_SHUTDOWN_GRACE_MS``, ``FAULTLINE_POLL_WAIT_MS``, ``FAULTLINE_API_TOKEN``.

The kinds, as the binary's:

- ``noop``: succeeds at once, no result (any payload);
- ``sleep {"ms": N}``: sleeps N ms; stopped early (lease lost, job cancelled, shutdown grace
  over, timeout) it returns at once with a retryable "cancelled while sleeping" (reported only
  where the worker still reports: not after a lost lease, nor a hand-back at shutdown);
- ``fail {"times": N, "message"?: text}``: its first N attempts (the job's attempt number) fail
  retryably with ``message`` or a default text, then it succeeds.

A payload that does not fit its kind fails the job for good.

One line per job start and end goes to stderr::

    faultline-py-worker start worker=W job=ID kind=K token=T attempt=A
    faultline-py-worker end worker=W job=ID kind=K token=T attempt=A outcome=O ms=M [reason=R] [error="…"]

``outcome`` is the handler's: ``ok``, ``retryable`` (an error; retried while attempts remain),
``permanent``, or ``stopped`` (told to stop; ``reason`` is ``lease_lost``, ``cancelled``,
``shutdown`` or ``timeout``). Whether a report lands is the lease token's business: a refused one
is logged by the worker (``… refused, the lease is lost``). Besides these, the package's own
worker log (start, SIGTERM, stop, lease losses) goes to stderr, each line starting with
``faultline-py-worker log``.

SIGTERM or SIGINT: claiming stops, running jobs get the grace period (``--grace-ms``, default
30,000) to finish, the rest are handed back (released: queued again, the attempt not spent), and
the process exits 0. A second signal skips what is left of the grace. Exit 2 for bad flags, 1 if
the server refuses the worker (e.g. a wrong token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    from faultline_queue import JobContext, Permanent, Retryable, Worker
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from faultline_queue import JobContext, Permanent, Retryable, Worker

PREFIX = "faultline-py-worker"


def emit(line: str) -> None:
    sys.stderr.write(f"{PREFIX} {line}\n")
    sys.stderr.flush()


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _payload(job: dict[str, Any], kind: str, fields: dict[str, type], required: set[str]) -> dict[str, Any]:
    """The payload as the binary reads it: an object with these fields only, of these types."""
    payload = job.get("payload")
    if not isinstance(payload, dict):
        raise Permanent(f"invalid payload for kind {kind}: expected an object, got {json.dumps(payload)[:200]}")
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        raise Permanent(f"invalid payload for kind {kind}: unknown field {unknown[0]!r}")
    for name in sorted(required):
        if name not in payload:
            raise Permanent(f"invalid payload for kind {kind}: missing field {name!r}")
    for name, want in fields.items():
        value = payload.get(name)
        if name not in payload or (value is None and name not in required):
            continue
        if want is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Permanent(f"invalid payload for kind {kind}: {name} must be a non-negative integer, got {value!r}")
        elif not isinstance(value, want):
            raise Permanent(f"invalid payload for kind {kind}: {name} must be a {want.__name__}, got {value!r}")
    return payload


async def noop(job: dict[str, Any], ctx: JobContext) -> None:
    return None


async def sleep(job: dict[str, Any], ctx: JobContext) -> None:
    ms = _payload(job, "sleep", {"ms": int}, {"ms"})["ms"]
    try:
        await asyncio.wait_for(ctx.stopped.wait(), ms / 1000)
    except asyncio.TimeoutError:
        return None
    raise Retryable("cancelled while sleeping")


async def fail(job: dict[str, Any], ctx: JobContext) -> None:
    payload = _payload(job, "fail", {"times": int, "message": str}, {"times"})
    times = payload["times"]
    if ctx.attempt <= times:
        message = payload.get("message")
        raise Retryable(message if message is not None else f"failing on purpose: attempt {ctx.attempt} of the first {times} that fail")
    return None


KINDS = {"noop": noop, "sleep": sleep, "fail": fail}


def logged(kind: str, handler: Any, worker_id: str) -> Any:
    """``handler`` with a start and an end line per job."""

    async def run(job: dict[str, Any], ctx: JobContext) -> Any:
        head = f"worker={worker_id} job={ctx.job_id} kind={kind} token={ctx.lease_token} attempt={ctx.attempt}"
        emit(f"start {head}")
        started = time.monotonic()
        outcome, extra = "ok", ""
        try:
            return await handler(job, ctx)
        except Permanent as e:
            outcome, extra = "permanent", f" error={_quote(e.message)}"
            raise
        except BaseException as e:
            outcome = "retryable"
            extra = f" error={_quote(str(e) or type(e).__name__)}"
            raise
        finally:
            if ctx.should_stop() and outcome != "ok":
                outcome = "stopped"
                extra = f" reason={ctx.stop_reason}{extra}"
            ms = int((time.monotonic() - started) * 1000)
            emit(f"end {head} outcome={outcome} ms={ms}{extra}")

    return run


def env_default(name: str, fallback: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else fallback


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="drill/worker.py",
        description="A Python worker serving the binary's built-in kinds (noop, sleep, fail) for the failure drills.",
    )
    parser.add_argument("--url", default=env_default("FAULTLINE_URL", "http://127.0.0.1:8000"),
                        help="the API's base URL [env FAULTLINE_URL; default http://127.0.0.1:8000]")
    parser.add_argument("--queues", default=env_default("FAULTLINE_QUEUES", "default"),
                        help="queues to work, comma-separated [env FAULTLINE_QUEUES; default: default]")
    parser.add_argument("--worker-id", default=env_default("FAULTLINE_WORKER_ID"),
                        help="this worker's name in leases [env FAULTLINE_WORKER_ID; default host-pid-random]")
    parser.add_argument("--concurrency", type=int, default=int(env_default("FAULTLINE_CONCURRENCY", "16") or 16),
                        help="most jobs at once [env FAULTLINE_CONCURRENCY; default 16]")
    parser.add_argument("--lease-ttl-ms", type=int, default=int(env_default("FAULTLINE_LEASE_TTL_MS", "30000") or 30000),
                        help="lease length, 1000 to 3600000 [env FAULTLINE_LEASE_TTL_MS; default 30000]")
    parser.add_argument("--grace-ms", type=int, default=int(env_default("FAULTLINE_SHUTDOWN_GRACE_MS", "30000") or 30000),
                        help="on SIGTERM, how long running jobs may finish [env FAULTLINE_SHUTDOWN_GRACE_MS; default 30000]")
    parser.add_argument("--poll-wait-ms", type=int, default=int(env_default("FAULTLINE_POLL_WAIT_MS", "1000") or 1000),
                        help="a claim's long poll, 0 to 60000 [env FAULTLINE_POLL_WAIT_MS; default 1000]")
    parser.add_argument("--token", default=env_default("FAULTLINE_API_TOKEN"),
                        help="bearer token [env FAULTLINE_API_TOKEN]")
    args = parser.parse_args(argv)
    args.queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not args.queues:
        parser.error("--queues must name at least one queue")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if not 1000 <= args.lease_ttl_ms <= 3_600_000:
        parser.error("--lease-ttl-ms must be 1000 to 3600000")
    if not 0 <= args.poll_wait_ms <= 60_000:
        parser.error("--poll-wait-ms must be 0 to 60000")
    if args.grace_ms < 0:
        parser.error("--grace-ms must not be negative")
    return args


class _Prefixed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PREFIX} log {record.levelname.lower()} {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else ""
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Prefixed())
    package_log = logging.getLogger("faultline_queue")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    package_log.propagate = False

    worker = Worker(
        args.url,
        queues=args.queues,
        concurrency=args.concurrency,
        lease_ttl=args.lease_ttl_ms / 1000,
        worker_id=args.worker_id,
        poll_wait=args.poll_wait_ms / 1000,
        grace=args.grace_ms / 1000,
        token=args.token,
    )
    for kind, fn in KINDS.items():
        worker.register(kind, logged(kind, fn, worker.worker_id))
    emit(
        f"ready worker={worker.worker_id} url={args.url} queues={','.join(args.queues)} "
        f"concurrency={args.concurrency} lease_ttl_ms={args.lease_ttl_ms} pid={os.getpid()}"
    )
    try:
        worker.run()  # until SIGTERM/SIGINT, then a graceful shutdown
    except Exception as e:
        emit(f"exit worker={worker.worker_id} error={_quote(f'{type(e).__name__}: {e}')}")
        return 1
    emit(f"exit worker={worker.worker_id} status=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
