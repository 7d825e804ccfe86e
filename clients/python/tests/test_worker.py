"""The worker half, over the HTTP worker protocol (SPEC §15): handlers, results, retries,
concurrency, stop signals (cancel, lease lost, shutdown) and fenced reports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Server, eventually, eventually_async

from faultline_queue import (
    ApiError,
    AsyncClient,
    Client,
    JobContext,
    LeaseLost,
    Permanent,
    Retryable,
    Worker,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def protocol(server: Server) -> None:
    """Fail at once, with the reason, when the server lacks the worker protocol."""
    answer = httpx.post(f"{server.url}/v1/claims", json={}, timeout=5)
    if answer.status_code in (404, 405):
        pytest.fail(
            "the server has no POST /v1/claims (SPEC §15, the HTTP worker protocol): "
            f"{answer.status_code} {answer.text[:200]}"
        )


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker`` for the block, then shut it down gracefully and wait for it."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_async(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def finished(aclient: AsyncClient, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    async def check() -> Any:
        job = await aclient.get_job(job_id)
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return await eventually_async(check, timeout, what=f"job {job_id} to finish")


def make_worker(server: Server, queue: str, **options: Any) -> Worker:
    options.setdefault("poll_wait", 1.0)
    options.setdefault("grace", 5.0)
    return Worker(server.url, queues=[queue], **options)


async def test_sync_handler_completes_with_its_result(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)
    seen: list[tuple[Any, ...]] = []

    @worker.handler("py.double")
    def double(job: dict[str, Any], ctx: JobContext) -> Any:
        seen.append((threading.current_thread() is threading.main_thread(), type(ctx.stopped), ctx.attempt))
        return {"doubled": job["payload"]["n"] * 2}

    job = (await aclient.enqueue("py.double", {"n": 21}, queue=queue)).job
    async with running(worker):
        done = await finished(aclient, job["id"])
    assert done["state"] == "succeeded"
    assert done["result"] == {"doubled": 42}
    assert done["attempts"] == 1
    assert seen == [(False, threading.Event, 1)]  # in a thread, with a threading.Event


async def test_async_handler_runs_on_the_loop(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)
    seen: list[Any] = []

    @worker.handler("py.async")
    async def handle(job: dict[str, Any], ctx: JobContext) -> Any:
        seen.append((type(ctx.stopped), ctx.lease_token, ctx.job_id))
        await asyncio.sleep(0)
        return None  # no result

    job = (await aclient.enqueue("py.async", {}, queue=queue)).job
    async with running(worker):
        done = await finished(aclient, job["id"])
    assert done["state"] == "succeeded"
    assert done["result"] is None
    assert seen[0][0] is asyncio.Event
    assert isinstance(seen[0][1], int) and seen[0][1] > 0
    assert seen[0][2] == job["id"]


async def test_complete_batch_lands_the_good_ones_and_reports_the_stale_one(aclient: AsyncClient, queue: str) -> None:
    ids = [(await aclient.enqueue("py.batch", {"n": n}, queue=queue)).id for n in range(3)]
    claimed = {job["id"]: job for job in await aclient.claim("py-batcher", [queue], max=3)}
    assert sorted(claimed) == sorted(ids)
    token = {job_id: job["lease_token"] for job_id, job in claimed.items()}
    outcomes = await aclient.complete_batch(
        [
            {"id": ids[0], "lease_token": token[ids[0]], "result": {"n": 0}},
            {"id": ids[1], "lease_token": token[ids[1]] + 1000},  # stale
            {"id": ids[2], "lease_token": token[ids[2]]},  # no result
        ]
    )
    assert [(o["id"], o["outcome"]) for o in outcomes] == [
        (ids[0], "completed"),
        (ids[1], "lease_lost"),
        (ids[2], "completed"),
    ]
    assert outcomes[1].get("message")
    first, stale, third = [await aclient.get_job(i) for i in ids]
    assert (first["state"], first["result"]) == ("succeeded", {"n": 0})
    assert stale["state"] == "running"  # the stale token changed nothing
    assert (third["state"], third.get("result")) == ("succeeded", None)
    # The same through the blocking client: the stale job's real token still holds its lease.
    with Client(aclient.base_url) as client:
        again = client.complete_batch([{"id": ids[1], "lease_token": token[ids[1]]}, {"id": ids[0], "lease_token": token[ids[0]]}])
    assert [o["outcome"] for o in again] == ["completed", "lease_lost"]


class CountingClient(AsyncClient):
    """Counts the completion requests a worker sends."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.singles = 0
        self.batches: list[int] = []

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        self.singles += 1
        return await super().complete(*args, **kwargs)

    async def complete_batch(self, jobs: Any) -> Any:
        self.batches.append(len(jobs))
        return await super().complete_batch(jobs)


@pytest.mark.parametrize("batched", [True, False])
async def test_completions_are_batched_unless_turned_off(
    server: Server, aclient: AsyncClient, queue: str, batched: bool
) -> None:
    counting = CountingClient(server.url)
    worker = Worker(counting, queues=[queue], concurrency=40, poll_wait=1.0, grace=5.0, batch_completions=batched)

    @worker.handler("py.echo")
    async def echo(job: dict[str, Any], ctx: JobContext) -> Any:
        return {"n": job["payload"]["n"]}

    results = await aclient.enqueue_batch([{"kind": "py.echo", "payload": {"n": n}, "queue": queue} for n in range(40)])
    ids = [r["job"]["id"] for r in results]
    try:
        async with running(worker):
            done = [await finished(aclient, i) for i in ids]
    finally:
        await counting.aclose()
    assert [(j["state"], j["result"]) for j in done] == [("succeeded", {"n": n}) for n in range(40)]
    if batched:
        assert counting.singles == 0
        assert sum(counting.batches) == 40 and len(counting.batches) < 40, counting.batches
    else:
        assert (counting.singles, counting.batches) == (40, [])


async def test_heartbeat_batch_extends_and_reports_the_cancelled_and_the_stale(aclient: AsyncClient, queue: str) -> None:
    ids = [(await aclient.enqueue("py.hb-batch", {"n": n}, queue=queue)).id for n in range(3)]
    claimed = {job["id"]: job for job in await aclient.claim("py-beater", [queue], max=3, lease_ttl_ms=5_000)}
    assert sorted(claimed) == sorted(ids)
    token = {job_id: job["lease_token"] for job_id, job in claimed.items()}
    await aclient.cancel(ids[1])
    outcomes = await aclient.heartbeat_batch(
        [
            {"id": ids[0], "lease_token": token[ids[0]]},
            {"id": ids[1], "lease_token": token[ids[1]]},  # cancelled
            {"id": ids[2], "lease_token": token[ids[2]] + 1000},  # stale
        ],
        lease_ttl_ms=60_000,
    )
    assert [(o["id"], o["outcome"]) for o in outcomes] == [
        (ids[0], "extended"),
        (ids[1], "cancelled"),
        (ids[2], "lease_lost"),
    ]
    extended_to = parse_time(outcomes[0]["lease_expires_at"])
    assert extended_to - parse_time(claimed[ids[0]]["lease_expires_at"]) > timedelta(seconds=30)
    assert not outcomes[1].get("lease_expires_at") and not outcomes[2].get("lease_expires_at")
    # The blocking client: the stale job's real token still holds its lease.
    with Client(aclient.base_url) as client:
        again = client.heartbeat_batch([{"id": ids[2], "lease_token": token[ids[2]]}])
    assert [o["outcome"] for o in again] == ["extended"]


class HeartbeatCountingClient(AsyncClient):
    """Counts the heartbeat requests a worker sends; ``old_server`` answers the batch route 404."""

    def __init__(self, url: str, old_server: bool = False) -> None:
        super().__init__(url)
        self.old_server = old_server
        self.singles = 0
        self.batches: list[int] = []

    async def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        self.singles += 1
        return await super().heartbeat(*args, **kwargs)

    async def heartbeat_batch(self, jobs: Any, **kwargs: Any) -> Any:
        self.batches.append(len(jobs))
        if self.old_server:
            raise ApiError(404, "not_found", "no such route")
        return await super().heartbeat_batch(jobs, **kwargs)


@pytest.mark.parametrize("mode", ["batched", "single", "old-server"])
async def test_heartbeats_are_batched_and_a_cancel_reaches_its_job(
    server: Server, aclient: AsyncClient, queue: str, mode: str
) -> None:
    counting = HeartbeatCountingClient(server.url, old_server=mode == "old-server")
    worker = Worker(
        counting, queues=[queue], concurrency=4, lease_ttl=1.0, poll_wait=1.0, grace=5.0, batch_heartbeats=mode != "single"
    )
    started: set[int] = set()
    reasons: dict[int, Any] = {}

    @worker.handler("py.beating")
    async def beating(job: dict[str, Any], ctx: JobContext) -> Any:
        n = job["payload"]["n"]
        started.add(n)
        if n == 0:
            await asyncio.wait_for(ctx.stopped.wait(), 15)  # until cancelled
            reasons[n] = ctx.stop_reason
            return "late"
        await asyncio.sleep(1.5)  # outlives the TTL: only renewed leases let it complete
        reasons[n] = ctx.stop_reason
        return n

    results = await aclient.enqueue_batch([{"kind": "py.beating", "payload": {"n": n}, "queue": queue} for n in range(4)])
    ids = [r["job"]["id"] for r in results]
    try:
        async with running(worker):
            await eventually_async(lambda: len(started) == 4, what="all handlers to start")
            await aclient.cancel(ids[0])
            done = [await finished(aclient, i) for i in ids]
    finally:
        await counting.aclose()
    assert reasons == {0: "cancelled", 1: None, 2: None, 3: None}
    assert [j["state"] for j in done] == ["cancelled", "succeeded", "succeeded", "succeeded"]
    assert [j["result"] for j in done[1:]] == [1, 2, 3]
    if mode == "batched":
        assert counting.singles == 0 and counting.batches and max(counting.batches) > 1, counting.batches
    elif mode == "single":
        assert counting.batches == [] and counting.singles >= 4
    else:
        assert len(counting.batches) == 1 and counting.singles >= 4, (counting.batches, counting.singles)


async def test_retryable_after_requeues_the_job_no_sooner(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)

    @worker.handler("py.later")
    def later(job: dict[str, Any], ctx: JobContext) -> Any:
        raise Retryable("come back later", after=timedelta(seconds=30))

    job = (await aclient.enqueue("py.later", {}, queue=queue, max_attempts=3)).job
    async with running(worker):
        requeued = await eventually_async(
            lambda: _with_attempts(aclient, job["id"], 1, "queued"), what="the retry to be queued"
        )
    assert requeued["last_error"] == "come back later"
    failed_at = parse_time(requeued["errors"][-1]["at"])
    assert parse_time(requeued["next_run_at"]) - failed_at >= timedelta(seconds=29.9)


async def _with_attempts(aclient: AsyncClient, job_id: str, attempts: int, state: str) -> Any:
    job = await aclient.get_job(job_id)
    return job if job["attempts"] == attempts and job["state"] == state else None


async def test_permanent_fails_the_job_for_good(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)

    @worker.handler("py.permanent")
    async def permanent(job: dict[str, Any], ctx: JobContext) -> Any:
        raise Permanent("no email address")

    job = (await aclient.enqueue("py.permanent", {}, queue=queue, max_attempts=5)).job
    async with running(worker):
        done = await finished(aclient, job["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == 1
    assert done["last_error"] == "no email address"


async def test_any_other_exception_is_a_retryable_failure(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)

    @worker.handler("py.boom")
    def boom(job: dict[str, Any], ctx: JobContext) -> Any:
        raise ValueError("boom")

    job = (await aclient.enqueue("py.boom", {}, queue=queue, max_attempts=2)).job
    async with running(worker):
        queued = await eventually_async(lambda: _with_attempts(aclient, job["id"], 1, "queued"), what="the retry")
    assert queued["last_error"] == "ValueError: boom"


async def test_unknown_kind_fails_permanently(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)
    worker.register("py.known", lambda job, ctx: None)
    job = (await aclient.enqueue("py.unknown", {}, queue=queue, max_attempts=5)).job
    async with running(worker):
        done = await finished(aclient, job["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == 1
    assert "py.unknown" in done["last_error"] and "no handler" in done["last_error"]


async def test_concurrency_is_honoured(server: Server, aclient: AsyncClient, queue: str) -> None:
    limit = 3
    worker = make_worker(server, queue, concurrency=limit)
    in_flight = 0
    most = 0
    full = asyncio.Event()

    @worker.handler("py.slow")
    async def slow(job: dict[str, Any], ctx: JobContext) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == limit:
            full.set()
        await asyncio.sleep(0.3)
        in_flight -= 1
        return job["payload"]["i"]

    results = await aclient.enqueue_batch([{"kind": "py.slow", "payload": {"i": i}, "queue": queue} for i in range(8)])
    async with running(worker):
        await asyncio.wait_for(full.wait(), 10)
        done = [await finished(aclient, r["job"]["id"]) for r in results]
    assert most == limit
    assert [j["result"] for j in done] == list(range(8))


async def test_cancel_while_running_stops_the_handler(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue, lease_ttl=3)  # heartbeats every second
    started = asyncio.Event()
    reasons: list[Any] = []

    @worker.handler("py.cancel-me")
    async def long(job: dict[str, Any], ctx: JobContext) -> Any:
        started.set()
        await asyncio.wait_for(ctx.stopped.wait(), 15)
        reasons.append(ctx.stop_reason)
        return "stopped"

    job = (await aclient.enqueue("py.cancel-me", {}, queue=queue)).job
    async with running(worker):
        await asyncio.wait_for(started.wait(), 10)
        await aclient.cancel(job["id"])
        await eventually_async(lambda: reasons, what="the handler to be told to stop")
    assert reasons == ["cancelled"]
    final = await aclient.get_job(job["id"])
    assert final["state"] == "cancelled"  # its late result changed nothing


async def test_lost_lease_stops_the_handler_and_its_late_report_is_refused(
    server: Server, aclient: AsyncClient, queue: str
) -> None:
    # One slot, held by the stalled handler: the worker cannot claim the job back itself.
    worker = make_worker(server, queue, lease_ttl=1, concurrency=1)
    started = threading.Event()
    reasons: list[Any] = []
    tokens: list[int] = []

    @worker.handler("py.slow-holder")
    def holder(job: dict[str, Any], ctx: JobContext) -> Any:
        tokens.append(ctx.lease_token)
        started.set()
        assert ctx.stopped.wait(20)
        reasons.append(ctx.stop_reason)
        return {"by": "stale worker"}

    job = (await aclient.enqueue("py.slow-holder", {}, queue=queue)).job
    async with running(worker):
        await eventually_async(started.is_set, what="the handler to start")
        worker._heartbeats_paused.set()  # the lease is left to expire under the handler

        async def steal() -> Any:
            claimed = await aclient.claim("py-thief", [queue], max=1, lease_ttl_ms=30_000)
            return claimed[0] if claimed else None

        stolen = await eventually_async(steal, timeout=15, interval=0.2, what="the expired job to be claimed again")
        worker._heartbeats_paused.clear()
        await eventually_async(lambda: reasons, what="the stale handler to be told to stop")
        await aclient.complete(job["id"], stolen["lease_token"], {"by": "new holder"})
    assert reasons == ["lease_lost"]
    assert stolen["lease_token"] != tokens[0]
    with pytest.raises(LeaseLost) as caught:
        await aclient.complete(job["id"], tokens[0], {"by": "stale worker"})
    assert caught.value.status == 409 and caught.value.code == "lease_lost"
    final = await aclient.get_job(job["id"])
    assert final["state"] == "succeeded"
    assert final["result"] == {"by": "new holder"}


async def test_shutdown_releases_running_jobs_without_spending_an_attempt(
    server: Server, aclient: AsyncClient, queue: str
) -> None:
    worker = make_worker(server, queue, concurrency=2, grace=0.5)
    started = 0
    both = asyncio.Event()
    reasons: list[Any] = []

    @worker.handler("py.stubborn")
    async def stubborn(job: dict[str, Any], ctx: JobContext) -> Any:
        nonlocal started
        started += 1
        if started == 2:
            both.set()
        await asyncio.wait_for(ctx.stopped.wait(), 20)
        reasons.append(ctx.stop_reason)
        return "should not be reported"

    results = await aclient.enqueue_batch([{"kind": "py.stubborn", "queue": queue}] * 2)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_async(stop))
    await asyncio.wait_for(both.wait(), 10)
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 20)
    assert time.monotonic() - began < 10
    assert reasons == ["shutdown", "shutdown"]
    for r in results:
        job = await aclient.get_job(r["job"]["id"])
        assert job["state"] == "queued", job
        assert job["attempts"] == 0
        assert job["result"] is None


async def test_handlers_finishing_within_the_grace_are_reported(
    server: Server, aclient: AsyncClient, queue: str
) -> None:
    worker = make_worker(server, queue, grace=10)
    started = threading.Event()

    @worker.handler("py.finishing")
    def finishing(job: dict[str, Any], ctx: JobContext) -> Any:
        started.set()
        time.sleep(0.5)
        return {"stopped": ctx.should_stop()}

    job = (await aclient.enqueue("py.finishing", {}, queue=queue)).job
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_async(stop))
    await eventually_async(started.is_set, what="the handler to start")
    stop.set()
    await asyncio.wait_for(task, 20)
    done = await aclient.get_job(job["id"])
    assert done["state"] == "succeeded"
    assert done["result"] == {"stopped": False}


async def test_jobs_claimed_during_shutdown_are_handed_back_unstarted(
    server: Server, aclient: AsyncClient, queue: str
) -> None:
    worker = make_worker(server, queue, poll_wait=3.0)
    ran: list[str] = []
    worker.register("py.never", lambda job, ctx: ran.append(job["id"]))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_async(stop))
    await asyncio.sleep(0.3)  # let the first long poll reach the server (either way, see below)
    stop.set()
    # Enqueued while the long poll may still be waiting: if the claim returns it, the worker
    # must hand it back unstarted; if not, it was never claimed. Either way it is queued, unspent.
    job = (await aclient.enqueue("py.never", {}, queue=queue)).job
    await asyncio.wait_for(task, 20)
    final = await aclient.get_job(job["id"])
    assert ran == []
    assert final["state"] == "queued"
    assert final["attempts"] == 0


def test_run_handles_sigterm_and_releases(server: Server, client: Client, queue: str, tmp_path: Any) -> None:
    """`Worker.run()` in its own process: SIGTERM hands the running job back."""
    marker = tmp_path / "started"
    script = f"""
import sys, time
from faultline_queue import Worker
worker = Worker({server.url!r}, queues=[{queue!r}], poll_wait=1, grace=0.3)

@worker.handler("py.sigterm")
def handle(job, ctx):
    open({str(marker)!r}, "w").close()
    ctx.stopped.wait(30)
    print("stop_reason", ctx.stop_reason, flush=True)

worker.run()
print("worker exited", flush=True)
"""
    job = client.enqueue("py.sigterm", {}, queue=queue).job
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    try:
        eventually(marker.exists, timeout=15, what="the handler to start")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    text = out.decode(errors="replace")
    assert process.returncode == 0, text
    assert "stop_reason shutdown" in text and "worker exited" in text, text
    final = client.get_job(job["id"])
    assert final["state"] == "queued"
    assert final["attempts"] == 0


async def test_a_bad_job_does_not_stop_the_worker(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)

    @worker.handler("py.mixed")
    def mixed(job: dict[str, Any], ctx: JobContext) -> Any:
        if job["payload"]["bad"]:
            return {"not json": object()}  # the result cannot be encoded: fails the attempt
        return "fine"

    bad = (await aclient.enqueue("py.mixed", {"bad": True}, queue=queue, max_attempts=1)).job
    good = (await aclient.enqueue("py.mixed", {"bad": False}, queue=queue)).job
    async with running(worker):
        good_done = await finished(aclient, good["id"])
        bad_done = await finished(aclient, bad["id"])
    assert good_done["result"] == "fine"
    assert bad_done["state"] == "failed"
